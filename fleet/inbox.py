"""A keyed inbox: one process-owned queue on a keyed route, bound once per key the process serves.

A gateway receives the events of the sessions it serves this way (route ``EVENTS``, key = session
id), an STT worker the audio of the streams it holds (route ``AUDIO``, key = stream id). The queue
is read in delivery order and each message is handed to the sink of its key. Nothing is acked:
what travels on these routes is live, and a process that dies loses its queue with its keys.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Generic, TypeVar

import structlog
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

from fleet import telemetry
from fleet.contracts import ContractError, Message
from fleet.tasks import cancel_and_wait
from fleet.topology import (
    CONNECTION_ERRORS,
    ROUTES,
    TOPOLOGY,
    BrokerUnavailable,
    Bus,
    Route,
    decode_incoming,
)

log = structlog.get_logger(__name__)

# A bind or unbind that takes longer has failed: the broker is unreachable.
BIND_TIMEOUT_S = 5.0

Sink = TypeVar("Sink", bound=Callable[[Message], None])


class KeyedInbox(Generic[Sink]):
    """Routes the messages of each key added to the sink it was added with.

    ``role`` and ``malformed`` label what an undecodable delivery counts as in
    ``vf_errors_total``; such deliveries are dropped.
    """

    def __init__(
        self, bus: Bus, route: Route, queue_name: str, *, role: str, malformed: str
    ) -> None:
        if not TOPOLOGY[route].key:
            raise ValueError(f"{route} is not a keyed route")
        self._bus = bus
        self._route = route
        self._queue_name = queue_name
        self._role = role
        self._malformed = malformed
        self._sinks: dict[str, Sink] = {}
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._queue: AbstractQueue | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._channel = await self._bus.channel(prefetch=0)
        self._exchange = await self._bus.exchange(self._channel, self._route)
        self._queue = await self._bus.exclusive_queue(self._channel, self._queue_name)
        self._reader = asyncio.create_task(self._read(self._queue), name=self._queue_name)
        self._bus.on_restored(self._prune_bindings)

    async def close(self) -> None:
        await cancel_and_wait(self._reader)
        if self._channel is not None:
            with contextlib.suppress(*CONNECTION_ERRORS):
                async with asyncio.timeout(BIND_TIMEOUT_S):
                    await self._channel.close()

    def __len__(self) -> int:
        return len(self._sinks)

    def get(self, key: str) -> Sink | None:
        return self._sinks.get(key)

    def items(self) -> list[tuple[str, Sink]]:
        return list(self._sinks.items())

    def sinks(self) -> list[Sink]:
        return list(self._sinks.values())

    async def add(self, key: str, sink: Sink) -> None:
        """Route the key's messages to ``sink``, in place of any earlier sink of the key.

        The sink is registered even when this raises :class:`BrokerUnavailable` (the binding could
        not be made): the caller ends it with :meth:`remove`, as it would a working one.
        """
        self._sinks[key] = sink
        if not self._bus.available.is_set():
            raise BrokerUnavailable("the message broker is unreachable; reconnecting")
        assert self._queue is not None and self._exchange is not None
        try:
            async with asyncio.timeout(BIND_TIMEOUT_S):
                await self._queue.bind(self._exchange, routing_key=key)
        except CONNECTION_ERRORS as exc:
            raise BrokerUnavailable(f"bind failed: {type(exc).__name__}: {exc}") from exc

    async def remove(self, key: str, sink: Sink) -> bool:
        """Stop routing the key to ``sink``; False when the key has another sink now, or none.

        Never raises: a binding that cannot be removed now is pruned once the broker is back.
        """
        # ``!=``, not ``is not``: a bound method (``queue.put_nowait``) is a new object each time
        # it is read, but compares equal to another of the same method and object.
        if self._sinks.get(key) != sink:
            return False
        del self._sinks[key]
        queue, exchange = self._queue, self._exchange
        if self._bus.available.is_set() and queue is not None and exchange is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(BIND_TIMEOUT_S):
                    await queue.unbind(exchange, routing_key=key)
        return True

    async def _prune_bindings(self) -> None:
        """Unbind every routing key that no longer has a sink.

        A robust queue re-creates, after a reconnection, every binding made through it that was
        not unbound; one whose key was removed while the broker was unreachable (its unbind could
        not be sent) would come back.
        """
        queue = self._queue
        remembered = getattr(queue, "_bindings", {})  # aio-pika's RobustQueue binding memory
        for exchange, key in list(remembered):
            if queue is not None and key not in self._sinks:
                try:
                    await queue.unbind(exchange, routing_key=key)
                except CONNECTION_ERRORS as exc:
                    log.warning("stale_binding_kept", key=key, error=str(exc))
                    return

    async def _read(self, queue: AbstractQueue) -> None:
        spec = TOPOLOGY[self._route]
        async with queue.iterator(no_ack=True) as deliveries:
            async for incoming in deliveries:
                try:
                    message = decode_incoming(incoming)
                except ContractError as exc:
                    telemetry.ERRORS.labels(self._role, self._malformed).inc()
                    log.warning(f"{self._malformed}_dropped", error=str(exc)[:300])
                    continue
                if ROUTES[type(message)] is not self._route:
                    continue  # not published on this route: it has no key here
                self._deliver(spec.key_of(message), message)

    def _deliver(self, key: str, message: Message) -> None:
        # Not inlined in the loop above: a local there would keep the last sink (an ended
        # connection, with all it holds) alive until the next event comes.
        sink = self._sinks.get(key)
        if sink is not None:
            sink(message)
