"""Kokoro time to first byte and real-time factor, by the length of the piece spoken.

The ladder of lengths is what the first piece of a reply is cut to (VF_LLM_FIRST_PIECE_WORDS):
the first byte of a piece waits for the synthesis of all of it.

TTFB = from asking the provider for speech to its first PCM chunk; RTF = synthesis time /
audio duration (below 1 means faster than real time). One warm-up run each, then the
measured runs, one at a time (no concurrent load).
Run: python -m benchmarks.tts_first_byte [--runs 5] [--voice af_heart]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

from fleet.settings import get_settings
from workers.tts.providers import SpeechSynthesizer, create_synthesizer

SENTENCE = "Paris is the capital of France and it is famous for its museums and its cafes."
TEXTS = {f"{n} words": " ".join(SENTENCE.split()[:n]) for n in (2, 3, 4, 5, 6, 8, 10, 16)}


async def measure(synthesizer: SpeechSynthesizer, text: str, voice: str) -> tuple[float, float]:
    """(time to first byte in s, real-time factor) of one synthesis."""
    started = time.perf_counter()
    first_byte = 0.0
    size = 0
    async for chunk in synthesizer.stream(text, voice):
        if not size:
            first_byte = time.perf_counter() - started
        size += len(chunk)
    elapsed = time.perf_counter() - started
    audio_s = size / 2 / synthesizer.sample_rate
    return first_byte, elapsed / audio_s


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--voice", default=get_settings().tts_voice)
    args = parser.parse_args()

    started = time.perf_counter()
    synthesizer = await asyncio.to_thread(create_synthesizer, get_settings())
    print(
        f"{synthesizer.name} {synthesizer.version}, {get_settings().tts_execution_provider}, "
        f"{os.cpu_count()} CPUs, load {time.perf_counter() - started:.2f} s, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    for label, text in TEXTS.items():
        await measure(synthesizer, text, args.voice)
        runs = [await measure(synthesizer, text, args.voice) for _ in range(args.runs)]
        ttfb = [run[0] * 1000 for run in runs]
        rtf = [run[1] for run in runs]
        print(
            f"{label:20s} TTFB ms median {statistics.median(ttfb):6.0f} "
            f"min {min(ttfb):6.0f} max {max(ttfb):6.0f} | "
            f"RTF median {statistics.median(rtf):.2f} min {min(rtf):.2f} max {max(rtf):.2f}"
        )
    print(f"load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
