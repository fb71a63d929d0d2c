"""Where the time to an utterance's first words goes, in one STT transcriber (no fleet).

Each cue of benchmarks/backchannels.py is streamed at real-time pace into a StreamingTranscriber
the way the benchmark's client sends it (each 100 ms frame at the start of its 100 ms), after a
second of silence. Per cue, all from the cue's sound onset: when the voice detector starts the
utterance (``start``), when the first partial's decode is submitted, starts and ends, and when
the transcriber hands its first partial with words to the worker (``emitted``), plus what it says
and how sure. The decode's audio ends at the frame that triggered it.

Run: flock /tmp/vf/heavy.lock python -m benchmarks.first_words [--every N] [--env NAME=VALUE ...]
    [--with-next-frame] (each partial taken with the next frame, as before the STT worker
    took them as soon as decoded)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from dataclasses import dataclass, field, replace

from benchmarks.backchannels import cues, onset_s
from fleet.audio import FloatArray
from fleet.settings import Settings
from tests.speech import FRAME_BYTES, RATE, frames, silence
from workers.stt.endpointing import StartSpeech
from workers.stt.engines import Recognized, SpeechRecognizer
from workers.stt.transcriber import (
    PartialTranscript,
    StreamingTranscriber,
    SttEngines,
    SttEvent,
)

FRAME_S = FRAME_BYTES / 2 / RATE
LEAD_S = 1.0


@dataclass
class Decode:
    beam: int
    audio_s: float
    started: float
    ended: float = 0.0


@dataclass
class TimedRecognizer:
    inner: SpeechRecognizer
    decodes: list[Decode] = field(default_factory=list)

    def transcribe(
        self, audio: FloatArray, *, language: str, beam_size: int, prompt: str
    ) -> Recognized:
        decode = Decode(beam_size, audio.size / RATE, time.monotonic())
        heard = self.inner.transcribe(audio, language=language, beam_size=beam_size, prompt=prompt)
        decode.ended = time.monotonic()
        self.decodes.append(decode)
        return heard


@dataclass
class Timing:
    label: str
    start: float | None = None
    decode_started: float | None = None
    decode_ended: float | None = None
    decode_audio_s: float | None = None
    emitted: float | None = None
    text: str = ""
    logprob: float = 0.0


async def time_cue(
    engines: SttEngines,
    timed: TimedRecognizer,
    settings: Settings,
    label: str,
    cue: FloatArray,
    at_once: bool,
) -> Timing:
    ready = asyncio.Event()
    transcriber = StreamingTranscriber(
        engines, settings, "en", partial_ready=ready.set if at_once else None
    )
    timed.decodes.clear()
    chunks = frames(silence(LEAD_S), cue, silence(1.5))
    timing = Timing(label)
    t0 = time.monotonic()
    onset = t0 + LEAD_S + onset_s(cue)

    def note(events: list[SttEvent]) -> None:
        for event in events:
            now = time.monotonic()
            if isinstance(event, StartSpeech) and timing.start is None:
                timing.start = now - onset
            if isinstance(event, PartialTranscript) and timing.emitted is None:
                timing.emitted = now - onset
                timing.text, timing.logprob = event.text, event.logprob

    async def take_partials() -> None:
        # As the STT worker does: each partial is taken as soon as it is ready, even while a
        # frame's feed waits on the turn detector or the final's decode.
        while True:
            await ready.wait()
            ready.clear()
            note(transcriber.take_partial())

    taker = asyncio.create_task(take_partials())
    for seq, chunk in enumerate(chunks):
        # Sent at the start of its 100 ms, as benchmarks/backchannels.py's client does.
        await asyncio.sleep(max(0.0, t0 + seq * FRAME_S - time.monotonic()))
        note(await transcriber.feed(seq, chunk))
    note(await transcriber.flush())
    taker.cancel()
    partials = [d for d in timed.decodes if d.beam == 1]
    if partials:
        timing.decode_started = partials[0].started - onset
        timing.decode_ended = partials[0].ended - onset
        timing.decode_audio_s = partials[0].audio_s
    return timing


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}"


def spread(name: str, values: list[float]) -> None:
    if not values:
        return
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    print(
        f"{name:32} median {statistics.median(ordered) * 1000:.0f} ms, "
        f"p95 {p95 * 1000:.0f} ms (n={len(ordered)})"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=int, default=1)
    parser.add_argument("--env", nargs="*", default=[])
    parser.add_argument(
        "--with-next-frame",
        action="store_true",
        help="take each partial with the next frame, not as soon as it is decoded",
    )
    args = parser.parse_args()
    os.environ.update(dict(item.split("=", 1) for item in args.env))
    settings = Settings()
    base = SttEngines.load(settings)
    timed = TimedRecognizer(base.recognizer)
    engines = replace(base, recognizer=timed)
    made = cues()[:: args.every]
    await time_cue(engines, timed, settings, "warm-up", made[0].audio, True)
    print(
        f"{len(made)} cues; load average {os.getloadavg()[0]:.2f}; {' '.join(args.env)}"
        f"{' (partials taken with the next frame)' if args.with_next_frame else ''}"
    )
    print(f"{'cue':40} {'start':>5} {'submit':>6} {'end':>5} {'audio':>5} {'emit':>5}  heard")
    timings = []
    for cue in made:
        t = await time_cue(engines, timed, settings, cue.label, cue.audio, not args.with_next_frame)
        timings.append(t)
        print(
            f"{t.label[:40]:40} {ms(t.start):>5} {ms(t.decode_started):>6} "
            f"{ms(t.decode_ended):>5} {ms(t.decode_audio_s):>5} {ms(t.emitted):>5}  "
            f"{t.text!r} {t.logprob:.2f}"
        )
    print(f"load average {os.getloadavg()[0]:.2f}")
    spread("onset -> start", [t.start for t in timings if t.start is not None])
    spread(
        "onset -> first decode starts",
        [t.decode_started for t in timings if t.decode_started is not None],
    )
    spread(
        "first decode's duration",
        [
            t.decode_ended - t.decode_started
            for t in timings
            if t.decode_ended is not None and t.decode_started is not None
        ],
    )
    spread(
        "decode end -> emitted",
        [
            t.emitted - t.decode_ended
            for t in timings
            if t.emitted is not None and t.decode_ended is not None
        ],
    )
    spread("onset -> first partial emitted", [t.emitted for t in timings if t.emitted is not None])
    base.close()


if __name__ == "__main__":
    asyncio.run(main())
