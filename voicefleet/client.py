"""A scripted voice client for /ws/audio: streams audio at real-time pace, records the replies.

Used by the tests and the load generator; also a worked example of the protocol.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import websockets

from fleet.audio import INPUT_SAMPLE_RATE, silence

FRAME_SECONDS = 0.1
FRAME_BYTES = int(INPUT_SAMPLE_RATE * FRAME_SECONDS) * 2


class SessionRefused(ConnectionError):
    """The gateway answered ``start`` with an error (``busy``, ``unauthorized``, ...)."""

    def __init__(self, error: dict[str, Any]) -> None:
        self.code = str(error.get("code", "closed"))
        super().__init__(f"{self.code}: {error.get('message', 'connection closed before ready')}")


@dataclass
class Received:
    at: float
    kind: str  # an event type, or "audio" for a binary frame
    data: dict[str, Any] | bytes

    @property
    def fields(self) -> dict[str, Any]:
        """The event's fields (an audio frame has none)."""
        if isinstance(self.data, bytes):
            raise TypeError("an audio frame has no fields")
        return self.data


@dataclass
class VoiceClient:
    url: str
    received: list[Received] = field(default_factory=list)
    session_id: str = ""
    resume_secret: str = ""  # from ``ready``: send it as ``resumeSecret`` to resume the session
    _ws: Any = None
    _reader: asyncio.Task[None] | None = None
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def connect(self, **start: Any) -> dict[str, Any]:
        self._ws = await websockets.connect(self.url, max_size=None)
        await self._ws.send(
            json.dumps(
                {
                    "type": "start",
                    "format": "pcm_s16le",
                    "sampleRate": INPUT_SAMPLE_RATE,
                    "channels": 1,
                    "frameDurationMs": 100,
                    **start,
                }
            )
        )
        self._reader = asyncio.create_task(self._read())
        async with asyncio.timeout(30), self._changed:
            await self._changed.wait_for(
                lambda: any(r.kind in ("ready", "error", "closed") for r in self.received)
            )
        answer = next(r for r in self.received if r.kind in ("ready", "error", "closed"))
        if answer.kind != "ready" or not isinstance(answer.data, dict):
            raise SessionRefused(answer.data if isinstance(answer.data, dict) else {})
        self.session_id = str(answer.data["sessionId"])
        self.resume_secret = str(answer.data["resumeSecret"])
        return answer.data

    async def _read(self) -> None:
        try:
            async for message in self._ws:
                if isinstance(message, bytes):
                    item = Received(time.monotonic(), "audio", message)
                else:
                    data = json.loads(message)
                    item = Received(time.monotonic(), data["type"], data)
                async with self._changed:
                    self.received.append(item)
                    self._changed.notify_all()
        except websockets.ConnectionClosed:
            pass
        finally:
            async with self._changed:
                self.received.append(Received(time.monotonic(), "closed", {}))
                self._changed.notify_all()

    async def stream(self, pcm: bytes, *, pace: float = 1.0) -> float:
        """Send audio in 100 ms frames at real-time pace; returns when the last frame was sent."""
        started = time.monotonic()
        for index in range(0, len(pcm), FRAME_BYTES):
            await self._ws.send(pcm[index : index + FRAME_BYTES])
            next_at = started + (index // FRAME_BYTES + 1) * FRAME_SECONDS / pace
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        return time.monotonic()

    async def stream_silence(self, seconds: float) -> None:
        await self.stream(silence(seconds, INPUT_SAMPLE_RATE))

    async def wait_for(
        self,
        kind: str,
        *,
        timeout: float,  # noqa: ASYNC109 - one deadline per awaited event reads best in callers
        after: int = 0,
        **match: Any,
    ) -> Received:
        """The first received item of ``kind`` (at index >= ``after``) whose fields match."""

        def found() -> Received | None:
            for item in self.received[after:]:
                if item.kind == kind and (
                    not match
                    or (
                        isinstance(item.data, dict)
                        and all(item.data.get(k) == v for k, v in match.items())
                    )
                ):
                    return item
            return None

        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(lambda: found() is not None)
        item = found()
        assert item is not None
        return item

    def index_of(self, item: Received) -> int:
        return self.received.index(item)

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [r.data for r in self.received if r.kind == kind and isinstance(r.data, dict)]

    async def send_json(self, data: dict[str, Any]) -> None:
        await self._ws.send(json.dumps(data))

    async def send_bytes(self, data: bytes) -> None:
        await self._ws.send(data)

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            await asyncio.wait_for(self._reader, 5)

    @property
    def close_code(self) -> int | None:
        return None if self._ws is None else self._ws.close_code
