"""A voice turn from the client's side, and the checks every chaos test makes afterwards."""

from __future__ import annotations

import asyncio
import time

import httpx

from tests.fleet_processes import Fleet
from tests.speech import pcm, silence, speech
from voicefleet.client import Received, VoiceClient

QUESTION = "What is the capital of France?"
SECOND_QUESTION = "What colour is the sky?"


async def voice_turn(client: VoiceClient, text: str = QUESTION) -> Received:
    """Speak ``text``; returns the reply's ``audio_end`` (so the turn played completely)."""
    after = len(client.received)
    await client.stream(pcm(silence(0.3), speech(text), silence(2.5)))
    final = await client.wait_for("transcript", final=True, timeout=30, after=after)
    start = await client.wait_for("audio_start", timeout=60, after=client.index_of(final))
    assert isinstance(start.data, dict)
    end = await client.wait_for("audio_end", timeout=90, turn=start.data["turn"])
    played = sum(
        len(r.data)
        for r in client.received[client.index_of(start) : client.index_of(end)]
        if r.kind == "audio" and isinstance(r.data, bytes)
    )
    assert played > 24000 * 2 * 0.3, "less than 0.3 s of reply audio"
    return end


async def wait_ready(fleet: Fleet, *, ready: bool, patience: float) -> float:
    """Poll /readyz until it answers 200 (``ready``) or 503; returns the seconds it took."""
    started = time.monotonic()
    want = 200 if ready else 503
    async with httpx.AsyncClient(timeout=3) as http:
        while True:
            try:
                status = (await http.get(f"{fleet.http_url}/readyz")).status_code
            except httpx.HTTPError:
                status = None
            if status == want:
                return time.monotonic() - started
            if time.monotonic() - started > patience:
                raise AssertionError(f"/readyz still {status} after {patience}s\n{fleet.logs()}")
            await asyncio.sleep(0.2)


def outcome(client: VoiceClient, after: int) -> str:
    """What the client got since ``after``: 'completed', 'error:<code>', or '' (nothing yet)."""
    for item in client.received[after:]:
        if item.kind == "audio_end":
            return "completed"
        if item.kind == "error" and isinstance(item.data, dict):
            return f"error:{item.data.get('code')}"
    return ""
