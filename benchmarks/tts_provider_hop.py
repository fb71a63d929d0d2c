"""What the provider server's hop costs: first byte through `voicefleet tts-provider` on loopback
vs the same engine in process, and N clients (as N TTS workers would) sharing one server.

TTFB = from asking for a sentence to its first PCM bytes. The in-process and remote runs
alternate, so that a change in the machine's load falls on both alike. The shared-server part
runs N concurrent clients, each with its own connection, asking for one sentence after another
(as N TTS workers with VF_TTS_CONCURRENCY=1 would): sentences per second and TTFB.
Run: python -m benchmarks.tts_provider_hop [--runs 10] [--clients 1,2,4] [--provider kokoro]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx

from fleet.settings import Settings
from workers.tts.providers import SpeechSynthesizer, create_synthesizer
from workers.tts.providers.remote import RemoteSynthesizer
from workers.tts.providers.versions import VersionRange

SENTENCE = "Paris is the capital of France and it is famous for its museums and cafes."


async def first_byte(synthesizer: SpeechSynthesizer, voice: str) -> float:
    started = time.perf_counter()
    elapsed = 0.0
    async for _ in synthesizer.stream(SENTENCE, voice):
        if not elapsed:
            elapsed = time.perf_counter() - started
    return elapsed


@contextlib.contextmanager
def provider_server(provider: str) -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    command = ["-m", "voicefleet.cli", "tts-provider", "--provider", provider]
    process = subprocess.Popen(
        [sys.executable, *command, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/tts/health", timeout=2).status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the provider server did not start")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(10)


async def remote(url: str) -> RemoteSynthesizer:
    synthesizer = RemoteSynthesizer(url, VersionRange("0.0.0", "999.0.0"), 60.0)
    await synthesizer.connect()
    return synthesizer


async def shared(url: str, clients: int, sentences: int, voice: str) -> tuple[float, list[float]]:
    """(sentences per second, first bytes) of ``clients`` asking ``sentences`` each at once."""
    synthesizers = [await remote(url) for _ in range(clients)]

    async def client(synthesizer: RemoteSynthesizer) -> list[float]:
        return [await first_byte(synthesizer, voice) for _ in range(sentences)]

    started = time.perf_counter()
    results = await asyncio.gather(*(client(s) for s in synthesizers))
    elapsed = time.perf_counter() - started
    for synthesizer in synthesizers:
        await synthesizer.aclose()
    return clients * sentences / elapsed, [t for run in results for t in run]


def ms(values: list[float]) -> str:
    scaled = [v * 1000 for v in values]
    return f"median {statistics.median(scaled):6.1f} min {min(scaled):6.1f} max {max(scaled):6.1f}"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--clients", default="1,2,4")
    parser.add_argument("--sentences", type=int, default=4, help="per client, shared part")
    parser.add_argument("--provider", choices=["kokoro", "piper"], default="kokoro")
    args = parser.parse_args()
    settings = Settings(tts_provider=args.provider)
    voice = settings.tts_voice
    print(f"{args.provider}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    with provider_server(args.provider) as url:
        local = await asyncio.to_thread(create_synthesizer, settings)
        through = await remote(url)
        await first_byte(local, voice), await first_byte(through, voice)  # warm-up
        in_process, hop = [], []
        for _ in range(args.runs):
            in_process.append(await first_byte(local, voice))
            hop.append(await first_byte(through, voice))
        await through.aclose()
        differences = [h - i for h, i in zip(hop, in_process, strict=True)]
        print(f"TTFB in process      ms {ms(in_process)}")
        print(f"TTFB provider server ms {ms(hop)}")
        print(f"difference per pair  ms {ms(differences)}")
        del local  # the shared part measures the server alone
        for clients in (int(n) for n in args.clients.split(",")):
            rate, first_bytes = await shared(url, clients, args.sentences, voice)
            print(f"{clients} clients: {rate:5.2f} sentences/s, TTFB ms {ms(first_bytes)}")
    print(f"load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
