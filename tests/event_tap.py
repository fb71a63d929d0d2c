"""A listener on the fleet's event exchange: what the workers said to the gateways, as routed.

Events go to ``vf.events`` with the session id as routing key (docs/architecture.md); a tap is one
more queue bound there, so it sees every event of its sessions exactly as the broker routes them,
duplicates from redelivered jobs included, without taking anything away from a gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage, AbstractQueue

from fleet.contracts import ContractError, Message, TranscriptPartial
from fleet.settings import Settings
from fleet.topology import Bus, Route, decode_incoming

M = TypeVar("M", bound=Message)


class EventTap:
    def __init__(self, channel: AbstractChannel, queue: AbstractQueue, exchange: AbstractExchange):
        self._channel = channel
        self._queue = queue
        self._exchange = exchange
        self.messages: list[Message] = []
        self._changed = asyncio.Condition()

    @classmethod
    async def open(cls, bus: Bus, *session_ids: str) -> EventTap:
        channel = await bus.channel(prefetch=0)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        tap = cls(channel, queue, await bus.exchange(channel, Route.EVENTS))
        for session_id in session_ids:
            await tap.listen(session_id)
        await queue.consume(tap._received, no_ack=True)
        return tap

    async def listen(self, session_id: str) -> None:
        """Also receive the events of ``session_id`` from now on."""
        await self._queue.bind(self._exchange, routing_key=session_id)

    async def _received(self, incoming: AbstractIncomingMessage) -> None:
        try:
            message = decode_incoming(incoming)
        except ContractError:
            return
        async with self._changed:
            self.messages.append(message)
            self._changed.notify_all()

    def of(self, kind: type[M], session_id: str | None = None) -> list[M]:
        return [
            m
            for m in self.messages
            if isinstance(m, kind) and (session_id is None or m.session_id == session_id)
        ]

    async def wait_for(
        self,
        kind: type[M],
        where: Callable[[M], bool] = lambda _: True,
        *,
        timeout: float,  # noqa: ASYNC109 - one deadline per awaited event reads best in callers
    ) -> M:
        """The first event of ``kind`` (received so far or later) for which ``where`` holds."""

        def found() -> M | None:
            return next((m for m in self.of(kind) if where(m)), None)

        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: found() is not None)
        message = found()
        assert message is not None
        return message

    async def wait_for_nth(
        self,
        kind: type[M],
        count: int,
        *,
        timeout: float = 60.0,  # noqa: ASYNC109 - as in wait_for
    ) -> M:
        """The ``count``-th event of ``kind`` (from 1), received so far or later: for kinds whose
        messages are all alike, such as ``speech.started``."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: len(self.of(kind)) >= count)
        return self.of(kind)[count - 1]

    async def caught_up(self, bus: Bus, session_id: str, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Return once every event of ``session_id`` confirmed before the call has arrived.

        A marker published now is queued behind them, and a queue delivers in order.
        """
        marker = TranscriptPartial(session_id, f"tap marker {uuid.uuid4().hex}")
        await bus.publish(marker)
        await self.wait_for(TranscriptPartial, lambda m: m == marker, timeout=timeout)

    async def close(self) -> None:
        await self._channel.close()


@contextlib.asynccontextmanager
async def tapping(settings: Settings, *session_ids: str) -> AsyncIterator[EventTap]:
    """A tap on its own connection to the namespace of ``settings`` (a fleet's, say)."""
    bus = await Bus.connect(settings, f"test-tap-{settings.namespace}")
    try:
        tap = await EventTap.open(bus, *session_ids)
        try:
            yield tap
        finally:
            await tap.close()
    finally:
        await bus.close()
