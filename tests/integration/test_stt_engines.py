"""StreamingTranscriber with the real models (Whisper base, Silero VAD v6, Smart Turn v3.2).

Speech is Kokoro's: Smart Turn scores espeak and Piper voices poorly.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest

from fleet.audio import FloatArray
from fleet.model_paths import model_paths
from fleet.settings import Settings, get_settings
from tests.speech import FRAME_BYTES, RATE, frames, silence, speech
from workers.stt.endpointing import StartSpeech
from workers.stt.engines import SpeechRecognizer
from workers.stt.transcriber import (
    FinalTranscript,
    PartialTranscript,
    StreamingTranscriber,
    SttEngines,
    SttEvent,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="module")
def models_assembled() -> None:
    """Missing models are a broken set-up, never a reason to skip."""
    if not model_paths(get_settings()).whisper_base.exists():
        pytest.fail("models not assembled (run `voicefleet models`)", pytrace=False)


QUESTION = "What is the capital of France?"
# Cut anywhere between 45% and 75%, Smart Turn scores this request below 0.01, whereas cuts of the
# short QUESTION swing between 0.03 and 0.96 with the cut point.
LONG_REQUEST = "Could you please tell me what the weather will be like in Paris tomorrow?"
FRAME_S = FRAME_BYTES / 2 / RATE


class RecordingRecognizer:
    """Wraps the real recognizer and records how much audio each decode was given."""

    def __init__(self, inner: SpeechRecognizer) -> None:
        self.inner = inner
        self.lengths: list[int] = []

    def transcribe(self, audio: FloatArray, *, language: str, beam_size: int, prompt: str) -> str:
        self.lengths.append(audio.size)
        return self.inner.transcribe(audio, language=language, beam_size=beam_size, prompt=prompt)


@pytest.fixture(scope="module")
def real_engines() -> Iterator[SttEngines]:
    engines = SttEngines.load(get_settings())
    yield engines
    engines.close()


@pytest.fixture
def spy(real_engines: SttEngines) -> RecordingRecognizer:
    return RecordingRecognizer(real_engines.recognizer)


def _engines(real: SttEngines, spy: RecordingRecognizer) -> SttEngines:
    return replace(real, recognizer=spy)


async def _run(
    transcriber: StreamingTranscriber, chunks: list[bytes], *, real_time: bool = False
) -> list[tuple[int, SttEvent]]:
    """Feed frames as fast as possible, or at the pace a microphone delivers them."""
    seen: list[tuple[int, SttEvent]] = []
    started = time.monotonic()
    for seq, chunk in enumerate(chunks):
        seen += [(seq, event) for event in await transcriber.feed(seq, chunk)]
        if real_time:
            await asyncio.sleep(max(0.0, started + (seq + 1) * 0.1 - time.monotonic()))
    seen += [(len(chunks), event) for event in await transcriber.flush()]
    return seen


def _words(text: str) -> str:
    return re.sub(r"[^a-z ]", "", text.lower())


def _finals(events: list[tuple[int, SttEvent]]) -> list[FinalTranscript]:
    return [e for _, e in events if isinstance(e, FinalTranscript)]


async def test_question_gives_start_partials_and_one_final(
    real_engines: SttEngines, spy: RecordingRecognizer
) -> None:
    settings = get_settings()
    transcriber = StreamingTranscriber(_engines(real_engines, spy), settings, "en")
    events = await _run(
        transcriber, frames(silence(0.3), speech(QUESTION), silence(2.0)), real_time=True
    )

    kinds = [type(e) for _, e in events]
    assert kinds[0] is StartSpeech
    assert kinds.count(StartSpeech) == 1
    assert PartialTranscript in kinds
    (final,) = _finals(events)
    assert kinds[-1] is FinalTranscript
    assert "capital" in _words(final.text) and "france" in _words(final.text)
    assert max(spy.lengths) <= settings.stt_window_s * RATE


async def test_long_utterance_commits_and_never_decodes_past_the_window(
    real_engines: SttEngines, spy: RecordingRecognizer
) -> None:
    # A small window forces window commits; an unreachable turn threshold makes the pause an
    # internal one (committed, not final) whatever Smart Turn thinks of the first sentence.
    settings = Settings(stt_window_s=2.5, stt_turn_threshold=1.01)
    transcriber = StreamingTranscriber(_engines(real_engines, spy), settings, "en")
    first = speech("I would like to know something about geography.")
    second = speech(QUESTION)
    events = await _run(
        transcriber, frames(silence(0.3), first, silence(0.5), second, silence(2.0))
    )

    (final,) = _finals(events)
    words = _words(final.text)
    assert "geography" in words and "capital" in words and "france" in words
    # Every decode fits the window, and the window is shorter than the speech: so the final
    # text was assembled from commits, no call ever decoded the whole utterance.
    assert max(spy.lengths) <= settings.stt_window_s * RATE < first.size + second.size


async def test_replayed_frames_are_ignored(
    real_engines: SttEngines, spy: RecordingRecognizer
) -> None:
    transcriber = StreamingTranscriber(_engines(real_engines, spy), get_settings(), "en")
    chunks = frames(silence(0.3), speech(QUESTION), silence(2.0))
    events: list[SttEvent] = []
    for seq, chunk in enumerate(chunks):
        events += await transcriber.feed(seq, chunk)
        if seq % 4 == 3:
            # A failover replays what the gateway kept: earlier seqs, possibly different bytes.
            for old in range(seq - 3, seq + 1):
                assert await transcriber.feed(old, chunks[old]) == []
    events += await transcriber.flush()
    finals = [e for e in events if isinstance(e, FinalTranscript)]
    assert len(finals) == 1
    assert [type(e) for e in events].count(StartSpeech) == 1
    assert finals[0].upto_seq < len(chunks)


async def test_cut_off_phrase_waits_for_the_silence_timeout(
    real_engines: SttEngines, spy: RecordingRecognizer
) -> None:
    settings = get_settings()
    transcriber = StreamingTranscriber(_engines(real_engines, spy), settings, "en")
    full = speech(LONG_REQUEST)
    cut = full[: int(full.size * 0.55)]
    lead = silence(0.3)
    events = await _run(transcriber, frames(lead, cut, silence(2.0)))

    (final,) = _finals(events)
    speech_end_seq = (lead.size + cut.size) / RATE / FRAME_S
    waited_s = (final.upto_seq + 1 - speech_end_seq) * FRAME_S
    assert waited_s >= settings.stt_silence_timeout_s


async def test_silence_and_noise_produce_nothing(
    real_engines: SttEngines, spy: RecordingRecognizer
) -> None:
    transcriber = StreamingTranscriber(_engines(real_engines, spy), get_settings(), "en")
    events = await _run(transcriber, frames(silence(1.5), silence(1.5, noise=0.003)))
    assert events == []
    assert spy.lengths == []
