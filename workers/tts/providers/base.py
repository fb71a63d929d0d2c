"""The one interface every TTS provider implements: text in, PCM chunks out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol


class SpeechSynthesizer(Protocol):
    """A speech synthesizer the TTS worker can stream from.

    Audio is PCM16 little-endian mono at `sample_rate`. The wire format to the client is
    24 kHz; the worker resamples (fleet/audio.py) when a provider's rate differs, and cuts the
    audio into `tts_chunk_ms` chunks, so providers yield whatever sizes come naturally.
    """

    name: str
    sample_rate: int

    @property
    def version(self) -> str:
        """Reported in the worker's start-up log; a remote provider reports the version of the
        server on the other end, known once it is connected."""
        ...

    def stream(self, text: str, voice: str) -> AsyncIterator[bytes]:
        """Synthesize `text`, yielding audio as soon as each part is ready.

        Implemented as an async generator; closing it early (`aclose()` or cancelling the task
        that iterates it) stops synthesis after the part in progress. Raises ValueError for an
        unknown voice (naming the available ones) or text with nothing to say.
        """
        ...


class ProviderUnavailable(Exception):
    """A provider could not speak the text: unreachable, timed out, failed mid-way, or answered
    with a server error. Unlike ValueError (the request's fault), another provider may succeed."""
