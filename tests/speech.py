"""Spoken test utterances: Kokoro speech as 16 kHz PCM16, cached per process."""

from __future__ import annotations

import difflib
import re
from functools import lru_cache

import numpy as np
from faster_whisper import WhisperModel

from fleet.audio import FloatArray, float32_to_pcm16, pcm16_to_float32, resample, split_frames
from fleet.model_paths import kokoro_locations, stt_model_location
from fleet.settings import get_settings

RATE = 16000
FRAME_BYTES = 3200  # 100 ms of 16 kHz PCM16


@lru_cache(maxsize=1)
def _kokoro() -> object:
    import kokoro_onnx

    model, voices = kokoro_locations(get_settings())
    return kokoro_onnx.Kokoro(model, voices)


@lru_cache(maxsize=16)
def speech(text: str, voice: str = "af_heart", lang: str = "en-us") -> FloatArray:
    """`text` spoken by Kokoro (phonemized as ``lang``), as 16 kHz float32."""
    samples, rate = _kokoro().create(text, voice=voice, lang=lang)  # type: ignore[attr-defined]
    return resample(np.asarray(samples, dtype=np.float32), int(rate), RATE)


def silence(seconds: float, noise: float = 0.0, seed: int = 0) -> FloatArray:
    count = round(seconds * RATE)
    if noise <= 0:
        return np.zeros(count, dtype=np.float32)
    return np.random.default_rng(seed).normal(0.0, noise, count).astype(np.float32)


def frames(*parts: FloatArray) -> list[bytes]:
    """The parts back to back, as the 100 ms PCM16 frames a client streams."""
    return split_frames(float32_to_pcm16(np.concatenate(parts)), FRAME_BYTES)


def pcm(*parts: FloatArray) -> bytes:
    """The parts back to back as 16 kHz PCM16, ready to stream."""
    return float32_to_pcm16(np.concatenate(parts))


def spoken_words(text: str) -> list[str]:
    """The words of ``text`` in order, lower-case, without punctuation."""
    return re.findall(r"[a-z0-9]+", text.lower())


def words(text: str) -> set[str]:
    return set(spoken_words(text))


@lru_cache(maxsize=1)
def _whisper() -> WhisperModel:
    return WhisperModel(stt_model_location(get_settings()), device="cpu", compute_type="int8")


def likeness(heard: str, said: str) -> float:
    """How closely what Whisper heard spells what was said, 0..1 (letters and digits, in order).

    Character-level, so a short reply with a foreign name that Whisper spells differently still
    counts as that reply; unrelated English sentences score about 0.3.
    """
    return difflib.SequenceMatcher(
        a=" ".join(spoken_words(said)), b=" ".join(spoken_words(heard))
    ).ratio()


def transcribe_reply(pcm24k: bytes, language: str = "en") -> str:
    """What a listener hears in 24 kHz reply audio, by Whisper (beam 5)."""
    audio = reply_audio(pcm24k)
    segments, _ = _whisper().transcribe(audio, language=language, beam_size=5, vad_filter=False)
    return " ".join(segment.text for segment in segments)


def median_pitch(audio: FloatArray, rate: int = RATE) -> float:
    """The median fundamental frequency (Hz) of the voiced 40 ms frames, by autocorrelation.

    Enough to tell a low voice from a high one: Kokoro's male voices sit near 100-130 Hz, its
    female voices near 180-250 Hz.
    """
    size, hop = int(0.04 * rate), int(0.02 * rate)
    shortest, longest = rate // 400, rate // 60
    loud = float(np.max(np.abs(audio))) * 0.1 if audio.size else 0.0
    pitches = []
    for begin in range(0, audio.size - size, hop):
        frame = audio[begin : begin + size] - np.mean(audio[begin : begin + size])
        if np.sqrt(np.mean(frame**2)) < loud:
            continue
        correlation = np.correlate(frame, frame, mode="full")[size - 1 :]
        lag = shortest + int(np.argmax(correlation[shortest:longest]))
        if correlation[lag] > 0.5 * correlation[0]:
            pitches.append(rate / lag)
    return float(np.median(pitches)) if pitches else 0.0


def reply_audio(pcm24k: bytes) -> FloatArray:
    """24 kHz reply audio as 16 kHz float32, like the test utterances."""
    return resample(pcm16_to_float32(pcm24k), 24000, RATE)


@lru_cache(maxsize=8)
def wordless(text: str, voice: str = "am_adam") -> FloatArray:
    """A voiced sound with no word in it: Kokoro saying ``text`` played backwards.

    Made for the voice detector to hear a voice (synthetic noise bursts and hums do not start an
    utterance at all: Silero takes them for noise) without anything to transcribe.
    """
    return np.ascontiguousarray(speech(text, voice)[::-1])
