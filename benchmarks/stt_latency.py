"""STT latency on this machine: end of speech -> FinalTranscript, and time per partial decode.

Feeds a ~3 s Kokoro utterance plus silence in 100 ms frames at real-time pace, as a client does.
Run: HF_HUB_OFFLINE=1 python -m benchmarks.stt_latency [runs]   (default 6, after one warm-up)
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from dataclasses import replace

from fleet.audio import FloatArray
from fleet.settings import get_settings
from tests.speech import FRAME_BYTES, RATE, frames, silence, speech
from workers.stt.engines import Recognized, SpeechRecognizer
from workers.stt.transcriber import (
    FinalTranscript,
    PartialTranscript,
    StreamingTranscriber,
    SttEngines,
)

TEXT = "Could you tell me what the weather will be like in Paris tomorrow?"
FRAME_S = FRAME_BYTES / 2 / RATE


class TimedRecognizer:
    def __init__(self, inner: SpeechRecognizer) -> None:
        self.inner = inner
        self.calls: list[tuple[int, int, float]] = []  # (beam, samples, seconds)

    def transcribe(
        self, audio: FloatArray, *, language: str, beam_size: int, prompt: str
    ) -> Recognized:
        start = time.perf_counter()
        heard = self.inner.transcribe(audio, language=language, beam_size=beam_size, prompt=prompt)
        self.calls.append((beam_size, audio.size, time.perf_counter() - start))
        return heard


async def run_once(engines: SttEngines, utterance: FloatArray) -> float:
    transcriber = StreamingTranscriber(engines, get_settings(), "en")
    lead = silence(0.5)
    chunks = frames(lead, utterance, silence(2.5))
    speech_end_frame = (lead.size + utterance.size) / RATE / FRAME_S
    t0 = time.perf_counter()
    speech_end_at: float | None = None
    for seq, chunk in enumerate(chunks):
        # Real-time pace: frame `seq` is complete at t0 + (seq + 1) * 100 ms.
        due = t0 + (seq + 1) * FRAME_S
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        if speech_end_at is None and seq + 1 >= speech_end_frame:
            speech_end_at = t0 + speech_end_frame * FRAME_S
        for event in await transcriber.feed(seq, chunk):
            now = time.perf_counter()
            if isinstance(event, PartialTranscript):
                print(f"  partial at {now - t0:5.2f} s: {event.text!r}")
            if isinstance(event, FinalTranscript) and speech_end_at is not None:
                print(f"  final   at {now - t0:5.2f} s: {event.text!r}")
                return now - speech_end_at
    raise RuntimeError("no final transcript")


async def main() -> None:
    settings = get_settings()
    base = SttEngines.load(settings)
    timed = TimedRecognizer(base.recognizer)
    engines = replace(base, recognizer=timed)
    utterance = speech(TEXT)
    print(f"utterance {utterance.size / RATE:.2f} s, end_silence {settings.stt_end_silence_s} s")
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 6
    print("warm-up run")
    await run_once(engines, utterance)
    timed.calls.clear()
    latencies = []
    for attempt in range(runs):
        print(f"run {attempt + 1}")
        latencies.append(await run_once(engines, utterance))
    print("end of speech -> final (s):", ", ".join(f"{x:.3f}" for x in latencies))
    print(f"  median {statistics.median(latencies):.3f} s, max {max(latencies):.3f} s")
    for beam, label in ((1, "partial (beam 1)"), (5, "commit/final (beam 5)")):
        times = [t for b, _, t in timed.calls if b == beam]
        sizes = [n / RATE for b, n, _ in timed.calls if b == beam]
        if times:
            print(
                f"{label}: n={len(times)} median {statistics.median(times):.3f} s, "
                f"max {max(times):.3f} s, audio {min(sizes):.2f}-{max(sizes):.2f} s"
            )
    base.close()


if __name__ == "__main__":
    asyncio.run(main())
