"""The checks every chaos test makes around a voice turn."""

from __future__ import annotations

import asyncio
import time

import httpx

from tests.fleet_processes import Fleet
from tests.voice_turns import QUESTION, SECOND_QUESTION, voice_turn
from voicefleet.client import VoiceClient

__all__ = ["QUESTION", "SECOND_QUESTION", "outcome", "voice_turn", "wait_ready"]


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
