"""The narrow interfaces the streaming transcriber needs from its models.

Keeping them as Protocols lets tests wrap or stub one engine (e.g. spy on recognizer calls)
without loading the others, and lets a GPU or remote engine slot in later.
"""

from __future__ import annotations

from typing import Protocol

from fleet.audio import FloatArray


class SpeechRecognizer(Protocol):
    def transcribe(self, audio: FloatArray, *, language: str, beam_size: int, prompt: str) -> str:
        """Blocking; 16 kHz float32 audio in, stripped text out ("" when nothing was said)."""
        ...


class VadStream(Protocol):
    def process(self, samples: FloatArray) -> list[float]:
        """Blocking; one speech probability per complete chunk now available."""
        ...


class VoiceActivityDetector(Protocol):
    chunk_samples: int

    def stream(self) -> VadStream:
        """A fresh per-session stream; the model itself is shared."""
        ...


class TurnDetector(Protocol):
    def predict(self, audio: FloatArray) -> float:
        """Blocking; probability that the speaker has finished their turn."""
        ...
