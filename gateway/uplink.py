"""One connection's audio stream to the STT worker that holds its lease.

The stream's audio since the last final transcript is kept, so that a new owner (the old one
died or drained) is sent the utterance in progress again and nothing the user said is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import deque

import structlog
from aio_pika.exceptions import DeliveryError

from fleet.audio import INPUT_SAMPLE_RATE
from fleet.contracts import AudioChunk, ReplayDone, SessionClose, SessionOpen
from fleet.topology import Bus

log = structlog.get_logger(__name__)

# The utterance in progress is kept for replay to a new STT owner; beyond this it is dropped
# from the front (a single utterance this long is not a conversation turn).
_MAX_REPLAY_SECONDS = 60.0


class Uplink:
    def __init__(self, bus: Bus, session_id: str, stream_id: str) -> None:
        self._bus = bus
        self._session_id = session_id
        self._stream_id = stream_id
        self._seq = 0
        self._replay: deque[AudioChunk] = deque()
        # Set while a worker holds the stream: audio goes out live, else it is only kept.
        self._owned = asyncio.Event()
        # The lease as offered, and whether it must be offered again (its worker released the
        # stream while it was silent, and no worker will come for it by itself).
        self._offer: SessionOpen | None = None
        self._reoffer = False
        # The STT owner ignores frames older than the newest it has seen, so a replay and live
        # frames must never interleave: both publish under this lock.
        self._lock = asyncio.Lock()

    async def open(self, gateway_id: str, language: str) -> None:
        """Offer the stream's lease to the STT workers; :meth:`wait_owned` returns once taken."""
        self._offer = SessionOpen(self._session_id, self._stream_id, gateway_id, language)
        await self._bus.publish(self._offer)

    async def wait_owned(self) -> None:
        await self._owned.wait()

    async def close(self) -> None:
        await self._bus.publish(SessionClose(self._session_id, self._stream_id))

    async def send(self, pcm: bytes) -> None:
        async with self._lock:
            self._seq += 1
            chunk = AudioChunk(self._session_id, self._stream_id, self._seq, pcm)
            self._replay.append(chunk)
            max_frames = int(_MAX_REPLAY_SECONDS * INPUT_SAMPLE_RATE * 2 / max(len(pcm), 1))
            while len(self._replay) > max_frames:
                self._replay.popleft()
            if self._owned.is_set():
                await self._publish(chunk)
            elif self._reoffer and self._offer is not None:
                self._reoffer = False
                await self._bus.publish(self._offer)

    def transcribed(self, upto_seq: int) -> None:
        """A final transcript covers the audio up to ``upto_seq``: it needs no replay."""
        while self._replay and self._replay[0].seq <= upto_seq:
            self._replay.popleft()

    async def owner_taken(self) -> None:
        """A worker holds the stream now: send it the utterance in progress, then go live."""
        async with self._lock:
            self._owned.set()
            for chunk in list(self._replay):
                if not await self._publish(dataclasses.replace(chunk, replayed=True)):
                    return
            with contextlib.suppress(DeliveryError):
                await self._bus.publish(
                    ReplayDone(self._session_id, self._stream_id), mandatory=True
                )

    def owner_released(self, reoffer: bool) -> None:
        """The worker gave the stream up: keep the audio until the next one takes it.

        With ``reoffer`` no worker comes by itself: the next audio offers the lease again.
        """
        self._owned.clear()
        self._reoffer = reoffer

    async def _publish(self, chunk: AudioChunk) -> bool:
        try:
            await self._bus.publish(chunk, mandatory=True)
        except DeliveryError:
            # Nobody holds the stream (its worker died): keep the audio, wait for the new owner.
            if self._owned.is_set():
                log.warning("stt_owner_lost")
            self._owned.clear()
            return False
        return True
