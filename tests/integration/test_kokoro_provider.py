"""The Kokoro provider with the real model files (`voicefleet models` assembles them)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from fleet.model_paths import kokoro_locations
from fleet.settings import Settings
from tests.speech import spoken_words, transcribe_reply
from workers.tts.providers import SpeechSynthesizer, create_synthesizer

SENTENCE = "The weather is lovely today, so let's go for a walk."


@pytest.fixture(scope="module")
def synthesizer() -> SpeechSynthesizer:
    settings = Settings()
    missing = [path for path in kokoro_locations(settings) if not Path(path).is_file()]
    if missing:
        pytest.fail(f"Kokoro model files missing: {missing}; run `voicefleet models` first")
    return create_synthesizer(settings)


async def synthesize(synthesizer: SpeechSynthesizer, text: str, voice: str) -> bytes:
    return b"".join([chunk async for chunk in synthesizer.stream(text, voice)])


def test_identity(synthesizer: SpeechSynthesizer) -> None:
    assert synthesizer.name == "kokoro"
    assert synthesizer.version
    assert synthesizer.sample_rate == 24000


async def test_sentence_becomes_plausible_24khz_speech(synthesizer: SpeechSynthesizer) -> None:
    pcm = await synthesize(synthesizer, SENTENCE, "af_heart")
    assert len(pcm) % 2 == 0
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    seconds = len(samples) / synthesizer.sample_rate
    assert 0.5 <= seconds <= 6.0
    rms = float(np.sqrt(np.mean(samples**2)))
    assert rms > 0.01, f"audio is near silent (rms {rms:.4f})"
    # Speech has gaps between words and loud syllables; a hum or steady noise does not.
    frame = synthesizer.sample_rate // 50
    frames = samples[: len(samples) // frame * frame].reshape(-1, frame)
    loudness = np.sqrt(np.mean(frames**2, axis=1))
    assert loudness.max() > 4 * np.percentile(loudness, 10)


async def test_the_same_text_becomes_the_same_bytes_every_time(
    synthesizer: SpeechSynthesizer,
) -> None:
    # The failover tests compare a reply hit by a fault with the same reply heard without one,
    # byte for byte (tests/replies.py), across TTS worker processes: this is what that rests on.
    first = await synthesize(synthesizer, SENTENCE, "af_heart")
    again = await synthesize(synthesizer, SENTENCE, "af_heart")
    together = await asyncio.gather(
        synthesize(synthesizer, SENTENCE, "af_heart"), synthesize(synthesizer, SENTENCE, "af_heart")
    )
    assert again == first
    assert list(together) == [first, first]


async def test_unknown_voice_names_the_available_ones(synthesizer: SpeechSynthesizer) -> None:
    with pytest.raises(ValueError, match=r"unknown Kokoro voice 'nobody'.*af_heart"):
        await synthesize(synthesizer, SENTENCE, "nobody")


def test_unknown_provider_is_refused() -> None:
    # Settings admits only registered names; model_copy skips that to test the registry itself.
    settings = Settings().model_copy(update={"tts_provider": "nope"})
    with pytest.raises(ValueError, match="unknown TTS provider 'nope'; known: kokoro"):
        create_synthesizer(settings)


def test_unavailable_execution_provider_is_refused() -> None:
    settings = Settings(tts_execution_provider="NoSuchExecutionProvider")
    with pytest.raises(ValueError, match=r"not available.*CPUExecutionProvider"):
        create_synthesizer(settings)


# --- the settings that shape synthesis (README: VF_TTS_SPEED, VF_TTS_LANG, VF_TTS_MODEL, ...) ---


def seconds_of(pcm: bytes, synthesizer: SpeechSynthesizer) -> float:
    return len(pcm) / 2 / synthesizer.sample_rate


async def test_speed_setting_changes_the_speech_rate(synthesizer: SpeechSynthesizer) -> None:
    normal = await synthesize(synthesizer, SENTENCE, "af_heart")
    fast = await synthesize(create_synthesizer(Settings(tts_speed=1.5)), SENTENCE, "af_heart")
    slow = await synthesize(create_synthesizer(Settings(tts_speed=0.75)), SENTENCE, "af_heart")
    # Kokoro stretches its predicted durations by 1/speed: the same words in about 2/3 (4/3) of
    # the time.
    assert seconds_of(fast, synthesizer) < 0.8 * seconds_of(normal, synthesizer)
    assert seconds_of(slow, synthesizer) > 1.2 * seconds_of(normal, synthesizer)


FRENCH = "Quelle est la capitale de la France ?"


async def test_lang_setting_is_the_language_text_is_phonemized_in() -> None:
    # The same French sentence in Kokoro's French voice: phonemized as French, Whisper hears the
    # French words; phonemized as American English, "est" is read as the English letters "EST".
    as_french = await synthesize(create_synthesizer(Settings(tts_lang="fr-fr")), FRENCH, "ff_siwis")
    as_english = await synthesize(
        create_synthesizer(Settings(tts_lang="en-us")), FRENCH, "ff_siwis"
    )
    heard_french = spoken_words(transcribe_reply(as_french, language="fr"))
    heard_english = spoken_words(transcribe_reply(as_english, language="fr"))
    assert heard_french[:3] == ["quelle", "est", "la"], heard_french
    assert "est" not in heard_english, heard_english


async def test_model_and_voices_settings_are_the_files_loaded(tmp_path: Path) -> None:
    model, voices = kokoro_locations(Settings())
    # A voices file of its own, holding one voice: the synthesizer offers exactly that one.
    own_voices = tmp_path / "one-voice.npz"
    with np.load(voices) as every_voice:
        np.savez(own_voices, af_heart=every_voice["af_heart"])
    own_model = tmp_path / "kokoro.onnx"
    own_model.symlink_to(model)
    synthesizer = create_synthesizer(Settings(tts_model=str(own_model), tts_voices=str(own_voices)))
    assert await synthesize(synthesizer, SENTENCE, "af_heart")
    with pytest.raises(ValueError, match=r"unknown Kokoro voice 'bf_emma'; available: af_heart$"):
        await synthesize(synthesizer, SENTENCE, "bf_emma")


@pytest.mark.parametrize("setting", ["tts_model", "tts_voices"])
def test_a_missing_model_file_is_named_at_start(setting: str, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "kokoro-file"
    settings = Settings.model_validate({setting: str(missing)})
    name = f"VF_{setting.upper()}"
    with pytest.raises(FileNotFoundError, match=rf"{name}: .*{missing}"):
        create_synthesizer(settings)
