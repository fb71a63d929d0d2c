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
(:func:`tts_rank`). A piece already being synthesized is not interrupted; with two slots or more
one is kept for first pieces, so a first piece that arrives during a later piece's synthesis
starts at once beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import time
from collections.abc import AsyncIterator, Callable

# Characters of text per second of published audio (speech and the pause after each piece):
# Kokoro-82M, voice af_heart, speed 1.0 (benchmarks/tts_parallel.py; docs/benchmarks.md).
CHARS_PER_S = 17.6

# (0 for the first piece of a reply else 1, deadline): smaller is served first, ties in arrival
# order.
Rank = tuple[int, float]


def speech_seconds(text: str, speed: float = 1.0) -> float:
    """Estimated playing time of ``text`` spoken at ``speed`` (VF_TTS_SPEED; one that is not
    positive, which the engine refuses anyway, counts as 1)."""
    return len(text.strip()) / (CHARS_PER_S * (speed if speed > 0 else 1.0))


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
    """Who of the held jobs runs now: at most ``slots`` at once, the smallest rank first (ties in
    arrival order), and the critical path never shares the cores by choice.

    A rank whose class (``rank[0]``) is 0 is on the critical path (a reply's first piece: the
    user is waiting for it); any other class has slack (a later piece: the audio before it is
    still to play). A synthesis cannot be interrupted, so with two slots or more one is kept for
    critical work: non-critical jobs hold at most ``slots - 1``, and start only while no critical
    job runs. So a first piece that arrives during a later piece's synthesis starts at once
    beside it (instead of waiting for it: benchmarks/tts_parallel.py, docs/benchmarks.md), and
    no later piece starts beside a first piece. With one slot it is plain earliest first.

    Never blocks the event loop; a cancelled waiter leaves the line.
    """

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError("slots must be at least 1")
        self._slots = slots
        self._running = 0
        self._running_critical = 0
        self._line: list[tuple[Rank, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()
        self._closed = False
        self._lined_up = asyncio.Event()  # set each time a waiter joins the line

    @property
    def waiting(self) -> int:
        return sum(not future.done() for _, _, future in self._line)

    @property
    def running(self) -> int:
        return self._running

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
        critical = rank[0] == 0
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._line, (rank, next(self._arrivals), future))
        self._lined_up.set()
        self._grant()
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release(critical)  # granted as we were cancelled: pass it on
            raise
        try:
            yield
        finally:
            self._release(critical)

    def _may_start(self, critical: bool) -> bool:
        if critical:
            return self._running < self._slots
        kept = 1 if self._slots > 1 else 0
        return self._running_critical == 0 and self._running < self._slots - kept

    def _grant(self) -> None:
        """Start every waiter that may start now, smallest rank first."""
        while self._line:
            rank, _, future = self._line[0]
            if future.done():  # cancelled while waiting
                heapq.heappop(self._line)
                continue
            critical = rank[0] == 0
            if not self._may_start(critical):
                return  # those behind it rank higher: none of them may start either
            heapq.heappop(self._line)
            self._running += 1
            self._running_critical += critical
            future.set_result(None)

    def _release(self, critical: bool) -> None:
        self._running -= 1
        self._running_critical -= critical
        self._grant()

    def close(self) -> None:
        """Refuse every waiter and newcomer with :class:`Closed`; holders keep their slots."""
        self._closed = True
        for _, _, future in self._line:
            if not future.done():
                future.set_exception(Closed())
        self._line.clear()
