"""Poison and failing jobs (real RabbitMQ + Redis) end in the dead-letter queue, not in a loop."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage
from prometheus_client import REGISTRY

from fleet import contracts
from fleet.contracts import TtsRequest, TurnRequest
from fleet.settings import Settings
from fleet.state import SessionStore
from fleet.topology import Bus, Route, decode_incoming
from fleet.worker import Runtime, start_runtime

SID = "sess-0123456789"


def dead_lettered_total(queue: str, reason: str) -> float:
    value = REGISTRY.get_sample_value("vf_dead_lettered_total", {"queue": queue, "reason": reason})
    return value or 0.0


@asynccontextmanager
async def llm_worker(
    settings: Settings,
    handler: Callable[[TurnRequest], Awaitable[None]],
    given_up: list[TurnRequest] | None = None,
) -> AsyncIterator[Runtime]:
    """A Runtime serving llm.turns with ``handler``, stopped the way SIGTERM stops it; the jobs
    it gives up on go to ``given_up``."""
    gave_up_on = [] if given_up is None else given_up

    async def gave_up(turn: TurnRequest) -> None:
        gave_up_on.append(turn)

    async with start_runtime(settings, "llm", f"llm-test-{uuid.uuid4().hex[:6]}") as runtime:
        serving = asyncio.create_task(
            runtime.serve_jobs(Route.LLM_TURNS, TurnRequest, handler, 2, gave_up=gave_up)
        )
        try:
            yield runtime
        finally:
            runtime.stopping.set()
            await asyncio.wait_for(serving, timeout=10)


CATCH_UP = "catch-up marker"


async def caught_up_with(bus: Bus, caught_up: asyncio.Event) -> None:
    """Returns once a job published now has been handled: the queue is first in, first out, so
    anything requeued before it (a redelivery that should not happen) has been delivered too."""
    await bus.publish(TurnRequest(SID, 99, CATCH_UP))
    await asyncio.wait_for(caught_up.wait(), timeout=10)


async def publish_raw(bus: Bus, message: aio_pika.Message) -> None:
    channel = await bus.connection.channel(publisher_confirms=True)
    try:
        await channel.default_exchange.publish(message, routing_key=bus.names.llm_turns)
    finally:
        await channel.close()


async def dead_letters(bus: Bus, count: int, wait_s: float = 10.0) -> list[AbstractIncomingMessage]:
    channel = await bus.connection.channel()
    queue = await channel.get_queue(bus.names.dead_letter_queue)
    found: list[AbstractIncomingMessage] = []
    try:
        async with asyncio.timeout(wait_s):
            while len(found) < count:
                incoming = await queue.get(no_ack=True, fail=False)
                if incoming is None:
                    await asyncio.sleep(0.02)
                else:
                    found.append(incoming)
        return found
    finally:
        await channel.close()


async def dead_letter_queue_is_empty(bus: Bus) -> bool:
    channel = await bus.connection.channel()
    try:
        queue = await channel.declare_queue(bus.names.dead_letter_queue, passive=True)
        return queue.declaration_result.message_count == 0
    finally:
        await channel.close()


class TurnsHandled:
    """A worker's turn handler that records what it was given."""

    def __init__(self) -> None:
        self.handled: list[TurnRequest] = []
        self.served = asyncio.Event()

    async def __call__(self, turn: TurnRequest) -> None:
        self.handled.append(turn)
        self.served.set()


async def test_poison_messages_are_dead_lettered_and_the_worker_keeps_serving(
    settings: Settings, bus: Bus, store: SessionStore
) -> None:
    handler = TurnsHandled()

    queue_name = bus.names.llm_turns
    malformed_before = dead_lettered_total(queue_name, "malformed")
    wrong_kind_before = dead_lettered_total(queue_name, "wrong_kind")

    async with llm_worker(settings, handler):
        # A turn.request whose body is not JSON ...
        await publish_raw(
            bus,
            aio_pika.Message(
                b"\x00\x01 definitely not json",
                type="turn.request",
                correlation_id=SID,
                message_id="poison-malformed",
            ),
        )
        # ... and a well-formed message of a kind that does not belong on llm.turns.
        wrong = contracts.encode(TtsRequest(SID, 1, 0, "Hello."))
        await publish_raw(
            bus,
            aio_pika.Message(
                wrong.body,
                headers=wrong.headers,
                type=wrong.kind,
                correlation_id=SID,
                message_id="poison-wrong-kind",
            ),
        )
        # A valid turn afterwards is still served.
        await bus.publish(TurnRequest(SID, 1, "What time is it?"))
        await asyncio.wait_for(handler.served.wait(), timeout=10)

        dead = await dead_letters(bus, 2)

    assert handler.handled == [TurnRequest(SID, 1, "What time is it?")]
    assert {m.message_id for m in dead} == {"poison-malformed", "poison-wrong-kind"}
    for message in dead:
        deaths = message.headers["x-death"]
        assert isinstance(deaths, list)
        death = deaths[0]
        assert isinstance(death, dict)
        assert death["queue"] == queue_name
        assert death["reason"] == "rejected"
    assert dead_lettered_total(queue_name, "malformed") == malformed_before + 1
    assert dead_lettered_total(queue_name, "wrong_kind") == wrong_kind_before + 1


async def test_a_message_without_a_kind_or_session_is_dead_lettered(
    settings: Settings, bus: Bus, store: SessionStore
) -> None:
    async def handler(turn: TurnRequest) -> None:
        raise AssertionError("a poison message reached the handler")

    async with llm_worker(settings, handler):
        await publish_raw(bus, aio_pika.Message(b"{}", message_id="poison-no-type"))
        turn = contracts.encode(TurnRequest(SID, 1, "hi"))
        await publish_raw(
            bus, aio_pika.Message(turn.body, type=turn.kind, message_id="poison-no-session")
        )
        dead = await dead_letters(bus, 2)
    assert {m.message_id for m in dead} == {"poison-no-type", "poison-no-session"}


async def test_a_job_that_always_fails_is_dead_lettered_after_max_deliveries(
    settings: Settings, bus: Bus, store: SessionStore
) -> None:
    attempts: list[TurnRequest] = []
    caught_up = asyncio.Event()

    async def handler(turn: TurnRequest) -> None:
        if turn.text == CATCH_UP:
            caught_up.set()
            return
        attempts.append(turn)
        raise RuntimeError("model server exploded")

    queue_name = bus.names.llm_turns
    before = dead_lettered_total(queue_name, "too_many_deliveries")
    failing = TurnRequest(SID, 1, "This one always fails.")
    given_up: list[TurnRequest] = []

    async with llm_worker(settings, handler, given_up):
        await bus.publish(failing)
        dead = await dead_letters(bus, 1)
        await caught_up_with(bus, caught_up)  # no further redelivery after the dead-lettering

    assert len(attempts) == settings.max_deliveries
    assert all(a == failing for a in attempts)
    assert given_up == [failing]  # so the worker tells the session its reply is missing
    assert decode_incoming(dead[0]) == failing  # intact, so it can be inspected or replayed
    assert dead_lettered_total(queue_name, "too_many_deliveries") == before + 1
    assert await dead_letter_queue_is_empty(bus)


async def test_a_job_that_fails_once_is_retried_and_not_dead_lettered(
    settings: Settings, bus: Bus, store: SessionStore
) -> None:
    attempts: list[TurnRequest] = []
    done = asyncio.Event()

    caught_up = asyncio.Event()

    async def handler(turn: TurnRequest) -> None:
        if turn.text == CATCH_UP:
            caught_up.set()
            return
        attempts.append(turn)
        if len(attempts) == 1:
            raise ConnectionError("model server restarting")
        done.set()

    async with llm_worker(settings, handler):
        await bus.publish(TurnRequest(SID, 2, "Second try works."))
        await asyncio.wait_for(done.wait(), timeout=10)
        await caught_up_with(bus, caught_up)  # and no third try

    assert len(attempts) == 2
    assert await dead_letter_queue_is_empty(bus)


async def test_a_stopping_worker_finishes_the_job_in_hand(
    settings: Settings, bus: Bus, store: SessionStore
) -> None:
    started = asyncio.Event()
    finished: list[int] = []

    async def handler(turn: TurnRequest) -> None:
        started.set()
        await asyncio.sleep(0.5)
        finished.append(turn.turn)

    async with llm_worker(settings, handler) as runtime:
        await bus.publish(TurnRequest(SID, 7, "Slow one."))
        await asyncio.wait_for(started.wait(), timeout=10)
        runtime.stopping.set()  # SIGTERM while the job runs
    assert finished == [7]
    channel = await bus.connection.channel()
    try:
        queue = await channel.declare_queue(bus.names.llm_turns, passive=True)
        assert queue.declaration_result.message_count == 0  # acked, not left for redelivery
    finally:
        await channel.close()


async def test_poison_with_a_forged_x_death_header_is_dead_lettered_without_crashing_the_queue(
    settings: Settings, bus: Bus, store: SessionStore
) -> None:
    """RabbitMQ crashes the queue when it dead-letters a message whose ``x-death`` is not a list
    of tables (found by tests/e2e/test_fuzz.py); the worker puts a copy in the dead letters and
    the queue keeps taking and serving work."""
    handler = TurnsHandled()

    queue_name = bus.names.llm_turns
    forgeries: list[Any] = [[1, 2], "not a list", [{"queue": "q"}, 7]]
    async with llm_worker(settings, handler):
        for index, forged in enumerate(forgeries):
            await publish_raw(
                bus,
                aio_pika.Message(
                    b"not json",
                    headers={"x-death": forged, "turn": 1},
                    type="turn.request",
                    correlation_id=SID,
                    message_id=f"poison-forged-{index}",
                ),
            )
        dead = await dead_letters(bus, 3)
        await bus.publish(TurnRequest(SID, 1, "Still there?"))  # confirmed: the queue is up
        await asyncio.wait_for(handler.served.wait(), timeout=10)

    assert handler.handled == [TurnRequest(SID, 1, "Still there?")]
    assert {m.message_id for m in dead} == {f"poison-forged-{i}" for i in range(3)}
    for message in dead:
        assert message.headers["x-vf-dead-lettered-from"] == queue_name
        assert message.headers["x-vf-dead-letter-reason"] == "malformed"
        assert message.body == b"not json"
