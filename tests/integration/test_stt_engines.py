"""StreamingTranscriber with the real models (Whisper base, Silero VAD v6, Smart Turn v3.2).

Speech is Kokoro's: Smart Turn scores espeak and Piper voices poorly.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from fleet.audio import FloatArray, pcm16_to_float32
from fleet.model_paths import model_paths
from fleet.settings import Settings, get_settings
from gateway.interruptions import Backchannels
from tests.speech import FRAME_BYTES, RATE, frames, pcm, silence, speech
from workers.stt.endpointing import StartSpeech
from workers.stt.engines import Recognized, SpeechRecognizer
from workers.stt.transcriber import (
    PARTIAL_BEAM,
    FinalTranscript,
    PartialTranscript,
    StreamingTranscriber,
    SttEngines,
    SttEvent,
    TentativeTranscript,
    acknowledgement_prompt,
)
from workers.stt.whisper import WhisperRecognizer

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
        self.heard: list[Recognized] = []

    def transcribe(
        self, audio: FloatArray, *, language: str, beam_size: int, prompt: str
    ) -> Recognized:
        self.lengths.append(audio.size)
        heard = self.inner.transcribe(audio, language=language, beam_size=beam_size, prompt=prompt)
        self.heard.append(heard)
        return heard


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


async def test_a_pause_the_turn_detector_doubts_gives_the_final_s_words_in_advance(
    real_engines: SttEngines, spy: RecordingRecognizer
) -> None:
    full = speech(LONG_REQUEST)
    chunks = frames(silence(0.3), full[: int(full.size * 0.55)], silence(2.0))
    events = await _run(
        StreamingTranscriber(_engines(real_engines, spy), Settings(speculate_turns=True), "en"),
        chunks,
    )
    kinds = [type(e) for _, e in events]
    assert kinds.count(TentativeTranscript) == 1, events
    assert kinds.index(TentativeTranscript) < kinds.index(FinalTranscript)
    (tentative,) = [e for _, e in events if isinstance(e, TentativeTranscript)]
    (final,) = _finals(events)
    assert tentative.text == final.text
    # Announced at the pause, long before the silence timeout ends the turn.
    (at,) = [seq for seq, e in events if isinstance(e, TentativeTranscript)]
    assert at < final.upto_seq

    quiet = StreamingTranscriber(_engines(real_engines, spy), Settings(speculate_turns=False), "en")
    assert TentativeTranscript not in [type(e) for _, e in await _run(quiet, chunks)]


async def test_silence_and_noise_produce_nothing(
    real_engines: SttEngines, spy: RecordingRecognizer
) -> None:
    transcriber = StreamingTranscriber(_engines(real_engines, spy), get_settings(), "en")
    events = await _run(transcriber, frames(silence(1.5), silence(1.5, noise=0.003)))
    assert events == []
    assert spy.lengths == []


# --- the settings that shape recognition (README: VF_STT_LANGUAGE, VF_STT_END_SILENCE_S, ...) ---

FRENCH = "Quelle est la capitale de la France ?"


async def test_language_setting_is_the_language_transcribed(
    real_engines: SttEngines, spy: RecordingRecognizer
) -> None:
    french = frames(silence(0.3), speech(FRENCH, "ff_siwis", "fr-fr"), silence(2.0))
    heard: dict[str, str] = {}
    for language in ("fr", "en"):
        # No language asked for by the session: the setting decides.
        transcriber = StreamingTranscriber(
            _engines(real_engines, spy), Settings(stt_language=language), ""
        )
        (final,) = _finals(await _run(transcriber, french))
        heard[language] = _words(final.text)
    # Whisper writes what it hears in the language it is told: the French words, or (told
    # English) an English rendering of them.
    assert {"quelle", "est", "capitale"} <= set(heard["fr"].split()), heard
    assert "capitale" not in heard["en"].split() and "capital" in heard["en"].split(), heard


def _waited_s(final: FinalTranscript, speech_end_s: float) -> float:
    """Audio time from the end of the speech to the frame that ended the turn."""
    return (final.upto_seq + 1) * FRAME_S - speech_end_s


async def test_end_silence_setting_is_the_pause_before_the_turn_can_end(
    real_engines: SttEngines, spy: RecordingRecognizer
) -> None:
    lead, question = silence(0.3), speech(QUESTION)
    chunks = frames(lead, question, silence(2.0))
    speech_end_s = (lead.size + question.size) / RATE
    long_pause = 0.9  # below the silence timeout (1.2 s), after which the turn ends regardless
    short_pause = get_settings().stt_end_silence_s
    waited = {}
    for end_silence in (short_pause, long_pause):
        settings = Settings(stt_end_silence_s=end_silence)
        transcriber = StreamingTranscriber(_engines(real_engines, spy), settings, "en")
        (final,) = _finals(await _run(transcriber, chunks))
        waited[end_silence] = _waited_s(final, speech_end_s)
    # Smart Turn takes the whole question for a finished turn as soon as it is asked, so the
    # turn ends that pause after the speech (as the VAD hears it end, a little before Kokoro's
    # last sample): the longer pause, the later by the difference, give or take a frame.
    assert waited[short_pause] < long_pause, waited
    assert waited[long_pause] - waited[short_pause] >= long_pause - short_pause - FRAME_S, waited


async def test_vad_threshold_setting_decides_what_is_speech(
    real_engines: SttEngines, spy: RecordingRecognizer
) -> None:
    chunks = frames(silence(0.3), speech(QUESTION), silence(2.0))
    # Silero scores this clean speech at most about 0.99 (measured: 0.987).
    deaf = StreamingTranscriber(
        _engines(real_engines, spy), Settings(stt_vad_threshold=0.995), "en"
    )
    assert await _run(deaf, chunks) == []
    assert spy.lengths == [], "audio below the threshold was sent to Whisper"
    hearing = StreamingTranscriber(
        _engines(real_engines, spy), Settings(stt_vad_threshold=0.9), "en"
    )
    events = await _run(hearing, chunks)
    assert [type(e) for _, e in events].count(StartSpeech) == 1
    assert len(_finals(events)) == 1


class BeamRecorder(RecordingRecognizer):
    """Also records each decode's beam: partials decode with beam 1, commits and finals with 5."""

    def __init__(self, inner: SpeechRecognizer) -> None:
        super().__init__(inner)
        self.beams: list[int] = []

    def transcribe(
        self, audio: FloatArray, *, language: str, beam_size: int, prompt: str
    ) -> Recognized:
        self.beams.append(beam_size)
        return super().transcribe(audio, language=language, beam_size=beam_size, prompt=prompt)


async def test_partial_interval_setting_spaces_the_partials(real_engines: SttEngines) -> None:
    chunks = frames(silence(0.3), speech(LONG_REQUEST), silence(2.0))
    partials: dict[float, list[list[int]]] = {}
    for interval in (1.0, 30.0):
        recorder = BeamRecorder(real_engines.recognizer)
        settings = Settings(stt_partial_interval_s=interval)
        transcriber = StreamingTranscriber(_engines(real_engines, recorder), settings, "en")
        assert len(_finals(await _run(transcriber, chunks))) == 1
        # Decodes run one at a time, in this order. Between two commits (beam 5) every partial
        # (beam 1) decodes the audio from the last commit to where it was asked for.
        runs: list[list[int]] = [[]]
        for length, beam in zip(recorder.lengths, recorder.beams, strict=True):
            if beam == PARTIAL_BEAM:
                runs[-1].append(length)
            elif runs[-1]:
                runs.append([])
        partials[interval] = [run for run in runs if run]
    assert partials[1.0], "no partial at all"
    for run in partials[1.0]:
        assert all(b - a >= 1.0 * RATE for a, b in itertools.pairwise(run)), run
    # Asked for every 30 s, a request of a few seconds gets only the first partial (decoded
    # VF_STT_FIRST_PARTIAL_S into the speech), none after it.
    assert sum(map(len, partials[30.0])) <= 1, partials[30.0]


def test_model_setting_is_the_whisper_model_loaded(tmp_path: Path) -> None:
    own = tmp_path / "my-whisper"
    own.symlink_to(model_paths(get_settings()).whisper_base, target_is_directory=True)
    recognizer = SttEngines.load(Settings(stt_model=str(own))).recognizer
    text = recognizer.transcribe(speech(QUESTION), language="en", beam_size=5, prompt="").text
    assert {"capital", "france"} <= set(_words(text).split()), text

    missing = tmp_path / "no-whisper-here"
    with pytest.raises(FileNotFoundError, match=rf"VF_STT_MODEL.*{missing}"):
        SttEngines.load(Settings(stt_model=str(missing)))
    with pytest.raises(FileNotFoundError, match=rf"VF_STT_MODEL.*{tmp_path}.*model\.bin"):
        SttEngines.load(Settings(stt_model=str(tmp_path)))  # a directory, but no model in it


THREADS_AFTER_A_DECODE = """
import os
import numpy as np
from fleet.settings import get_settings
from workers.stt.transcriber import SttEngines
engines = SttEngines.load(get_settings())
engines.recognizer.transcribe(np.zeros(16000, np.float32), language="en", beam_size=1, prompt="")
print(len(os.listdir("/proc/self/task")))
"""


def test_cpu_threads_setting_sizes_whisper_s_thread_pool() -> None:
    # CTranslate2's pool of threads for one decode is as large as the setting (up to the cores
    # there are: this needs two). A process each, since the pool is per process.
    counts = {}
    for threads in (1, 2):
        done = subprocess.run(
            [sys.executable, "-c", THREADS_AFTER_A_DECODE],
            env={**os.environ, "VF_STT_CPU_THREADS": str(threads), "HF_HUB_OFFLINE": "1"},
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        counts[threads] = int(done.stdout.split()[-1])
    assert counts[2] > counts[1], counts


# --- acknowledgements (README: VF_BARGE_IN_ACKNOWLEDGEMENTS primes short utterances) ---------


@pytest.mark.parametrize(
    ("said", "voice"), [("Uh-huh.", "am_adam"), ("Right.", "bm_george"), ("Yeah.", "af_heart")]
)
async def test_a_short_acknowledgement_is_written_as_one(
    real_engines: SttEngines, spy: RecordingRecognizer, said: str, voice: str
) -> None:
    """Unprimed, Whisper base wrote these "That's high.", "Rider." and "Yage" (measured): the
    gateway would have taken each for an interruption."""
    settings = get_settings()
    transcriber = StreamingTranscriber(_engines(real_engines, spy), settings, "en")
    (final,) = _finals(
        await _run(transcriber, frames(silence(0.3), speech(said, voice), silence(2.0)))
    )
    acknowledgements = Backchannels.parse(settings.barge_in_acknowledgements["en"], 0.6)
    assert acknowledgements.is_acknowledgement(final.text), final.text


async def test_a_short_request_is_still_written_as_itself(
    real_engines: SttEngines, spy: RecordingRecognizer
) -> None:
    transcriber = StreamingTranscriber(_engines(real_engines, spy), get_settings(), "en")
    chunks = frames(silence(0.3), speech("Wait.", "bf_emma"), silence(2.0))
    (final,) = _finals(await _run(transcriber, chunks))
    assert _words(final.text).split() == ["wait"], final.text


async def test_transcripts_carry_how_sure_the_recognizer_was(real_engines: SttEngines) -> None:
    """The gateway takes a few words the recognizer is unsure of for none (over a reply): the
    final says how sure it was of all of its text, each partial of its own."""
    recorder = BeamRecorder(real_engines.recognizer)
    transcriber = StreamingTranscriber(_engines(real_engines, recorder), get_settings(), "en")
    events = await _run(
        transcriber, frames(silence(0.3), speech(QUESTION), silence(2.0)), real_time=True
    )
    (final,) = _finals(events)
    commits = [h for h, beam in zip(recorder.heard, recorder.beams, strict=True) if beam > 1]
    tokens = sum(h.tokens for h in commits)
    assert tokens > 0
    assert final.logprob == pytest.approx(sum(h.logprob * h.tokens for h in commits) / tokens)
    # A question plainly spoken is heard surely (VF_BARGE_IN_LEAST_LOGPROB is -0.5).
    assert -0.5 < final.logprob < 0, final
    partials = [e for _, e in events if isinstance(e, PartialTranscript)]
    assert partials and all(p.logprob < 0 for p in partials), partials


async def test_a_partial_is_handed_over_as_soon_as_decoded_not_with_the_next_frame(
    real_engines: SttEngines,
) -> None:
    """Over a playing reply the first words decide its fate: the transcriber says when a partial
    is ready, and it can be taken then, with no more audio to come."""
    ready = asyncio.Event()
    transcriber = StreamingTranscriber(real_engines, get_settings(), "en", partial_ready=ready.set)
    chunks = frames(silence(0.3), speech(LONG_REQUEST))
    # Feed until half a second past the start of speech (the first partial is asked for
    # VF_STT_FIRST_PARTIAL_S = 0.3 s past it), then no more frames: the user goes on speaking,
    # the next frame is not here yet.
    fed: list[SttEvent] = []
    start_seq: int | None = None
    for seq, chunk in enumerate(chunks):
        events = await transcriber.feed(seq, chunk)
        fed += events
        if start_seq is None and any(isinstance(e, StartSpeech) for e in events):
            start_seq = seq
        if start_seq is not None and seq - start_seq >= 5:
            break
    assert start_seq is not None, "no speech heard"
    # Frames are fed far faster than a decode runs, so none had its partial handed over yet.
    assert not [e for e in fed if isinstance(e, PartialTranscript)], fed
    async with asyncio.timeout(60):  # a hang guard, not a speed requirement
        await ready.wait()
    (partial,) = transcriber.take_partial()
    assert isinstance(partial, PartialTranscript), partial
    assert _words(partial.text).split()[:1] == ["could"], partial


class _CountingModel:
    """Whisper's CTranslate2 model, counting the tokens each generate call wrote."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.written: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        results = self.inner.generate(*args, **kwargs)
        self.written += [len(r.sequences_ids[0]) for r in results]
        return results


def test_a_partial_decode_that_runs_away_in_a_loop_is_cut_short(
    real_engines: SttEngines,
) -> None:
    """Primed with acknowledgements, a partial of "Cool." (0.62 s from just before the speech,
    cut mid-word) loops: "Cool. Cool. Cool. ..." for 224 tokens, seconds of the decode thread
    all sessions share. The decode stops at twice what speech needs, and the clip is decoded
    again on the full window."""
    partial = pcm16_to_float32(pcm(silence(0.2), speech("Cool.", "af_bella")))[: round(0.62 * RATE)]
    prompt = acknowledgement_prompt(get_settings().barge_in_acknowledgements["en"])
    recognizer = real_engines.recognizer
    assert isinstance(recognizer, WhisperRecognizer)
    model = recognizer._model
    counting = _CountingModel(model.model)
    model.model = counting
    try:
        heard = recognizer.transcribe(partial, language="en", beam_size=1, prompt=prompt)
    finally:
        model.model = counting.inner
    assert _words(heard.text).split() == ["cool"], heard
    seconds = partial.size / RATE
    assert counting.written and max(counting.written) <= 8 + 12 * seconds + 1, counting.written


async def test_the_start_of_speech_says_how_much_of_it_the_voice_detector_had_heard(
    real_engines: SttEngines,
) -> None:
    """The gateway counts the time for a decision on a paused reply from when the speech began:
    the start says how long before it that was, in the audio (at least the detector's run of
    voiced chunks)."""
    transcriber = StreamingTranscriber(real_engines, get_settings(), "en")
    lead = silence(1.0)
    events = await _run(transcriber, frames(lead, speech("Wait.", "af_heart"), silence(1.5)))
    starts = [(seq, e) for seq, e in events if isinstance(e, StartSpeech)]
    assert len(starts) == 1
    seq, start = starts[0]
    chunk = real_engines.vad.chunk_samples
    assert start.voiced >= 3 * chunk, start
    # It began no earlier than the speech itself, and within the frames fed so far.
    detected_by = (seq + 1) * FRAME_BYTES // 2
    assert lead.size <= detected_by - start.voiced + chunk, (start, detected_by)
