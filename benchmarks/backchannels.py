"""Acknowledgements and interruptions over a playing reply: what the gateway decides, and how fast.

A whole fleet (real models) answers a spoken request; as soon as the reply's audio flows, a cue is
spoken over it: an acknowledgement or non-speech sound (which should pause, then resume the reply)
or a real interruption (which should pause, then cancel it). The chat relay holds the reply after
its first sentence until the decision, so the reply is still playing when the cue comes. Each cue
gets its own connection. Prints, per cue and in total:

- false cancels: acknowledgements and non-speech sounds that ended in ``audio_cancel``;
- recall: interruptions that ended in ``audio_cancel``;
- onset -> ``speech.started`` (the STT worker's voice detector, read off the event exchange),
  ``speech.started`` -> ``audio_pause`` at the client, onset -> ``audio_pause``;
- onset -> the decision (the first ``audio_resume`` or ``audio_cancel``), and for interruptions
  onset -> ``audio_cancel`` (an interruption may first be resumed, then cancelled once its words
  come).

The onset is the cue's first loud 10 ms in the audio as streamed at real-time pace (the client sends
each 100 ms frame at the start of its 100 ms, as soon as it could have it; a real microphone's
frame adds up to 100 ms more).

- onset -> the settled decision (the last of them: an interruption's ``audio_cancel`` even if a
  resume came first), and how many interruptions were first resumed, then cancelled.

Run (heavy; a whole fleet): flock /tmp/vf/heavy.lock python -m benchmarks.backchannels
    [--decision-s SECONDS (default: VF_BARGE_IN_DECISION_S)] [--repeat 1]
    [--cues SUBSTRING ...] (only the cues whose label has one of them, e.g. ``--cues Hmm Wait``;
    ``ack``, ``wordless`` or ``int`` pick a kind) [--every N] (every Nth cue, a quick sample)
    [--env NAME=VALUE ...] (more settings for the fleet, e.g. ``VF_STT_FIRST_PARTIAL_S=0.2``)
    [--csv PATH] (one row per cue, e.g. in benchmarks/results/)
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import statistics
import time
from collections.abc import Awaitable
from dataclasses import dataclass

import numpy as np

from fleet.audio import FloatArray
from fleet.contracts import SpeechStarted, TranscriptFinal, TranscriptPartial
from fleet.settings import Settings
from tests.event_tap import tapping
from tests.fleet_processes import Fleet, running_fleet
from tests.speech import RATE, pcm, silence, speech, wordless
from voicefleet.client import Received, VoiceClient

REQUEST = "Tell me a long story about a brave knight."
VOICES = ("af_heart", "am_adam", "bf_emma", "bm_george", "af_bella")
ACKNOWLEDGEMENTS = (
    "Yeah.",
    "Uh-huh.",
    "Mm-hmm.",
    "Right.",
    "Okay.",
    "I see.",
    "Sure.",
    "Yes.",
    "Got it.",
    "Oh, okay.",
    "Yeah, yeah.",
    "Alright.",
    "Exactly.",
    "Wow.",
    "Cool.",
    "Of course.",
    "Right, right.",
    "Okay, I see.",
    "Yep.",
    "Hmm.",
)
# Voiced sounds without words (see tests.speech.wordless).
WORDLESS = (("Hmm.", "am_adam"), ("Ahem.", "bf_emma"), ("Ha ha.", "af_heart"), ("Oh.", "bm_george"))
INTERRUPTIONS = (
    "Wait.",
    "Stop.",
    "Hold on.",
    "Wait, what was that?",
    "Stop, tell me something else.",
    "Can you repeat that?",
    "What about the dragon?",
    "No, that's wrong.",
    "Hang on a second.",
    "Actually, tell me a joke.",
    "Excuse me.",
    "Sorry, can I ask something?",
    "Make it shorter, please.",
    "Why?",
    "Really?",
    "Okay, but what happened next?",
    "Yeah, but who was the knight?",
    "I see, but I asked about dragons.",
    "Let me ask you a question.",
    "Never mind that.",
    "Change the subject, please.",
    "How long is this story?",
)
SETTLE_S = 2.5  # silence streamed after the cue: its end of turn, and a late cancel, come by then


@dataclass(frozen=True)
class Cue:
    label: str
    audio: FloatArray
    interrupts: bool


@dataclass
class Trial:
    cue: Cue
    onset: float
    speech_started: float | None = None
    paused: float | None = None
    decided: float | None = None
    cancelled: float | None = None
    resumed: float | None = None
    words: float | None = None  # the first transcript with words after the cue began
    heard: str = ""  # its final transcripts
    settled: float | None = None  # the last of the resume and the cancel
    # Every transcript of the cue as the gateway got it: ms after the onset, text, and the
    # recognizer's mean token log-probability ("F" marks the final).
    transcripts: str = ""


def cues() -> list[Cue]:
    made = [
        Cue(f"{text} ({VOICES[i % len(VOICES)]})", speech(text, VOICES[i % len(VOICES)]), False)
        for i, text in enumerate(ACKNOWLEDGEMENTS)
    ]
    made += [
        Cue(f"{text} backwards ({voice}, wordless)", wordless(text, voice), False)
        for text, voice in WORDLESS
    ]
    made += [
        Cue(f"{text} ({VOICES[i % len(VOICES)]})", speech(text, VOICES[i % len(VOICES)]), True)
        for i, text in enumerate(INTERRUPTIONS)
    ]
    return made


def onset_s(audio: FloatArray) -> float:
    """Where the cue's sound begins: its first 10 ms at least 10% as loud as its loudest."""
    size = RATE // 100
    frames = audio[: audio.size // size * size].reshape(-1, size)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    return float(np.argmax(rms >= 0.1 * rms.max())) * size / RATE


def first(client: VoiceClient, kind: str, turn: int) -> Received | None:
    return next(
        (
            r
            for r in client.received
            if r.kind == kind and isinstance(r.data, dict) and r.data.get("turn") == turn
        ),
        None,
    )


async def run_trial(fleet: Fleet, request: bytes, cue: Cue) -> Trial:
    assert fleet.chat_tap is not None
    fleet.chat_tap.hold_after_first_sentence = True
    client = VoiceClient(fleet.ws_url)
    await client.connect()
    try:
        async with tapping(fleet.settings, client.session_id) as tap:
            await client.stream(request)
            start = await client.wait_for("audio_start", timeout=90)
            assert isinstance(start.data, dict)
            turn = int(start.data["turn"])
            await client.wait_for("audio", timeout=30, after=client.index_of(start))
            heard = len(tap.of(SpeechStarted))
            detected = asyncio.create_task(arrival(tap.wait_for_nth(SpeechStarted, heard + 1)))
            trial = Trial(cue, time.monotonic() + onset_s(cue.audio))
            cue_at = len(client.received)
            tapped = len(tap.messages)
            await client.stream(pcm(cue.audio, silence(SETTLE_S)))
            fleet.chat_tap.release()
            trial.speech_started = await detected
            spoken = [
                m
                for m in tap.messages[tapped:]
                if isinstance(m, TranscriptPartial | TranscriptFinal)
            ]
    finally:
        fleet.chat_tap.release()
        await client.close()
    trial.paused = at(first(client, "audio_pause", turn))
    trial.cancelled = at(first(client, "audio_cancel", turn))
    trial.resumed = at(first(client, "audio_resume", turn))
    said = [
        r
        for r in client.received[cue_at:]
        if r.kind == "transcript" and isinstance(r.data, dict) and r.data["text"].strip()
    ]
    trial.words = at(said[0]) if said else None
    trial.heard = " / ".join(str(r.fields["text"]) for r in said if r.fields["final"])
    shown = [r for r in client.received[cue_at:] if r.kind == "transcript"]
    times = [at(r) for r in shown] if len(shown) == len(spoken) else [None] * len(spoken)
    trial.transcripts = " ".join(
        f"[{ms(when, trial.onset)}{' F' if isinstance(m, TranscriptFinal) else ''} "
        f"{m.text!r} {m.logprob:.2f}]"
        for when, m in zip(times, spoken, strict=True)
    )
    settled = [t for t in (trial.cancelled, trial.resumed) if t is not None]
    trial.decided = min(settled) if settled else None
    trial.settled = max(settled) if settled else None
    return trial


async def arrival(event: Awaitable[object]) -> float | None:
    """When ``event`` came, or None if it did not within the cue's time."""
    try:
        async with asyncio.timeout(SETTLE_S + 5):
            await event
    except TimeoutError:
        return None
    return time.monotonic()


def at(received: Received | None) -> float | None:
    return None if received is None else received.at


def ms(later: float | None, earlier: float | None) -> str:
    return "-" if later is None or earlier is None else f"{(later - earlier) * 1000:.0f}"


def spread(values: list[float]) -> str:
    if not values:
        return "n/a"
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return (
        f"median {statistics.median(ordered) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, "
        f"max {ordered[-1] * 1000:.0f} ms (n={len(ordered)})"
    )


def write_csv(trials: list[Trial], path: str) -> None:
    """One row per cue; times in ms from the cue's onset, empty where the event did not come."""
    with open(path, "w", newline="") as out:
        rows = csv.writer(out)
        rows.writerow(
            [
                "cue",
                "interrupts",
                "outcome",
                "speech_started_ms",
                "pause_ms",
                "first_words_ms",
                "decision_ms",
                "settled_ms",
                "cancel_ms",
                "resume_ms",
                "heard",
            ]
        )
        for t in trials:
            outcome = "cancelled" if t.cancelled else ("resumed" if t.resumed else "none")
            times = (t.speech_started, t.paused, t.words, t.decided, t.settled, t.cancelled)
            rows.writerow(
                [
                    t.cue.label,
                    int(t.cue.interrupts),
                    outcome,
                    *("" if when is None else ms(when, t.onset) for when in (*times, t.resumed)),
                    t.heard,
                ]
            )


def report(trials: list[Trial]) -> None:
    print(
        f"{'cue':44} {'kind':5} {'outcome':9} {'vad':>5} {'v>pause':>7} {'pause':>6} "
        f"{'words':>6} {'decide':>6} {'settle':>6} {'cancel':>6}  heard"
    )
    for t in trials:
        outcome = "cancelled" if t.cancelled else ("resumed" if t.resumed else "none")
        print(
            f"{t.cue.label[:44]:44} {'int' if t.cue.interrupts else 'ack':5} {outcome:9} "
            f"{ms(t.speech_started, t.onset):>5} {ms(t.paused, t.speech_started):>7} "
            f"{ms(t.paused, t.onset):>6} {ms(t.words, t.onset):>6} {ms(t.decided, t.onset):>6} "
            f"{ms(t.settled, t.onset):>6} {ms(t.cancelled, t.onset):>6}  {t.heard!r}"
        )
        print(f"    {t.transcripts}")
    acks = [t for t in trials if not t.cue.interrupts]
    interruptions = [t for t in trials if t.cue.interrupts]
    false_cancels = sum(1 for t in acks if t.cancelled)
    caught = sum(1 for t in interruptions if t.cancelled)
    print()
    print(f"false cancels: {false_cancels}/{len(acks)} = {false_cancels / max(1, len(acks)):.0%}")
    print(f"recall: {caught}/{len(interruptions)} = {caught / max(1, len(interruptions)):.0%}")
    resumed_first = sum(
        1 for t in interruptions if t.resumed and t.cancelled and t.resumed < t.cancelled
    )
    print(f"interruptions resumed before their cancel: {resumed_first}")
    unpaused = sum(1 for t in trials if t.paused is None)
    print(f"cues that never paused the reply: {unpaused}")

    def gaps(of: list[Trial], later: str, earlier: str) -> list[float]:
        pairs = [(getattr(t, later), getattr(t, earlier)) for t in of]
        return [a - b for a, b in pairs if a is not None and b is not None]

    print("onset -> speech.started:     ", spread(gaps(trials, "speech_started", "onset")))
    print("speech.started -> pause:     ", spread(gaps(trials, "paused", "speech_started")))
    print("onset -> pause:              ", spread(gaps(trials, "paused", "onset")))
    print("onset -> first words:        ", spread(gaps(trials, "words", "onset")))
    print("onset -> decision (all):     ", spread(gaps(trials, "decided", "onset")))
    print("onset -> settled (all):      ", spread(gaps(trials, "settled", "onset")))
    print("speech.started -> decision:  ", spread(gaps(trials, "decided", "speech_started")))
    print("onset -> resume (acks):      ", spread(gaps(acks, "resumed", "onset")))
    print("onset -> cancel (interrupts):", spread(gaps(interruptions, "cancelled", "onset")))


async def run_trials(fleet: Fleet, made: list[Cue]) -> list[Trial]:
    request = pcm(silence(0.3), speech(REQUEST), silence(1.5))
    return [await run_trial(fleet, request, cue) for cue in made]


def chosen(made: list[Cue], wanted: list[str]) -> list[Cue]:
    """The cues whose label has one of ``wanted`` in it (``ack``, ``wordless``, ``int``: a kind)."""

    def kind(cue: Cue) -> str:
        return "int" if cue.interrupts else ("wordless" if "wordless" in cue.label else "ack")

    return [c for c in made if any(w == kind(c) or w in c.label for w in wanted)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decision-s", type=float, default=Settings().barge_in_decision_s)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--cues", nargs="*", default=[])
    parser.add_argument("--every", type=int, default=1)
    parser.add_argument("--env", nargs="*", default=[])
    parser.add_argument("--csv", default="", help="also write one row per cue to this file")
    args = parser.parse_args()
    made = chosen(cues(), args.cues) if args.cues else cues()
    made = made[:: args.every] * args.repeat
    env = dict(item.split("=", 1) for item in args.env)
    overrides = {k.removeprefix("VF_").lower(): v for k, v in env.items()}
    with running_fleet(
        "bench-backchannels",
        tap_chat=True,
        **{**overrides, "barge_in_decision_s": str(args.decision_s)},
    ) as fleet:
        print(
            f"{len(made)} cues; VF_BARGE_IN_DECISION_S={args.decision_s} {' '.join(args.env)}",
            flush=True,
        )
        trials = asyncio.run(run_trials(fleet, made))
    report(trials)
    if args.csv:
        write_csv(trials, args.csv)


if __name__ == "__main__":
    main()
