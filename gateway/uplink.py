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

from fleet.contracts import AudioChunk, ReplayDone, SessionClose, SessionOpen
from fleet.topology import Bus

log = structlog.get_logger(__name__)

# What one kept frame costs besides its audio (the chunk object, its headers): counted in the
# replay bound, so that tiny frames cannot make the bound mean much more memory.
FRAME_OVERHEAD_BYTES = 320


class Uplink:
    def __init__(self, bus: Bus, session_id: str, stream_id: str, max_replay_bytes: int) -> None:
        self._bus = bus
        self._session_id = session_id
        self._stream_id = stream_id
        self._seq = 0
        # The utterance in progress is kept for replay to a new STT owner, up to
        # ``max_replay_bytes`` (VF_REPLAY_MAX_BYTES); beyond, it is dropped from the front.
        self._replay: deque[AudioChunk] = deque()
        self._replay_bytes = 0
        self._max_replay_bytes = max_replay_bytes
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
            self._keep(chunk)
            if self._owned.is_set():
                await self._publish(chunk)
            elif self._reoffer and self._offer is not None:
                self._reoffer = False
                await self._bus.publish(self._offer)

    @property
    def replay_bytes(self) -> int:
        """What the kept utterance counts against ``max_replay_bytes``."""
        return self._replay_bytes

    def _keep(self, chunk: AudioChunk) -> None:
        self._replay.append(chunk)
        self._replay_bytes += len(chunk.pcm) + FRAME_OVERHEAD_BYTES
        while self._replay_bytes > self._max_replay_bytes:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        dropped = self._replay.popleft()
        self._replay_bytes -= len(dropped.pcm) + FRAME_OVERHEAD_BYTES

    def transcribed(self, upto_seq: int) -> None:
        """A final transcript covers the audio up to ``upto_seq``: it needs no replay."""
        while self._replay and self._replay[0].seq <= upto_seq:
            self._drop_oldest()

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
