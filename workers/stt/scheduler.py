"""One worker thread for Whisper decodes, in priority order rather than arrival order.

Whisper uses every core, so a worker runs one decode at a time for all its sessions. With a
plain FIFO, a final (what the user is waiting for) queues behind partials already submitted,
of its own session or of others. Here commits and finals (priority 0) go before partials
(priority 1); ties keep submission order. A queued job can also say it is no longer wanted
(`is_stale`: its session committed or finished since), and is then dropped unrun, its future
resolved to None.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

_T = TypeVar("_T")

URGENT = 0  # commits and finals: on the end-of-turn path
BACKGROUND = 1  # partials: nice to have, and pointless once stale


def _never() -> bool:
    return False


@dataclass(order=True)
class Job(Generic[_T]):
    priority: int
    order: int
    fn: Callable[[], _T] = field(compare=False)
    is_stale: Callable[[], bool] = field(compare=False, default=_never)
    future: Future[_T | None] = field(compare=False, default_factory=Future)


class JobQueue:
    """The ordering on its own (no threads), so it can be tested directly."""

    def __init__(self) -> None:
        self._heap: list[Job[object]] = []
        self._counter = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def push(
        self, fn: Callable[[], _T], priority: int, is_stale: Callable[[], bool] = _never
    ) -> Job[_T]:
        job: Job[_T] = Job(priority, next(self._counter), fn, is_stale)
        queued: Job[object] = job  # type: ignore[assignment]  # the heap only orders them
        heapq.heappush(self._heap, queued)
        return job

    def pop(self) -> Job[object] | None:
        """The next job worth running; stale ones met on the way are resolved to None."""
        while self._heap:
            job = heapq.heappop(self._heap)
            if job.future.cancelled():
                continue
            if job.is_stale():
                job.future.set_result(None)
                continue
            return job
        return None

    def drain(self) -> None:
        while self._heap:
            heapq.heappop(self._heap).future.cancel()


class PriorityExecutor:
    def __init__(self, thread_name: str = "stt-whisper") -> None:
        self._queue = JobQueue()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name=thread_name, daemon=True)
        self._thread.start()

    def submit(
        self, fn: Callable[[], _T], priority: int, is_stale: Callable[[], bool] = _never
    ) -> Future[_T | None]:
        with self._cond:
            if self._closed:
                raise RuntimeError("executor is shut down")
            job = self._queue.push(fn, priority, is_stale)
            self._cond.notify()
        return job.future

    @property
    def backlog(self) -> int:
        """Jobs waiting for the decode thread (not counting the one running)."""
        with self._cond:
            return len(self._queue)

    def shutdown(self) -> None:
        """Cancel what is queued; the decode in progress, if any, finishes on its own."""
        with self._cond:
            self._closed = True
            self._queue.drain()
            self._cond.notify()

    def _work(self) -> None:
        while True:
            with self._cond:
                job = self._queue.pop()
                while job is None and not self._closed:
                    self._cond.wait()
                    job = self._queue.pop()
                if job is None:
                    return
            if not job.future.set_running_or_notify_cancel():
                continue
            try:
                result = job.fn()
            except BaseException as exc:  # handed to the awaiting caller
                job.future.set_exception(exc)
            else:
                job.future.set_result(result)
