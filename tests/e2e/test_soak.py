"""Soak: ten sessions with garbage interleaved for three minutes; the gateway's memory stays flat.

Each of ten clients streams quiet microphone audio in real time and, between frames, sends what
a broken client would (text that is not JSON, unknown types, odd and empty frames, a second
start), then leaves in one of the ways a client leaves (``stop``, a dropped socket, an oversized
frame, a resume that takes its session over) and comes back. The gateway's resident memory is
sampled throughout and must not grow after the warm-up: a leak of a few kilobytes per session or
per refused message would show as megabytes over the thousands of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import websockets

from fleet.audio import float32_to_pcm16
from fleet.errors import ErrorCode
from tests.e2e.test_fuzz import Logs, check_fleet_healthy
from tests.fleet_processes import Fleet, running_fleet
from tests.fuzzing import LIMITS, VALID_START, documented_close_codes, documented_errors

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

SESSIONS = 10
DURATION_S = 180.0
WARM_UP_S = 45.0  # first connections, first models' buffers, allocator arenas
SAMPLE_EVERY_S = 2.0
# The bound: after the warm-up, resident memory may not grow by more than this. Ten live sessions
# hold at most their replay buffers (the utterance in progress, here seconds of audio: well under
# 1 MB each) and queues that empty as they go; allocator noise is a few MB. A leak of even 1 KB
# per connection or 100 bytes per refused message over this run's thousands of each, or of the
# audio itself (32 kB/s per session), exceeds it.
MAX_GROWTH_MB = 20.0

GARBAGE: list[str | bytes] = [
    "this is not json",
    "[1, 2, 3]",
    json.dumps({"type": "dance"}),
    json.dumps({"no": "type"}),
    json.dumps(VALID_START),  # a second start
    "[" * 3000 + "]" * 3000,
    json.dumps({"type": "x", "pad": "y" * (LIMITS.max_text_bytes // 2)}),
    b"\x01\x02\x03",  # odd length
    b"",
]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


@pytest.fixture(scope="module")
def soak_fleet() -> Iterator[Fleet]:
    """A gateway and an STT worker that holds all ten sessions (no replies are asked for)."""
    with running_fleet("soak", llm=0, tts=0, stt_max_sessions=str(SESSIONS + 4)) as fleet:
        yield fleet


def quiet_frame(rng: random.Random) -> bytes:
    noise = np.random.default_rng(rng.randrange(1 << 30)).normal(0.0, 0.003, 1600)
    return float32_to_pcm16(noise.astype(np.float32))


async def one_client(url: str, index: int, deadline: float, totals: Counter[str]) -> None:
    rng = random.Random(index)
    documented = documented_errors()
    close_codes = documented_close_codes()
    resume: dict[str, str] = {}
    while time.monotonic() < deadline:
        errors: list[str] = []
        async with websockets.connect(url, max_size=None) as ws:
            await ws.send(json.dumps({**VALID_START, **resume}))
            ready = json.loads(await asyncio.wait_for(ws.recv(), 30))
            assert ready["type"] == "ready", ready
            resume = {"sessionId": ready["sessionId"], "resumeSecret": ready["resumeSecret"]}

            async def read(
                ws: websockets.ClientConnection = ws, errors: list[str] = errors
            ) -> None:
                with contextlib.suppress(websockets.ConnectionClosed):
                    async for reply in ws:
                        if isinstance(reply, str) and json.loads(reply)["type"] == "error":
                            errors.append(json.loads(reply)["code"])

            reader = asyncio.create_task(read())
            ending = rng.choice(["stop", "stop", "drop", "too_big"])
            with contextlib.suppress(websockets.ConnectionClosed):
                for frame in range(rng.randrange(50, 200)):  # 5-20 s of audio
                    await ws.send(quiet_frame(rng))
                    totals["audio frames"] += 1
                    if frame % 7 == 3:
                        await ws.send(rng.choice(GARBAGE))
                        totals["garbage messages"] += 1
                    await asyncio.sleep(0.1)  # a microphone's pace, not synchronisation
                    if time.monotonic() > deadline:
                        break
                if ending == "stop":
                    await ws.send(json.dumps({"type": "stop"}))
                elif ending == "too_big":
                    await ws.send(bytes(LIMITS.max_frame_bytes + 2))
            if ending == "drop":
                ws.transport.abort()  # gone without a close frame
            async with asyncio.timeout(30):
                await reader
        totals[f"connections ended: {ending}"] += 1
        for code in errors:
            assert code in documented and code != ErrorCode.INTERNAL, code
        if ending != "drop":
            assert ws.close_code in close_codes, ws.close_code


async def test_ten_sessions_with_garbage_keep_the_gateway_memory_flat(soak_fleet: Fleet) -> None:
    fleet = soak_fleet
    gateway = fleet.processes["gateway-1"].process
    assert gateway is not None
    logs = Logs(fleet)
    totals: Counter[str] = Counter()
    started = time.monotonic()
    deadline = started + DURATION_S
    samples: list[tuple[float, float]] = []

    async def sample() -> None:
        while True:
            samples.append((time.monotonic() - started, rss_mb(gateway.pid)))
            await asyncio.sleep(SAMPLE_EVERY_S)

    sampler = asyncio.create_task(sample())
    try:
        await asyncio.gather(
            *(one_client(fleet.ws_url, index, deadline, totals) for index in range(SESSIONS))
        )
    finally:
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)

    check_fleet_healthy(fleet)
    assert logs.crashes() == {}
    warm = [rss for at, rss in samples if at >= WARM_UP_S]
    baseline = warm[0]
    growth = max(warm) - baseline
    print(
        f"\nsoak: {SESSIONS} sessions for {time.monotonic() - started:.0f} s, "
        + ", ".join(f"{name} {count}" for name, count in sorted(totals.items()))
        + f"\ngateway RSS: {samples[0][1]:.1f} MB at start, {baseline:.1f} MB after the "
        f"{WARM_UP_S:.0f} s warm-up, {warm[-1]:.1f} MB at the end, {max(warm):.1f} MB at most "
        f"after warm-up: growth {growth:.1f} MB (bound {MAX_GROWTH_MB:.0f} MB)\n"
        + "gateway RSS over time: "
        + ", ".join(f"{at:.0f} s {rss:.1f} MB" for at, rss in samples[::8])
    )
    assert totals["connections ended: stop"] and totals["connections ended: drop"]
    assert growth < MAX_GROWTH_MB
