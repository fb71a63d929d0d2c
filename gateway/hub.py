"""The gateway process's side of the fleet: its events queue, Redis, and the live connections.

Every gateway owns one exclusive queue bound to ``vf.events`` once per session it serves; the
hub reads it in delivery order and hands each event to its session's inbox.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import structlog
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

from fleet import telemetry
from fleet.contracts import ContractError, Message
from fleet.settings import Settings
from fleet.state import SessionStore, connect_redis
from fleet.topology import (
    CONNECTION_ERRORS,
    BrokerUnavailable,
    Bus,
    Route,
    decode_incoming,
    prune_bindings,
)

log = structlog.get_logger(__name__)

# How often the hub refreshes its sessions' records in Redis (and re-creates lost ones).
KEEPALIVE_INTERVAL_S = 2.0
# A bind or unbind that takes longer has failed: the broker is unreachable.
BIND_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class BrokerLost:
    """Not a wire message: the hub tells each session that the broker connection was lost.

    Whatever was in flight for the session may be lost with it (events are not persistent, and
    the session's STT lease is void), so the session ends with the error ``unavailable`` and close
    code 1013; the client resumes it by its id once the gateway is ready again.
    """

    session_id: str
    KIND: ClassVar[str] = "broker.lost"


EventSink = Callable[[Message | BrokerLost], None]


class Hub:
    def __init__(self, settings: Settings, gateway_id: str) -> None:
        self.settings = settings
        self.gateway_id = gateway_id
        self.redis = connect_redis(settings)
        self.store = SessionStore(self.redis, settings)
        self._bus: Bus | None = None
        self._channel: AbstractChannel | None = None
        self._events: AbstractQueue | None = None
        self._exchange: AbstractExchange | None = None
        self._sinks: dict[str, EventSink] = {}
        self._streams: dict[str, str] = {}  # session id -> its live stream id on this gateway
        self._reader: asyncio.Task[None] | None = None
        self._keepalive: asyncio.Task[None] | None = None

    @property
    def bus(self) -> Bus:
        if self._bus is None:
            raise RuntimeError("hub is not started")
        return self._bus

    async def start(self) -> None:
        self._bus = await Bus.connect(self.settings, f"voicefleet-{self.gateway_id}")
        self._channel = await self._bus.channel(prefetch=0)
        self._exchange = await self._bus.exchange(self._channel, Route.EVENTS)
        self._events = await self._bus.exclusive_queue(
            self._channel, self._bus.names.gateway_queue(self.gateway_id)
        )
        self._reader = asyncio.create_task(self._read_events(self._events), name="events")
        self._bus.on_lost(self._on_broker_lost)
        self._bus.on_restored(self._on_broker_restored)
        self._keepalive = asyncio.create_task(self._keep_sessions_alive(), name="keepalive")

    async def stop(self) -> None:
        for task in (self._reader, self._keepalive):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._bus is not None:
            await self._bus.close()
        await self.redis.aclose()

    async def ready(self) -> tuple[bool, dict[str, str]]:
        checks: dict[str, str] = {}
        # Connected *and* the topology restored: the robust connection reconnects first and
        # re-declares after, and only then does the bus count as available.
        broker_up = self._bus is not None and self._bus.available.is_set()
        checks["broker"] = "ok" if broker_up else "unreachable"
        try:
            async with asyncio.timeout(2.0):
                await self.redis.ping()
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = f"unreachable: {type(exc).__name__}: {exc}"
        return all(v == "ok" for v in checks.values()), checks

    async def attach(self, session_id: str, sink: EventSink, stream_id: str = "") -> None:
        """Route the session's events to ``sink``; a newer connection of it takes over.

        ``stream_id`` names the connection's stream: the hub keeps the session's record in
        Redis alive while it is attached (and re-creates it if Redis lost it).
        Raises :class:`BrokerUnavailable` when the broker is unreachable.
        """
        assert self._events is not None and self._exchange is not None
        if not self.bus.available.is_set():
            raise BrokerUnavailable("the message broker is unreachable; reconnecting")
        self._sinks[session_id] = sink
        if stream_id:
            self._streams[session_id] = stream_id
        try:
            async with asyncio.timeout(BIND_TIMEOUT_S):
                await self._events.bind(self._exchange, routing_key=session_id)
        except CONNECTION_ERRORS as exc:
            raise BrokerUnavailable(f"bind failed: {type(exc).__name__}: {exc}") from exc
        telemetry.SESSIONS.set(len(self._sinks))

    async def detach(self, session_id: str, sink: EventSink) -> None:
        # ``!=``, not ``is not``: a bound method (``inbox.put_nowait``) is a new object each time
        # it is read, but compares equal to another of the same method and object.
        if self._sinks.get(session_id) != sink:
            return
        del self._sinks[session_id]
        self._streams.pop(session_id, None)
        telemetry.SESSIONS.set(len(self._sinks))
        assert self._events is not None and self._exchange is not None
        if not self.bus.available.is_set():
            return  # the binding is pruned once the broker is back (_on_broker_restored)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(BIND_TIMEOUT_S):
                await self._events.unbind(self._exchange, routing_key=session_id)

    # --- faults -------------------------------------------------------------------------------

    def _on_broker_lost(self) -> None:
        for session_id, sink in list(self._sinks.items()):
            sink(BrokerLost(session_id))

    async def _on_broker_restored(self) -> None:
        if self._events is not None:
            await prune_bindings(self._events, set(self._sinks))

    async def _keep_sessions_alive(self) -> None:
        """Refresh the records of this gateway's live sessions in Redis, re-creating lost ones.

        A Redis restart without persistence forgets every session; without its record, an STT
        worker would take a live session's stream for ended, and a resume would not find it.
        """
        while True:
            await asyncio.sleep(KEEPALIVE_INTERVAL_S)
            for session_id, stream_id in list(self._streams.items()):
                try:
                    if await self.store.keep_alive(session_id, self.gateway_id, stream_id):
                        log.warning("session_record_recreated", session_id=session_id)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("session_keepalive_failed", error=f"{type(exc).__name__}: {exc}")
                    break

    async def _read_events(self, queue: AbstractQueue) -> None:
        # Events are live and only meaningful to this process's connections: nothing to ack.
        async with queue.iterator(no_ack=True) as events:
            async for incoming in events:
                try:
                    message = decode_incoming(incoming)
                except ContractError as exc:
                    telemetry.ERRORS.labels("gateway", "malformed_event").inc()
                    log.warning("malformed_event_dropped", error=str(exc)[:300])
                    continue
                sink = self._sinks.get(message.session_id)
                if sink is not None:
                    sink(message)
