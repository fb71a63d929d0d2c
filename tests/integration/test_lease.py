"""The session lease on a real RabbitMQ: an unacked session.open is STT ownership.

A worker consumes ``stt.sessions`` with prefetch = the sessions it can hold and keeps each lease
unacked while it holds the session; the broker does the load balancing and the failover.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aio_pika
import pytest
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage, AbstractQueue

from fleet.contracts import SessionOpen
from fleet.settings import Settings
from fleet.topology import Bus, Names, Route, decode_incoming


class SttLike:
    """Consumes leases on its own connection (so that closing it is a worker dying)."""

    def __init__(self, connection: AbstractConnection, prefetch: int) -> None:
        self.connection = connection
        self.prefetch = prefetch
        self.leases: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self.queue: AbstractQueue | None = None
        self.tag = ""

    @classmethod
    async def start(cls, settings: Settings, prefetch: int) -> SttLike:
        connection = await aio_pika.connect(settings.amqp_url)
        worker = cls(connection, prefetch)
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        queue = await channel.get_queue(Names(settings.namespace).stt_sessions)
        worker.queue = queue
        worker.tag = await queue.consume(worker.leases.put)  # never acked: held
        return worker

    async def stop_taking_leases(self) -> None:
        assert self.queue is not None
        await self.queue.cancel(self.tag)

    async def next_lease(self, wait_s: float = 5.0) -> AbstractIncomingMessage:
        return await asyncio.wait_for(self.leases.get(), wait_s)

    async def gets_nothing(self, wait: float = 0.5) -> bool:
        await asyncio.sleep(wait)
        return self.leases.empty()


@pytest.fixture
async def workers(settings: Settings, bus: Bus) -> AsyncIterator[list[SttLike]]:
    started: list[SttLike] = []
    yield started
    for worker in started:
        with contextlib.suppress(Exception):
            await worker.connection.close()


def lease(session: str) -> SessionOpen:
    return SessionOpen(session, f"stream-of-{session}", "gw-1")


async def test_a_full_worker_gets_no_second_lease_and_another_worker_does(
    settings: Settings, bus: Bus, workers: list[SttLike]
) -> None:
    full = await SttLike.start(settings, prefetch=1)
    workers.append(full)
    await bus.publish(lease("sess-one-1111"))
    held = decode_incoming(await full.next_lease())
    assert held == lease("sess-one-1111")

    await bus.publish(lease("sess-two-2222"))
    assert await full.gets_nothing()  # it holds one session and can hold no more

    spare = await SttLike.start(settings, prefetch=1)
    workers.append(spare)
    assert decode_incoming(await spare.next_lease()) == lease("sess-two-2222")
    assert await full.gets_nothing(wait=0.2)


async def test_a_dead_workers_lease_is_redelivered_to_a_worker_with_room(
    settings: Settings, bus: Bus, workers: list[SttLike]
) -> None:
    doomed = await SttLike.start(settings, prefetch=1)
    workers.append(doomed)
    await bus.publish(lease("sess-one-1111"))
    first = await doomed.next_lease()
    assert not first.redelivered

    survivor = await SttLike.start(settings, prefetch=2)
    workers.append(survivor)
    await bus.publish(lease("sess-two-2222"))
    other = await survivor.next_lease()
    assert decode_incoming(other) == lease("sess-two-2222")
    assert not other.redelivered

    await doomed.connection.close()  # the worker dies: its channel closes with the lease unacked

    taken_over = await survivor.next_lease()
    assert taken_over.redelivered
    assert decode_incoming(taken_over) == lease("sess-one-1111")
    assert taken_over.message_id == first.message_id


async def test_an_acked_lease_is_gone_for_good(
    settings: Settings, bus: Bus, workers: list[SttLike]
) -> None:
    # The holder acks when the session closes: a dying worker must not resurrect it.
    worker = await SttLike.start(settings, prefetch=1)
    workers.append(worker)
    await bus.publish(lease("sess-one-1111"))
    held = await worker.next_lease()
    await held.ack()
    await worker.connection.close()

    other = await SttLike.start(settings, prefetch=1)
    workers.append(other)
    assert await other.gets_nothing()


async def test_a_requeued_lease_moves_to_another_worker(
    settings: Settings, bus: Bus, workers: list[SttLike]
) -> None:
    # Drain: a worker hands a session back (reject with requeue) and stops consuming.
    draining = await SttLike.start(settings, prefetch=1)
    workers.append(draining)
    await bus.publish(lease("sess-one-1111"))
    held = await draining.next_lease()
    fresh = await SttLike.start(settings, prefetch=1)
    workers.append(fresh)

    await draining.stop_taking_leases()  # first stop taking leases, then hand this one back
    await held.reject(requeue=True)

    moved = await fresh.next_lease()
    assert decode_incoming(moved) == decode_incoming(held)
    assert moved.redelivered
    assert await draining.gets_nothing(wait=0.2)
    assert not draining.connection.is_closed  # the draining worker is alive, just not serving


async def test_lease_queue_is_the_work_queue_of_the_topology(bus: Bus) -> None:
    channel = await bus.channel(prefetch=1)
    try:
        queue = await bus.work_queue(channel, Route.STT_SESSIONS)
        assert queue.name == bus.names.stt_sessions
        await bus.publish(lease("sess-one-1111"))
        incoming = await queue.get(timeout=5)
        assert incoming.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        await incoming.reject(requeue=True)
    finally:
        await channel.close()
