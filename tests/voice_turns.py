"""A whole voice turn from the client's side: speak, hear the final transcript, hear the reply."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from tests.speech import pcm, silence, speech
from voicefleet.client import Received, VoiceClient

QUESTION = "What is the capital of France?"
SECOND_QUESTION = "What colour is the sky?"
# A request the small model answers at length (to its token limit), and a question to cut it off.
LONG_REQUEST = "Please tell me a long story about a brave knight and a friendly dragon."
# A system prompt under which even the small chat model tells the long request a long story (the
# fleet's default asks for one to three short sentences).
STORYTELLER = "You are a storyteller. Your stories are long and detailed, twenty sentences or more."
INTERRUPTION = "Stop. What is two plus two?"


@dataclass(frozen=True)
class Turn:
    number: int  # the `turn` of the reply
    heard: str  # the final transcript of what was said
    reply: str  # the reply's assistant_text, joined
    audio: bytes  # the reply's audio, 24 kHz PCM16
    end: Received  # the reply's audio_end


def reply_text(client: VoiceClient, turn: int) -> str:
    return "".join(e["text"] for e in client.events("assistant_text") if e["turn"] == turn)


def audio_between(client: VoiceClient, start: Received, end: Received) -> bytes:
    return b"".join(
        r.data
        for r in client.received[client.index_of(start) : client.index_of(end)]
        if r.kind == "audio" and isinstance(r.data, bytes)
    )


async def voice_turn(
    client: VoiceClient, text: str = QUESTION, *, min_audio_s: float = 0.3
) -> Turn:
    """Speak ``text`` and wait for the reply to play to its ``audio_end``."""
    after = len(client.received)
    await client.stream(pcm(silence(0.3), speech(text), silence(2.5)))
    final = await client.wait_for("transcript", final=True, timeout=30, after=after)
    start = await client.wait_for("audio_start", timeout=60, after=client.index_of(final))
    assert isinstance(start.data, dict) and isinstance(final.data, dict)
    number = int(start.data["turn"])
    end = await client.wait_for("audio_end", timeout=90, turn=number)
    audio = audio_between(client, start, end)
    assert len(audio) > 24000 * 2 * min_audio_s, f"less than {min_audio_s} s of reply audio"
    return Turn(number, str(final.data["text"]), reply_text(client, number), audio, end)


async def talk_until_closed(client: VoiceClient, audio: bytes, patience: float) -> Received:
    """Stream ``audio`` until the server ends the connection; returns the ``error`` it sent."""
    talking = asyncio.create_task(client.stream(audio))
    try:
        error = await client.wait_for("error", timeout=patience)
        await client.wait_for("closed", timeout=10)
    finally:
        talking.cancel()
        await asyncio.gather(talking, return_exceptions=True)
        await client.close()
    return error
