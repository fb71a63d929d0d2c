"""Work queues are bounded on the real broker: waiting work expires after VF_WORK_TTL_S and beyond
VF_WORK_MAX_LENGTH the oldest is dead-lettered, so a backlog does not answer questions nobody
waits for (docs/security.md, "Bounded work")."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage

from fleet.contracts import SessionOpen, TtsRequest, TurnRequest
from fleet.settings import Settings
from fleet.topology import Bus, TopologyMismatch, decode_incoming

SID = "sess-bounded-1"


@pytest.fixture
def settings() -> Settings:
    """This module's fleet: waiting work expires after 1 s, and at most 2 wait per queue (the
    shared ``bus`` fixture connects with it)."""
    return Settings(
        namespace=f"t{uuid.uuid4().hex[:10]}", log_json=False, work_ttl_s=1, work_max_length=2
    )


class DeadLetters:
    def __init__(self) -> None:
        self.received: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()

    async def next(self) -> tuple[Any, str, str]:
        """The next dead letter: its message, the queue it died in, and why."""
        async with asyncio.timeout(15):
            incoming = await self.received.get()
        deaths: Any = (incoming.headers or {})["x-death"]
        death = deaths[0]
        return decode_incoming(incoming), str(death["queue"]), str(death["reason"])


@pytest.fixture
async def dead_letters(bus: Bus) -> DeadLetters:
    found = DeadLetters()
    channel = await bus.channel(prefetch=0)
    queue = await channel.get_queue(bus.names.dead_letter_queue)
    await queue.consume(found.received.put, no_ack=True)
    return found


async def waiting(bus: Bus, queue: str) -> int:
    channel = await bus.connection.channel()
    try:
        declared = await channel.declare_queue(queue, passive=True)
        return declared.declaration_result.message_count or 0
    finally:
        await channel.close()


async def test_a_turn_nobody_takes_in_time_is_dead_lettered_unanswered(
    bus: Bus, dead_letters: DeadLetters
) -> None:
    await bus.publish(TurnRequest(SID, 1, "hello?"))
    await bus.publish(TtsRequest(SID, 1, 0, "Hello."))

    found = {await dead_letters.next(), await dead_letters.next()}

    assert found == {
        (TurnRequest(SID, 1, "hello?"), bus.names.llm_turns, "expired"),
        (TtsRequest(SID, 1, 0, "Hello."), bus.names.tts_jobs, "expired"),
    }


async def test_beyond_the_length_limit_the_oldest_work_is_dead_lettered(
    bus: Bus, dead_letters: DeadLetters
) -> None:
    # Leases do not expire (a redelivered one keeps its first enqueue time) but are settings.
    for stream in ("s1", "s2", "s3"):
        await bus.publish(SessionOpen(SID, stream, "gateway-1", "en"))
    oldest = await dead_letters.next()
    assert oldest == (
        SessionOpen(SID, "s1", "gateway-1", "en"),
        bus.names.stt_sessions,
        "maxlen",
    )
    assert await waiting(bus, bus.names.stt_sessions) == 2


async def test_a_fleet_of_another_queue_type_stops_with_a_clear_error(
    bus: Bus, settings: Settings
) -> None:
    # The namespace's queues are classic (the bus fixture); a process set to quorum queues
    # (VF_WORK_QUEUE_TYPE) finds them of the wrong type: PRECONDITION_FAILED from the broker.
    quorum = settings.model_copy(update={"work_queue_type": "quorum"})
    with pytest.raises(TopologyMismatch, match="VF_WORK_QUEUE_TYPE"):
        await Bus.connect(quorum, "test-other-type")
    assert await waiting(bus, bus.names.llm_turns) == 0


async def test_a_queue_declared_with_other_bounds_is_a_clear_error(
    bus: Bus, settings: Settings
) -> None:
    other = settings.model_copy(update={"work_max_length": 3})
    with pytest.raises(TopologyMismatch, match=r"docs/deploy\.md"):
        await Bus.connect(other, "test-other-bounds")
    # The queues as they were are untouched.
    assert await waiting(bus, bus.names.llm_turns) == 0
    async with await aio_pika.connect(settings.amqp_url) as connection:
        channel = await connection.channel()
        await channel.declare_queue(bus.names.llm_turns, passive=True)
