"""Shaping a provider's audio for the wire: the output rate, pauses between pieces, fixed-size
chunks."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fleet.audio import OUTPUT_SAMPLE_RATE, resample_pcm16, silence
from workers.tts.providers.base import SpeechSynthesizer


def speech_chunks(
    synthesizer: SpeechSynthesizer, text: str, voice: str, chunk_ms: int
) -> AsyncIterator[tuple[bytes, bool]]:
    """``text`` spoken by ``synthesizer`` as the wire carries it, in ``(chunk, is_last)``."""
    return fixed_chunks(
        wire_speech(synthesizer, text, voice), OUTPUT_SAMPLE_RATE * chunk_ms // 1000 * 2
    )


async def wire_speech(
    synthesizer: SpeechSynthesizer, text: str, voice: str
) -> AsyncIterator[bytes]:
    """The provider's speech at the output rate, then the pause that follows the piece."""
    rate = synthesizer.sample_rate
    async for pcm in synthesizer.stream(text, voice):
        yield pcm if rate == OUTPUT_SAMPLE_RATE else resample_pcm16(pcm, rate, OUTPUT_SAMPLE_RATE)
    yield silence(pause_after(text), OUTPUT_SAMPLE_RATE)


async def fixed_chunks(
    audio: AsyncIterator[bytes], chunk_bytes: int
) -> AsyncIterator[tuple[bytes, bool]]:
    """Yield ``(chunk, is_last)``; the last chunk may be shorter, and is empty for no audio.

    One chunk is held back until the next arrives, because only then is it known not to be last.
    """
    if chunk_bytes <= 0 or chunk_bytes % 2:
        raise ValueError("chunk_bytes must be a positive even number (PCM16 samples)")
    pending = b""
    held: bytes | None = None
    async for piece in audio:
        pending += piece
        while len(pending) >= chunk_bytes:
            if held is not None:
                yield held, False
            held, pending = pending[:chunk_bytes], pending[chunk_bytes:]
    if pending:
        if held is not None:
            yield held, False
        held = pending
    yield (held if held is not None else b""), True


SENTENCE_PAUSE_S = 0.22
CLAUSE_PAUSE_S = 0.1


def pause_after(text: str) -> float:
    """Silence to play after a piece of a reply.

    Providers trim their output, so pieces played back to back would run together; the pause
    a speaker makes depends on how the piece ends.
    """
    end = text.rstrip()[-1:]
    if end in {".", "!", "?", "…"}:
        return SENTENCE_PAUSE_S
    if end in {",", ";", ":", "—", "-"}:
        return CLAUSE_PAUSE_S
    return 0.0
