"""Per-session streaming transcription: VAD, endpointing, incremental Whisper decoding.

Model calls never run on the event loop. Whisper gets one process-wide worker thread (it already
uses every core; two decodes at once would only thrash) that runs commits and finals before
partials and drops partials gone stale (see scheduler.py); VAD and Smart Turn get another, so one
session's long decode does not hold up every other session's voice activity detection.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from fleet import telemetry
from fleet.audio import INPUT_SAMPLE_RATE, FloatArray, pcm16_to_float32
from fleet.model_paths import model_paths, stt_model_location
from fleet.settings import Settings
from workers.stt.endpointing import (
    Action,
    CheckTurn,
    Commit,
    EndpointConfig,
    Endpointer,
    EndTurn,
    Partial,
    Speculate,
    StartSpeech,
)
from workers.stt.engines import (
    Recognized,
    SpeechRecognizer,
    TurnDetector,
    VoiceActivityDetector,
)
from workers.stt.scheduler import BACKGROUND, URGENT, PriorityExecutor

log = logging.getLogger(__name__)

_T = TypeVar("_T")

PARTIAL_BEAM = 1
# Beam search costs little on the short segments commits and finals decode, and they are the
# text the assistant answers.
FINAL_BEAM = 5
# Enough of the committed text to carry names and spelling into the next segment without
# making the prompt dominate the decode.
_PROMPT_CHARS = 200
_WORDLIKE = re.compile(r"\w")
# Short utterances are where Whisper base is weakest: with no context it writes a spoken
# "uh-huh" as "First high." and "right" as "Rider." Primed with a few of the language's
# acknowledgements it writes them as such, and short requests ("Stop.", "Why?") still as
# themselves (measured on Kokoro voices: benchmarks/backchannels.py); longer speech is decoded
# unprimed, where the priming could only bend it.
_PRIMED_UTTERANCE_S = 1.5
_PRIMING_PHRASES = 4


def acknowledgement_prompt(listed: str) -> str:
    """The priming text for short utterances: the first acknowledgements as short sentences."""
    phrases = [p.strip() for p in listed.split(",") if p.strip()][:_PRIMING_PHRASES]
    return " ".join(f"{p[:1].upper()}{p[1:]}." for p in phrases)


@dataclass(frozen=True, slots=True)
class PartialTranscript:
    text: str
    logprob: float = 0.0  # the recognizer's mean token log-probability of ``text``


@dataclass(frozen=True, slots=True)
class FinalTranscript:
    text: str
    upto_seq: int
    logprob: float = 0.0


@dataclass(frozen=True, slots=True)
class TentativeTranscript:
    """What the final will say if the user, now pausing, does not go on (see Speculate)."""

    text: str
    logprob: float = 0.0


# The endpointer's StartSpeech is passed on as it is: nothing needs adding to it.
SttEvent = StartSpeech | PartialTranscript | TentativeTranscript | FinalTranscript


@dataclass(frozen=True, slots=True)
class SttEngines:
    recognizer: SpeechRecognizer
    vad: VoiceActivityDetector
    turn: TurnDetector
    whisper_executor: PriorityExecutor
    model_executor: ThreadPoolExecutor

    @classmethod
    def load(cls, settings: Settings) -> SttEngines:
        from workers.stt.silero import SileroVad
        from workers.stt.smart_turn import SmartTurn
        from workers.stt.whisper import WhisperRecognizer

        paths = model_paths(settings)
        location = stt_model_location(settings)
        _check_local_model(location)
        return cls(
            recognizer=WhisperRecognizer(
                location,
                device=settings.stt_device,
                compute_type=settings.stt_compute_type,
                cpu_threads=settings.stt_cpu_threads,
            ),
            vad=SileroVad(str(paths.silero_vad)),
            turn=SmartTurn(str(paths.smart_turn)),
            whisper_executor=PriorityExecutor("stt-whisper"),
            model_executor=ThreadPoolExecutor(1, thread_name_prefix="stt-vad"),
        )

    def close(self) -> None:
        self.whisper_executor.shutdown()
        self.model_executor.shutdown(wait=False, cancel_futures=True)


def _check_local_model(location: str) -> None:
    """A path must hold a CTranslate2 Whisper model; anything else is a hub id for faster-whisper.

    Without this, a mistyped path reads as a malformed hub id, and a wrong directory fails
    inside CTranslate2, neither naming the setting.
    """
    path = Path(location).expanduser()
    if not (path.is_absolute() or location.startswith((".", "~"))):
        return
    if not (path / "model.bin").is_file():
        raise FileNotFoundError(
            f"VF_STT_MODEL: no Whisper model at {path} (no {path / 'model.bin'}); "
            "empty = the one `voicefleet models` assembles in VF_MODELS_DIR"
        )


def _join(head: Recognized, tail: Recognized) -> Recognized:
    """``head`` then ``tail``, sure as the mean of their tokens."""
    if not head.text:
        return tail
    tokens = head.tokens + tail.tokens
    logprob = (head.logprob * head.tokens + tail.logprob * tail.tokens) / tokens if tokens else 0.0
    return Recognized(f"{head.text} {tail.text}".strip(), logprob, tokens)


class StreamingTranscriber:
    def __init__(
        self,
        engines: SttEngines,
        settings: Settings,
        language: str,
        partial_ready: Callable[[], None] | None = None,
    ) -> None:
        """``partial_ready``: called when a partial's decode ends; the partial is then taken
        with ``take_partial``, not returned by ``feed``. It comes up to a frame (100 ms) sooner,
        and sooner than the voice detector and turn detector ``feed`` may be waiting for: the
        first words decide what becomes of a paused reply."""
        self._engines = engines
        self._partial_ready = partial_ready
        self._language = language or settings.stt_language
        self._short_prompt = acknowledgement_prompt(
            settings.barge_in_acknowledgements.get(self._language, "")
        )
        self._endpointer = Endpointer(
            EndpointConfig.from_settings(
                settings, sample_rate=INPUT_SAMPLE_RATE, chunk=engines.vad.chunk_samples
            )
        )
        self._vad = engines.vad.stream()
        self._audio = np.zeros(0, dtype=np.float32)
        self._audio_start = 0  # absolute sample index of self._audio[0]
        self._last_seq: int | None = None
        self._lock = asyncio.Lock()
        # Per-utterance state; `_utterance` invalidates background results of a finished one.
        self._utterance = 0
        self._committed = Recognized("")
        self._commits: asyncio.Task[None] | None = None
        # Bumped by every commit: a partial queued before it is stale (its prefix changed).
        self._commit_gen = 0
        self._partial: asyncio.Task[Recognized | None] | None = None
        self._last_partial_text = ""

    @property
    def in_utterance(self) -> bool:
        """True between StartSpeech and the end of that utterance (a bad moment to hand off)."""
        return self._endpointer.speaking

    async def feed(self, seq: int, pcm16: bytes) -> list[SttEvent]:
        """Audio frames of 16 kHz mono PCM16 LE (any length, usually 100 ms) with increasing seq.
        A frame whose seq <= the last seen is a replay duplicate and is ignored."""
        async with self._lock:
            if self._last_seq is not None and seq <= self._last_seq:
                return []
            self._last_seq = seq
            samples = pcm16_to_float32(pcm16)
            self._audio = np.concatenate([self._audio, samples])
            probs = await self._run_model(self._vad.process, samples)
            events = [] if self._partial_ready else self._ready_partial()
            for prob in probs:
                for action in self._endpointer.push(prob):
                    events += await self._apply(action)
            self._trim()
            return events

    def take_partial(self) -> list[SttEvent]:
        """The partial whose decode has ended, if not taken yet. Needs no lock: it does not
        wait, so it sees no ``feed`` half done."""
        return self._ready_partial()

    async def flush(self) -> list[SttEvent]:
        """Session closing: finalize what was said, if anything."""
        async with self._lock:
            events = [] if self._partial_ready else self._ready_partial()
            for action in self._endpointer.finish():
                events += await self._apply(action)
            return events

    async def _apply(self, action: Action) -> list[SttEvent]:
        match action:
            case StartSpeech():
                self._new_utterance()
                return [action]
            case Partial(start, end):
                self._start_partial(self._slice(start, end))
                return []
            case Commit(start, end):
                self._start_commit(self._slice(start, end))
                return []
            case CheckTurn(start, end):
                prob = await self._run_model(self._engines.turn.predict, self._slice(start, end))
                log.debug("smart turn probability %.3f", prob)
                events: list[SttEvent] = []
                for follow_up in self._endpointer.turn_result(prob):
                    events += await self._apply(follow_up)
                return events
            case Speculate():
                # Waiting here delays nothing: partials wait for the commits anyway, and so
                # would the final.
                if self._commits is not None:
                    await self._commits
                # A partial decoded before the pause goes out before the tentative, so that any
                # partial after it is of new speech (as _finish_utterance keeps them before the
                # final).
                if self._partial is not None:
                    await asyncio.wait([self._partial])
                events = self._ready_partial()
                heard = self._committed
                if _WORDLIKE.search(heard.text):
                    events.append(TentativeTranscript(heard.text, heard.logprob))
                return events
            case EndTurn(start, end):
                silence = (
                    self._endpointer.position - self._endpointer.speech_end
                ) / INPUT_SAMPLE_RATE
                decided_at = time.monotonic()
                events = await self._finish_utterance(self._slice(start, end))
                if events and isinstance(events[-1], FinalTranscript):
                    telemetry.STT_FINAL_LATENCY.observe(silence + time.monotonic() - decided_at)
                return events

    def _new_utterance(self) -> None:
        self._utterance += 1
        self._committed = Recognized("")
        self._commits = None
        self._partial = None
        self._last_partial_text = ""

    def _start_partial(self, audio: FloatArray) -> None:
        # Busy until handed over: a partial decoded but not yet taken would be lost.
        busy = self._partial is not None
        # A partial decoded while a commit is queued would be stale (its prefix is about to
        # change) and would delay the commit; skipping one keeps partials at the decode rate.
        if busy or (self._commits is not None and not self._commits.done()):
            return
        # Under load, partials use only idle decode time: the finals of other sessions, which
        # someone is waiting for, must not queue behind them.
        if self._engines.whisper_executor.backlog:
            return
        utterance, gen = self._utterance, self._commit_gen

        def stale() -> bool:
            return self._utterance != utterance or self._commit_gen != gen

        self._partial = asyncio.create_task(self._decode(audio, PARTIAL_BEAM, BACKGROUND, stale))
        if self._partial_ready is not None:
            ready = self._partial_ready
            self._partial.add_done_callback(lambda _: ready())

    def _start_commit(self, audio: FloatArray) -> None:
        self._commit_gen += 1
        self._commits = asyncio.create_task(
            self._commit_after(self._commits, audio, self._utterance)
        )

    async def _commit_after(
        self, previous: asyncio.Task[None] | None, audio: FloatArray, utterance: int
    ) -> None:
        # Commits form a chain: each needs the text of the ones before it as its prompt.
        if previous is not None:
            await previous
        heard = await self._decode(audio, FINAL_BEAM, URGENT)
        if heard is not None and utterance == self._utterance:
            self._committed = _join(self._committed, heard)

    def _ready_partial(self) -> list[SttEvent]:
        task = self._partial
        if task is None or not task.done():
            return []
        self._partial = None
        if task.cancelled() or task.exception() is not None:
            log.warning("partial decode failed", exc_info=task.exception())
            return []
        partial = task.result()
        if partial is None:  # dropped unrun: a commit or the final overtook it
            return []
        heard = _join(self._committed, partial)
        if not _WORDLIKE.search(heard.text) or heard.text == self._last_partial_text:
            return []
        self._last_partial_text = heard.text
        return [PartialTranscript(heard.text, heard.logprob)]

    async def _finish_utterance(self, tail: FloatArray) -> list[SttEvent]:
        if tail.size:
            self._start_commit(tail)
        events: list[SttEvent] = []
        if self._partial is not None:
            # Either already running (it finishes before the tail's decode starts anyway) or
            # queued and now stale, so dropped: waiting costs nothing, and keeps partials
            # ordered before the final.
            await asyncio.wait([self._partial])
            events += self._ready_partial()
        if self._commits is not None:
            await self._commits
        heard = self._committed
        upto_seq = self._last_seq if self._last_seq is not None else -1
        self._new_utterance()
        if _WORDLIKE.search(heard.text):
            events.append(FinalTranscript(heard.text, upto_seq, heard.logprob))
        return events

    async def _decode(
        self,
        audio: FloatArray,
        beam_size: int,
        priority: int,
        is_stale: Callable[[], bool] | None = None,
    ) -> Recognized | None:
        """What `audio` says, or None when the job went stale before it ran."""
        prompt = self._committed.text[-_PROMPT_CHARS:]
        if not prompt and audio.size <= _PRIMED_UTTERANCE_S * INPUT_SAMPLE_RATE:
            prompt = self._short_prompt
        recognizer = self._engines.recognizer

        purpose = "partial" if priority == BACKGROUND else "final"

        def run() -> Recognized:
            started = time.perf_counter()
            heard = recognizer.transcribe(
                audio, language=self._language, beam_size=beam_size, prompt=prompt
            )
            telemetry.STT_DECODE_SECONDS.labels(purpose).observe(time.perf_counter() - started)
            return heard

        executor = self._engines.whisper_executor
        if is_stale is None:
            future = executor.submit(run, priority)
        else:
            future = executor.submit(run, priority, is_stale)
        return await asyncio.wrap_future(future)

    async def _run_model(self, fn: Callable[[FloatArray], _T], audio: FloatArray) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._engines.model_executor, fn, audio)

    def _slice(self, start: int, end: int) -> FloatArray:
        lo = max(0, start - self._audio_start)
        hi = max(lo, end - self._audio_start)
        return self._audio[lo:hi].copy()

    def _trim(self) -> None:
        drop = self._endpointer.keep_from - self._audio_start
        if drop > 0:
            self._audio = self._audio[drop:]
            self._audio_start += drop
