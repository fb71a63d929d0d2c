"""The Kokoro provider with the real model files (`voicefleet models` assembles them)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from fleet.model_paths import kokoro_locations
from fleet.settings import Settings
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
