"""The gateway process's side of the fleet: its events queue, Redis, and the live connections.

Every gateway owns one keyed inbox on ``vf.events`` (:class:`fleet.inbox.KeyedInbox`), bound once
per session it serves; each event goes to its session's sink in delivery order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import structlog

from fleet import telemetry
from fleet.contracts import Message, SessionTakenOver
from fleet.inbox import KeyedInbox
from fleet.settings import Settings
from fleet.state import SessionStore, TtsOffers, connect_redis
from fleet.tasks import cancel_and_wait
from fleet.topology import Bus, Route
from gateway.limits import ConnectionsPerAddress

log = structlog.get_logger(__name__)

# How often the hub refreshes its sessions' records in Redis (and re-creates lost ones).
KEEPALIVE_INTERVAL_S = 2.0


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
        # What the TTS workers speak with (their providers, versions, health and voices).
        self.tts_offers = TtsOffers(self.redis, settings)
        self._bus: Bus | None = None
        self._events: KeyedInbox[EventSink] | None = None
        # session id -> its live stream id on this gateway and the hash of its resume secret
        self._streams: dict[str, tuple[str, str]] = {}
        self._keepalive: asyncio.Task[None] | None = None
        # Open connections per client address (VF_MAX_CONNECTIONS_PER_IP).
        self.connections = ConnectionsPerAddress(settings.max_connections_per_ip)

    @property
    def bus(self) -> Bus:
        if self._bus is None:
            raise RuntimeError("hub is not started")
        return self._bus

    async def start(self) -> None:
        self._bus = await Bus.connect(self.settings, f"voicefleet-{self.gateway_id}")
        self._events = KeyedInbox(
            self._bus,
            Route.EVENTS,
            self._bus.names.gateway_queue(self.gateway_id),
            role="gateway",
            malformed="malformed_event",
        )
        await self._events.start()
        self._bus.on_lost(self._on_broker_lost)
        self._keepalive = asyncio.create_task(self._keep_sessions_alive(), name="keepalive")

    async def stop(self) -> None:
        await cancel_and_wait(self._keepalive)
        if self._events is not None:
            await self._events.close()
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

    async def attach(
        self, session_id: str, sink: EventSink, stream_id: str, secret_digest: str
    ) -> None:
        """Route the session's events to ``sink``; a newer connection of it takes over.

        ``stream_id`` names the connection's stream: the hub keeps the session's record in
        Redis alive while it is attached (and re-creates it, with ``secret_digest``, if Redis
        lost it).
        Raises :class:`BrokerUnavailable` when the broker is unreachable.
        """
        assert self._events is not None
        older = self._events.get(session_id)
        if older is not None and older != sink:
            # The inbox hands the session's events to the new sink only, so the broker's takeover
            # notice would never reach an older connection on this gateway: tell it here.
            older(SessionTakenOver(session_id, stream_id))
        self._streams[session_id] = (stream_id, secret_digest)
        try:
            await self._events.add(session_id, sink)
        finally:
            telemetry.SESSIONS.set(len(self._events))

    async def detach(self, session_id: str, sink: EventSink) -> None:
        assert self._events is not None
        if await self._events.remove(session_id, sink):
            self._streams.pop(session_id, None)
            telemetry.SESSIONS.set(len(self._events))

    # --- faults -------------------------------------------------------------------------------

    def _on_broker_lost(self) -> None:
        assert self._events is not None
        for session_id, sink in self._events.items():
            sink(BrokerLost(session_id))

    async def _keep_sessions_alive(self) -> None:
        """Refresh the records of this gateway's live sessions in Redis, re-creating lost ones.

        A Redis restart without persistence forgets every session; without its record, an STT
        worker would take a live session's stream for ended, and a resume would not find it.
        """
        while True:
            await asyncio.sleep(KEEPALIVE_INTERVAL_S)
            for session_id, (stream_id, digest) in list(self._streams.items()):
                try:
                    if await self.store.keep_alive(session_id, self.gateway_id, stream_id, digest):
                        log.warning("session_record_recreated", session_id=session_id)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("session_keepalive_failed", error=f"{type(exc).__name__}: {exc}")
                    break
