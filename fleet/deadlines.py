"""Deadlines of reply pieces, and serving held work earliest deadline first.

Every ``tts.request`` carries when the client will need its audio (``TtsRequest.deadline``, Unix
time in seconds; docs/architecture.md, "Deadlines"):

- the first piece of a reply is needed now: its deadline is the time the LLM bridge sends it;
- a later piece is needed when the audio before it has finished playing. The bridge estimates
  that from the text it has already sent: the first piece's deadline plus the speech time of
  every piece before this one, at Kokoro's measured speech rate (:data:`CHARS_PER_S`,
  benchmarks/tts_parallel.py). The estimate counts from the first piece's *send* time, not
  from its first audio, so it errs early by the first piece's synthesis time: a later piece is
  never scheduled as later than it is.

A TTS worker holds a small window of deliveries (``VF_TTS_PREFETCH``) and runs them through
:class:`EarliestFirst`: first pieces before later pieces, then by deadline, then in arrival order
(:func:`tts_rank`). A piece already being synthesized is not interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import time
from collections.abc import AsyncIterator, Callable

# Seconds of published audio (speech and the pause after the piece) per character of text:
# Kokoro-82M, voice af_heart, speed 1.0 (benchmarks/tts_parallel.py; docs/benchmarks.md).
CHARS_PER_S = 14.0

# (0 for the first piece of a reply else 1, deadline): smaller is served first, ties in arrival
# order.
Rank = tuple[int, float]


def speech_seconds(text: str, speed: float = 1.0) -> float:
    """Estimated playing time of ``text`` spoken at ``speed`` (VF_TTS_SPEED)."""
    return len(text.strip()) / (CHARS_PER_S * speed)


class ReplyClock:
    """The deadlines of one reply's pieces, in the order they are sent to synthesis."""

    def __init__(self, speed: float = 1.0, now: Callable[[], float] = time.time) -> None:
        self._speed = speed
        self._now = now
        self._start: float | None = None
        self._ahead = 0.0  # playing time of the pieces sent so far

    def deadline(self, piece: str) -> float:
        """When the client needs ``piece`` (the next one of the reply), and count it as sent."""
        if self._start is None:
            self._start = self._now()
        due = self._start + self._ahead
        self._ahead += speech_seconds(piece, self._speed)
        return due


def tts_rank(sentence: int, deadline: float, received: float) -> Rank:
    """The order a TTS worker serves held pieces in: a first piece is on the critical path of
    time to first audio, so it goes before any later piece; then the earliest deadline. A piece
    without a deadline (0: from a publisher that predates them) is due when it was received."""
    known = math.isfinite(deadline) and deadline > 0
    return (0 if sentence == 0 else 1, deadline if known else received)


class Closed(Exception):
    """The gate is closed (the worker is draining): the held job goes back to the queue."""


class EarliestFirst:
    """At most ``slots`` holders at once; a freed slot goes to the waiter with the smallest rank
    (ties in arrival order). Never blocks the event loop; a cancelled waiter leaves the line."""

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError("slots must be at least 1")
        self._free = slots
        self._line: list[tuple[Rank, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()
        self._closed = False
        self._lined_up = asyncio.Event()  # set each time a waiter joins the line

    @property
    def waiting(self) -> int:
        return sum(not future.done() for _, _, future in self._line)

    async def until_waiting(self, count: int) -> None:
        """Return once ``count`` waiters are in line (for tests and inspection)."""
        while self.waiting < count:
            self._lined_up.clear()
            await self._lined_up.wait()

    @contextlib.asynccontextmanager
    async def slot(self, rank: Rank) -> AsyncIterator[None]:
        """Hold a slot for the body; raises :class:`Closed` instead once :meth:`close` is called."""
        if self._closed:
            raise Closed
        if self._free > 0 and not self.waiting:
            self._free -= 1
        else:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            heapq.heappush(self._line, (rank, next(self._arrivals), future))
            self._lined_up.set()
            try:
                await future
            except asyncio.CancelledError:
                if future.done() and not future.cancelled():
                    self._release()  # granted as we were cancelled: pass it on
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        while self._line:
            _, _, future = heapq.heappop(self._line)
            if not future.done():
                future.set_result(None)  # the slot passes straight to the next in line
                return
        self._free += 1

    def close(self) -> None:
        """Refuse every waiter and newcomer with :class:`Closed`; holders keep their slots."""
        self._closed = True
        for _, _, future in self._line:
            if not future.done():
                future.set_exception(Closed())
        self._line.clear()
