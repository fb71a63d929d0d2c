"""A worker that holds a window of jobs (real RabbitMQ + Redis): earliest deadline first among them,
and handed back to the queue, not sat on, when the worker drains. The handler stands in for
synthesis, so that the test controls when a job ends."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aio_pika.abc import AbstractIncomingMessage

from fleet.contracts import TtsRequest
from fleet.settings import Settings
from fleet.topology import Bus, Route, decode_incoming
from fleet.worker import Runtime, start_runtime
from workers.tts.main import piece_rank


class Synthesis:
    """A handler that records what it starts and holds each job until told to finish it."""

    def __init__(self) -> None:
        self.started: list[TtsRequest] = []
        self.finish = asyncio.Event()
        self._changed = asyncio.Condition()

    async def handle(self, request: TtsRequest) -> None:
        async with self._changed:
            self.started.append(request)
            self._changed.notify_all()
        await self.finish.wait()

    async def wait_started(self, count: int) -> None:
        async with asyncio.timeout(10), self._changed:
            await self._changed.wait_for(lambda: len(self.started) >= count)


@asynccontextmanager
async def tts_worker(
    settings: Settings, synthesis: Synthesis, prefetch: int
) -> AsyncIterator[tuple[Runtime, asyncio.Task[None]]]:
    async def gave_up(_: TtsRequest) -> None:
        raise AssertionError("no job should fail")

    async with start_runtime(settings, "tts", f"tts-test-{uuid.uuid4().hex[:6]}") as runtime:
        serving = asyncio.create_task(
            runtime.serve_jobs(
                Route.TTS_JOBS,
                TtsRequest,
                synthesis.handle,
                1,
                gave_up=gave_up,
                prefetch=prefetch,
                rank=piece_rank,
            )
        )
        await asyncio.wait_for(runtime.consuming.wait(), 10)
        try:
            yield runtime, serving
        finally:
            runtime.stopping.set()
            synthesis.finish.set()
            await asyncio.wait_for(serving, timeout=10)


async def held(runtime: Runtime, count: int) -> None:
    """Returns once ``count`` jobs are held by the worker, waiting for their turn."""
    assert runtime.job_gate is not None
    await asyncio.wait_for(runtime.job_gate.until_waiting(count), 10)


async def test_held_later_pieces_are_synthesized_earliest_deadline_first(
    settings: Settings, bus: Bus
) -> None:
    synthesis = Synthesis()
    now = time.time()
    async with tts_worker(settings, synthesis, prefetch=4) as (runtime, _):
        await bus.publish(TtsRequest("sess-busy", 1, 1, "In synthesis.", deadline=now))
        await synthesis.wait_started(1)
        # Queued while the worker is busy: a long reply's late piece, then a piece due sooner.
        await bus.publish(TtsRequest("sess-long", 1, 7, "Due much later.", deadline=now + 30))
        await bus.publish(TtsRequest("sess-soon", 1, 2, "Due soon.", deadline=now + 2))
        await held(runtime, 2)
        synthesis.finish.set()
        await synthesis.wait_started(3)
    assert [r.session_id for r in synthesis.started] == ["sess-busy", "sess-soon", "sess-long"]


async def test_a_draining_worker_hands_its_held_pieces_back_at_once(
    settings: Settings, bus: Bus
) -> None:
    synthesis = Synthesis()
    async with tts_worker(settings, synthesis, prefetch=3) as (runtime, serving):
        await bus.publish(TtsRequest("sess-busy", 1, 0, "In synthesis."))
        await synthesis.wait_started(1)
        for sentence in (1, 2):
            await bus.publish(TtsRequest("sess-held", 1, sentence, f"Held {sentence}."))
        await held(runtime, 2)
        runtime.stopping.set()
        # Another worker gets the held pieces while the first one is still being synthesized.
        channel = await bus.channel(prefetch=10)
        taken: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        queue = await bus.work_queue(channel, Route.TTS_JOBS)
        await queue.consume(taken.put)
        handed_back = []
        for _ in range(2):
            incoming = await asyncio.wait_for(taken.get(), 10)
            handed_back.append(decode_incoming(incoming))
            await incoming.ack()
        assert not serving.done()  # still finishing the piece it had started
        assert len(synthesis.started) == 1
        await channel.close()
    assert sorted(m.sentence for m in handed_back if isinstance(m, TtsRequest)) == [1, 2]
