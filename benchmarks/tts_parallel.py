"""One Kokoro synthesis at a time with all threads, or two side by side? And how fast Kokoro speaks.

Three measures, on one Kokoro session as a TTS worker holds it (every synthesis runs in the
event loop's default executor, so two at once share the session and the cores):

- throughput: the same pieces synthesized one at a time and two at a time; total wall time and
  the mean time each piece is done (from the start of the batch);
- the critical path: a first piece (short) asked for while a later piece (long) is being
  synthesized. Serial: it waits for the long one, then has the cores; parallel: it starts at
  once and shares them. Its time to first byte in each case;
- the speech rate: seconds of wire audio (speech plus the pause after the piece, as the worker
  publishes it) per character and per word of text, over the pieces below, which is what the LLM
  bridge uses to estimate when a later piece is needed (fleet/deadlines.py).

Run under the heavy lock: flock /tmp/vf/heavy.lock python -m benchmarks.tts_parallel [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

from fleet.audio import OUTPUT_SAMPLE_RATE
from fleet.settings import get_settings
from workers.tts.chunks import wire_speech
from workers.tts.providers import SpeechSynthesizer, create_synthesizer

PIECES = [
    "Sure, here is a short story about a cat.",
    "Once upon a time, a small grey cat lived in a quiet village by the sea.",
    "Every morning she walked down to the harbour to watch the fishing boats come in.",
    "The fishermen liked her, and they always saved a little fish for her breakfast.",
    "One day a storm came.",
    "The boats stayed in the harbour, and the cat waited on the pier all day long.",
    "Paris is the capital of France, and it is famous for its museums and its cafes.",
    "I'm not sure about that, but I can tell you what I know.",
]
FIRST_PIECE = "Sure, here is"
LONG_PIECE = PIECES[2] + " " + PIECES[3]


async def synthesize(synthesizer: SpeechSynthesizer, text: str, voice: str) -> tuple[float, int]:
    """(time to first byte in s, bytes of wire audio) of one piece."""
    started = time.perf_counter()
    first = 0.0
    size = 0
    async for pcm in wire_speech(synthesizer, text, voice):
        if not size:
            first = time.perf_counter() - started
        size += len(pcm)
    return first, size


async def batch(
    synthesizer: SpeechSynthesizer, voice: str, at_once: int
) -> tuple[float, list[float]]:
    """(total s, each piece's done time from the start), PIECES ``at_once`` at a time."""
    gate = asyncio.Semaphore(at_once)
    started = time.perf_counter()

    async def one(text: str) -> float:
        async with gate:
            await synthesize(synthesizer, text, voice)
        return time.perf_counter() - started

    done = await asyncio.gather(*(one(text) for text in PIECES))
    return time.perf_counter() - started, list(done)


async def critical_path(synthesizer: SpeechSynthesizer, voice: str, parallel: bool) -> float:
    """Time to first byte of a first piece asked for 0.1 s into a long piece's synthesis."""
    long_job = asyncio.create_task(synthesize(synthesizer, LONG_PIECE, voice))
    await asyncio.sleep(0.1)
    asked = time.perf_counter()
    if not parallel:
        await long_job
    waited = time.perf_counter() - asked  # queued behind the long piece
    first, _ = await synthesize(synthesizer, FIRST_PIECE, voice)
    await long_job
    return waited + first


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--voice", default=get_settings().tts_voice)
    args = parser.parse_args()
    voice = args.voice
    synthesizer = await asyncio.to_thread(create_synthesizer, get_settings())
    print(
        f"{synthesizer.name} {synthesizer.version}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    await synthesize(synthesizer, "Hello there.", voice)  # warm up

    # Speech rate.
    chars = words = 0
    seconds = 0.0
    for text in PIECES:
        _, size = await synthesize(synthesizer, text, voice)
        chars += len(text)
        words += len(text.split())
        seconds += size / 2 / OUTPUT_SAMPLE_RATE
    print(
        f"speech rate over {len(PIECES)} pieces: {seconds:.2f} s of wire audio, "
        f"{chars} chars -> {chars / seconds:.1f} chars/s, {words} words -> "
        f"{words / seconds:.2f} words/s"
    )

    for at_once in (1, 2):
        totals: list[float] = []
        means: list[float] = []
        for _ in range(args.rounds):
            total, done = await batch(synthesizer, voice, at_once)
            totals.append(total)
            means.append(statistics.mean(done))
        print(
            f"{at_once} at a time: {len(PIECES)} pieces in median "
            f"{statistics.median(totals):.2f} s (runs {', '.join(f'{t:.2f}' for t in totals)}); "
            "mean done time median "
            f"{statistics.median(means):.2f} s"
        )

    for parallel in (False, True):
        runs = [await critical_path(synthesizer, voice, parallel) for _ in range(args.rounds)]
        print(
            f"first piece behind a long one, {'parallel' if parallel else 'serial  '}: "
            f"first byte median {statistics.median(runs):.2f} s "
            f"(runs {', '.join(f'{r:.2f}' for r in runs)})"
        )
    print(f"load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
