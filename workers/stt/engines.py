"""The narrow interfaces the streaming transcriber needs from its models.

Keeping them as Protocols lets tests wrap or stub one engine (e.g. spy on recognizer calls)
without loading the others, and lets a GPU or remote engine slot in later.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from fleet.audio import FloatArray


@dataclass(frozen=True, slots=True)
class Recognized:
    """What a recognizer heard: ``text`` (stripped; "" when nothing was said), and how sure it is
    of it: ``logprob``, the mean log-probability of its tokens (0 = certain), and ``tokens``,
    how many tokens the mean is over."""

    text: str
    logprob: float = 0.0
    tokens: int = 0


class SpeechRecognizer(Protocol):
    def transcribe(
        self, audio: FloatArray, *, language: str, beam_size: int, prompt: str
    ) -> Recognized:
        """Blocking; 16 kHz float32 audio in, what was heard out."""
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
