"""The broker topology: names, declarations, and where each message kind is routed.

:data:`ROUTES` gives each message kind its route, and :data:`TOPOLOGY` each route its exchange,
routing key, persistence, priority and queue arguments; declaring the topology and publishing
both read them, so a publisher only says *what* it sends. All names carry the settings' namespace
so that several fleets (or test runs) can share one broker without seeing each other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from operator import attrgetter
from typing import Any

import aio_pika
import aiormq
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from aio_pika.robust_connection import RobustConnection
from aiormq.abc import AbstractConnection as AbstractTransportConnection
from yarl import URL

from fleet import contracts
from fleet.contracts import Message
from fleet.settings import Settings

log = structlog.get_logger(__name__)

# After the broker goes away, try again this often (aio-pika's default of 5 s would add up to
# 5 s to every broker restart).
RECONNECT_INTERVAL_S = 1.0
# A publish that has no confirm by then has failed: the connection is gone or hung.
PUBLISH_TIMEOUT_S = 5.0
# A quorum queue whose leader's node was lost nacks publishes until its other members have
# elected a new leader (about a second); a nacked publish is sent again every NACK_PAUSE_S for
# this long before it fails (the message was not taken: sending it again is safe, and a rare
# duplicate is dropped downstream like any redelivery).
NACKED_PUBLISH_PATIENCE_S = 10.0
NACK_PAUSE_S = 0.2
# A connection attempt (TCP, TLS and the AMQP handshake) that has not completed by then has
# failed, and the next attempt goes to the next node: a node whose host is gone answers nothing,
# and without a bound one attempt would wait out the kernel's SYN retries (about two minutes).
CONNECT_TIMEOUT_S = 5.0

# What a publish, ack or reject raises when the connection or its channel is gone.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.ChannelClosed,
    ConnectionError,
    TimeoutError,
)

StateHook = Callable[[], Awaitable[None] | None]


class TopologyMismatch(RuntimeError):
    """A queue exists with other arguments than this version declares (docs/deploy.md)."""


class BrokerUnavailable(ConnectionError):
    """The broker cannot be reached now; the robust connection is trying to reconnect."""


def broker_nodes(settings: Settings) -> list[URL]:
    """The URLs in VF_AMQP_URL (one, or a cluster's nodes comma-separated), with the heartbeat."""
    nodes = []
    for text in settings.amqp_url.split(","):
        url = URL(text.strip())
        if not (url.scheme in ("amqp", "amqps") and url.host):
            raise ValueError(f"VF_AMQP_URL: {text.strip()!r} is not an amqp:// or amqps:// URL")
        if "heartbeat" not in url.query:
            url = url.update_query(heartbeat=settings.amqp_heartbeat_s)
        nodes.append(url)
    return nodes


class NodeListConnection(RobustConnection):
    """A robust connection to one of several broker nodes (a cluster), in turn.

    It starts on ``nodes[first]``; every later connection attempt (after the connection is lost,
    or after an attempt failed) goes to the next node of the list, wrapping around, so a process
    whose node stops reconnects to a survivor in about ``RECONNECT_INTERVAL_S``. aio-pika's
    robust connection clears ``transport`` right before each attempt and then connects to
    ``url``: the hook that moves ``url`` on (tests/chaos/test_node_loss.py fails if a new
    aio-pika stops doing so).
    """

    def __init__(self, nodes: Sequence[URL], first: int, **kwargs: Any) -> None:
        self.nodes = list(nodes)
        self._node = first
        self._attempts = 0
        super().__init__(self.nodes[first], **kwargs)

    @property  # type: ignore[override]
    def transport(self) -> AbstractTransportConnection | None:
        return self._transport

    @transport.setter
    def transport(self, value: AbstractTransportConnection | None) -> None:
        if value is None:
            # Set once by __init__, then before every connection attempt: from the second
            # attempt on, try the next node.
            if self._attempts >= 2:
                self._node = (self._node + 1) % len(self.nodes)
                self.url = self.nodes[self._node]
            self._attempts += 1
        self._transport = value


async def connect_to_nodes(
    nodes: Sequence[URL], client_properties: dict[str, Any]
) -> AbstractRobustConnection:
    """A robust connection to the first of ``nodes`` that answers now (the others are tried
    in turn after it is lost); raises the last node's error if none answers."""
    error: BaseException | None = None
    for first in range(len(nodes)):
        connection = NodeListConnection(
            nodes,
            first,
            client_properties=client_properties,
            reconnect_interval=RECONNECT_INTERVAL_S,
        )
        try:
            # aio-pika keeps this timeout for every reconnection attempt.
            await connection.connect(timeout=CONNECT_TIMEOUT_S)
        except CONNECTION_ERRORS as exc:
            error = exc
            await connection.close()
            continue
        return connection
    assert error is not None
    raise error


class Route(Enum):
    EVENTS = "events"
    AUDIO = "audio"
    STT_SESSIONS = "stt.sessions"
    LLM_TURNS = "llm.turns"
    TTS_JOBS = "tts.jobs"
    TRANSCRIPTS = "transcripts"


ROUTES: dict[type[Message], Route] = {
    contracts.SessionOpen: Route.STT_SESSIONS,
    contracts.AudioChunk: Route.AUDIO,
    contracts.ReplayDone: Route.AUDIO,
    contracts.SessionClose: Route.AUDIO,
    contracts.SessionAssigned: Route.EVENTS,
    contracts.SessionReleased: Route.EVENTS,
    contracts.SessionTakenOver: Route.EVENTS,
    contracts.SpeechStarted: Route.EVENTS,
    contracts.TranscriptPartial: Route.EVENTS,
    contracts.TranscriptTentative: Route.EVENTS,
    contracts.TranscriptFinal: Route.EVENTS,
    contracts.TurnRequest: Route.LLM_TURNS,
    contracts.AssistantDelta: Route.EVENTS,
    contracts.TurnDone: Route.EVENTS,
    contracts.TtsRequest: Route.TTS_JOBS,
    contracts.AudioOut: Route.EVENTS,
    contracts.TurnFailed: Route.EVENTS,
    contracts.ConversationEntry: Route.TRANSCRIPTS,
}

TTS_MAX_PRIORITY = 9


def tts_priority(sentence: int) -> int:
    """The first sentence of a turn is what the user is waiting for: it jumps the queue.

    Only the first sentence is above 4: a quorum queue of RabbitMQ 4 knows two priorities, and
    serves messages above 4 first (docs/deploy.md, "Several RabbitMQ nodes").
    """
    return max(TTS_MAX_PRIORITY - 5 * sentence, 0)


def _sentence_priority(message: Message) -> int:
    sentence: int = attrgetter("sentence")(message)
    return tts_priority(sentence)


class QueueKind(Enum):
    WORK = "work"  # competing consumers; poison goes to the dead letters
    STREAM = "stream"  # an append-only log, replayable by offset, kept for ``transcripts_max_age``


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """Everything the broker needs to know about one route; names are before the namespace.

    A keyed route publishes to the direct ``exchange`` with the value of the message's ``key``
    field as routing key: each consumer binds its own exclusive queue once per key it serves
    (:class:`fleet.inbox.KeyedInbox`). A queue route publishes to the default exchange, so the
    routing key is the name of its durable ``queue``.
    """

    exchange: str = ""
    key: str = ""
    queue: str = ""
    queue_kind: QueueKind = QueueKind.WORK
    # Work whose loss would lose a turn survives a broker restart; audio and events are live only.
    persistent: bool = False
    max_priority: int = 0
    priority: Callable[[Message], int] | None = None
    # Waiting work older than ``work_ttl_s`` is dead-lettered: nobody waits for its answer any
    # more. Not for leases: a redelivered lease keeps its first enqueue time, and would expire
    # instead of moving to another worker.
    expires: bool = False

    def key_of(self, message: Message) -> str:
        return str(getattr(message, self.key))

    def routing_key(self, names: Names, message: Message) -> str:
        return self.key_of(message) if self.key else names.name(self.queue)

    def queue_arguments(self, names: Names, settings: Settings) -> dict[str, Any]:
        if self.queue_kind is QueueKind.STREAM:
            return {"x-queue-type": "stream", "x-max-age": settings.transcripts_max_age}
        # Bounded work (docs/security.md): beyond the length limit the oldest waiting messages
        # are dead-lettered (the default overflow, drop-head). These arguments are part of the
        # queue: docs/deploy.md says how to change them on a running fleet.
        arguments: dict[str, Any] = {
            **work_queue_type_arguments(settings),
            "x-dead-letter-exchange": names.dead_letter_exchange,
            "x-max-length": settings.work_max_length,
        }
        if self.expires:
            arguments["x-message-ttl"] = settings.work_ttl_s * 1000
        # A quorum queue refuses x-max-priority (RabbitMQ 3.x), or needs none (4.x: two levels).
        if self.max_priority and settings.work_queue_type == "classic":
            arguments["x-max-priority"] = self.max_priority
        return arguments


def work_queue_type_arguments(settings: Settings) -> dict[str, Any]:
    """The type argument of every queue whose loss would lose work (VF_WORK_QUEUE_TYPE).

    A classic queue is declared without one, as every version before the setting did, so that
    a running one-node fleet keeps its queues.
    """
    if settings.work_queue_type == "classic":
        return {}
    return {"x-queue-type": settings.work_queue_type}


def dead_letter_queue_arguments(settings: Settings) -> dict[str, Any]:
    # Kept for inspection, bounded so that a flood of poison cannot fill the disk.
    return {
        **work_queue_type_arguments(settings),
        "x-max-length": 100_000,
        "x-message-ttl": 7 * 24 * 3600 * 1000,
    }


TOPOLOGY: dict[Route, RouteSpec] = {
    # Back to the gateway serving the session.
    Route.EVENTS: RouteSpec(exchange="vf.events", key="session_id"),
    # To the STT worker holding the stream's lease.
    Route.AUDIO: RouteSpec(exchange="vf.audio", key="stream_id"),
    Route.STT_SESSIONS: RouteSpec(queue="stt.sessions", persistent=True),
    Route.LLM_TURNS: RouteSpec(queue="llm.turns", persistent=True, expires=True),
    Route.TTS_JOBS: RouteSpec(
        queue="tts.jobs",
        persistent=True,
        expires=True,
        max_priority=TTS_MAX_PRIORITY,
        priority=_sentence_priority,
    ),
    Route.TRANSCRIPTS: RouteSpec(
        queue="vf.transcripts", queue_kind=QueueKind.STREAM, persistent=True
    ),
}


@dataclass(frozen=True, slots=True)
class Names:
    namespace: str = ""

    def name(self, base: str) -> str:
        return f"{self.namespace}.{base}" if self.namespace else base

    def exchange(self, route: Route) -> str:
        return self.name(TOPOLOGY[route].exchange)

    def work_queue(self, route: Route) -> str:
        return self.name(TOPOLOGY[route].queue)

    @property
    def events_exchange(self) -> str:
        return self.exchange(Route.EVENTS)

    @property
    def audio_exchange(self) -> str:
        return self.exchange(Route.AUDIO)

    @property
    def dead_letter_exchange(self) -> str:
        return self.name("vf.dlx")

    @property
    def dead_letter_queue(self) -> str:
        return self.name("vf.dead-letters")

    @property
    def stt_sessions(self) -> str:
        return self.work_queue(Route.STT_SESSIONS)

    @property
    def llm_turns(self) -> str:
        return self.work_queue(Route.LLM_TURNS)

    @property
    def tts_jobs(self) -> str:
        return self.work_queue(Route.TTS_JOBS)

    @property
    def transcripts_stream(self) -> str:
        return self.work_queue(Route.TRANSCRIPTS)

    def gateway_queue(self, gateway_id: str) -> str:
        return self.name(f"gateway.{gateway_id}")

    def stt_queue(self, worker_id: str) -> str:
        return self.name(f"stt.{worker_id}")


class Bus:
    """A robust connection to RabbitMQ with the fleet's topology declared.

    Publishing uses a channel with publisher confirms, so ``publish`` returns once the broker has
    the message, and a ``mandatory`` publish that no queue takes raises ``DeliveryError``.

    Broker restarts: aio-pika's robust connection reconnects (every ``RECONNECT_INTERVAL_S``) and
    re-declares every exchange and queue declared through it, with the bindings made with
    ``queue.bind`` and the consumers made with ``queue.consume``/``queue.iterator``. While it is
    away, :attr:`available` is clear and ``publish`` raises :class:`BrokerUnavailable` at once
    rather than waiting for the reconnection (one that gets no confirm in ``PUBLISH_TIMEOUT_S``
    raises it too; one that is nacked, as by a quorum queue electing a new leader, is sent again
    for up to ``NACKED_PUBLISH_PATIENCE_S``); hooks added with :meth:`on_lost` and
    :meth:`on_restored` run when the connection goes and when it is back with everything restored
    (deliveries received before the loss are void then: the broker redelivers what was unacked).
    """

    def __init__(self, settings: Settings, connection: AbstractRobustConnection) -> None:
        self.settings = settings
        self.names = Names(settings.namespace)
        self.connection = connection
        self._publish_channel: AbstractChannel | None = None
        self._exchanges: dict[Route, AbstractExchange] = {}
        self._dead_letter_exchange: AbstractExchange | None = None
        self.available = asyncio.Event()
        self._lost_hooks: list[StateHook] = []
        self._restored_hooks: list[StateHook] = []
        self._closing = False
        if not connection.is_closed:
            self.available.set()
        connection.close_callbacks.add(self._on_connection_lost)
        connection.reconnect_callbacks.add(self._on_connection_restored)

    @classmethod
    async def connect(cls, settings: Settings, client_name: str) -> Bus:
        connection = await connect_to_nodes(
            broker_nodes(settings), client_properties={"connection_name": client_name}
        )
        bus = cls(settings, connection)
        await bus.declare()
        return bus

    def on_lost(self, hook: StateHook) -> None:
        """Run ``hook`` each time the connection to the broker is lost."""
        self._lost_hooks.append(hook)

    def on_restored(self, hook: StateHook) -> None:
        """Run ``hook`` each time the connection is back and the topology re-declared."""
        self._restored_hooks.append(hook)

    async def _run_hooks(self, hooks: list[StateHook], what: str) -> None:
        for hook in list(hooks):
            try:
                result = hook()
                if result is not None:
                    await result
            except Exception:
                log.exception("broker_hook_failed", hook=what)

    async def _on_connection_lost(self, *_: Any) -> None:
        if self._closing or not self.available.is_set():
            return
        self.available.clear()
        log.warning("broker_connection_lost")
        await self._run_hooks(self._lost_hooks, "lost")

    async def _on_connection_restored(self, *_: Any) -> None:
        if self._closing:
            return
        self.available.set()
        await self._run_hooks(self._restored_hooks, "restored")
        # aio-pika restores every channel, queue, binding and consumer before it calls this, and
        # the hooks mend what it restores wrongly (fleet/inbox.py): from this line on the process
        # is connected as it was before the connection was lost.
        log.info("broker_connection_restored")

    async def declare(self) -> None:
        """Declare the shared topology; idempotent, every process does it at start-up."""
        channel = await self.connection.channel(publisher_confirms=True, on_return_raises=True)
        self._publish_channel = channel
        names = self.names
        dlx = await channel.declare_exchange(
            names.dead_letter_exchange, aio_pika.ExchangeType.FANOUT, durable=True
        )
        dead_letters = await self._declare_durable_queue(
            channel, names.dead_letter_queue, dead_letter_queue_arguments(self.settings)
        )
        await dead_letters.bind(dlx)
        self._dead_letter_exchange = dlx
        exchanges: dict[Route, AbstractExchange] = {}
        for route, spec in TOPOLOGY.items():
            if spec.exchange:
                exchanges[route] = await channel.declare_exchange(
                    names.exchange(route), aio_pika.ExchangeType.DIRECT, durable=True
                )
            else:
                await self._declare_durable_queue(
                    channel, names.work_queue(route), spec.queue_arguments(names, self.settings)
                )
                exchanges[route] = channel.default_exchange
        self._exchanges = exchanges

    async def _declare_durable_queue(
        self, channel: AbstractChannel, name: str, arguments: dict[str, Any]
    ) -> AbstractQueue:
        try:
            return await channel.declare_queue(name, durable=True, arguments=arguments)
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise TopologyMismatch(
                f"queue {name!r} exists with other arguments than {arguments}: it was declared "
                "by another version or with other bounds or type (VF_WORK_TTL_S, "
                'VF_WORK_MAX_LENGTH, VF_WORK_QUEUE_TYPE). See docs/deploy.md, "Changing the '
                f"work queues' bounds\". Broker: {exc}"
            ) from exc

    async def publish(self, message: Message, *, mandatory: bool = False) -> None:
        route = ROUTES[type(message)]
        spec = TOPOLOGY[route]
        envelope = contracts.encode(message)
        amqp_message = aio_pika.Message(
            body=envelope.body,
            headers=envelope.headers,
            content_type=envelope.content_type,
            type=envelope.kind,
            correlation_id=envelope.session_id,
            message_id=envelope.message_id,
            priority=spec.priority(message) if spec.priority else None,
            delivery_mode=(
                aio_pika.DeliveryMode.PERSISTENT
                if spec.persistent
                else aio_pika.DeliveryMode.NOT_PERSISTENT
            ),
        )
        # Fail fast while disconnected. Once reconnected, publish even before every channel is
        # restored: consumers come back during the restore, and their handlers publish (an STT
        # worker announcing a lease it was just given); the publish channel is ready soon after.
        if not self.connection.connected.is_set():
            raise BrokerUnavailable("the message broker is unreachable; reconnecting")
        patience_until = asyncio.get_running_loop().time() + NACKED_PUBLISH_PATIENCE_S
        while True:
            try:
                async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                    await self._exchanges[route].publish(
                        amqp_message,
                        routing_key=spec.routing_key(self.names, message),
                        mandatory=mandatory,
                    )
                return
            except aiormq.exceptions.DeliveryError as exc:
                # Unroutable (mandatory), or nacked for longer than a leader election takes:
                # the broker is there, the caller decides.
                nacked = isinstance(exc.frame, aiormq.spec.Basic.Nack)
                if not nacked or asyncio.get_running_loop().time() > patience_until:
                    raise
                log.warning("publish_nacked", kind=type(message).KIND, retry_in_s=NACK_PAUSE_S)
                await asyncio.sleep(NACK_PAUSE_S)
            except CONNECTION_ERRORS as exc:
                raise BrokerUnavailable(f"publish failed: {type(exc).__name__}: {exc}") from exc

    async def dead_letter_copy(
        self, incoming: AbstractIncomingMessage, queue: str, reason: str
    ) -> None:
        """Put a copy of a delivery in the dead letters (the caller then acks the original).

        For a delivery the broker cannot dead-letter itself: RabbitMQ's own dead-lettering of a
        message whose ``x-death`` header is not a list of tables crashes the queue (found by
        fuzzing, RabbitMQ 3.10), so the copy leaves that header out and says where it came from.
        """
        assert self._dead_letter_exchange is not None, "declare() first"
        headers = {k: v for k, v in (incoming.headers or {}).items() if k != "x-death"}
        origin = {"x-vf-dead-lettered-from": queue, "x-vf-dead-letter-reason": reason}

        def copy(with_headers: dict[str, Any]) -> aio_pika.Message:
            return aio_pika.Message(
                body=incoming.body,
                headers={**with_headers, **origin},
                content_type=incoming.content_type,
                type=incoming.type,
                correlation_id=incoming.correlation_id,
                message_id=incoming.message_id,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )

        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                try:
                    await self._dead_letter_exchange.publish(copy(headers), routing_key="")
                except (TypeError, ValueError, OverflowError):  # headers that cannot go back out
                    await self._dead_letter_exchange.publish(copy({}), routing_key="")
        except CONNECTION_ERRORS as exc:
            raise BrokerUnavailable(f"publish failed: {type(exc).__name__}: {exc}") from exc

    async def channel(self, prefetch: int) -> AbstractChannel:
        channel = await self.connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        return channel

    async def exclusive_queue(self, channel: AbstractChannel, name: str) -> AbstractQueue:
        """A process-owned queue that vanishes with its connection (a keyed inbox's)."""
        return await channel.declare_queue(name, exclusive=True, auto_delete=True)

    async def exchange(self, channel: AbstractChannel, route: Route) -> AbstractExchange:
        return await channel.get_exchange(self.names.exchange(route))

    async def work_queue(self, channel: AbstractChannel, route: Route) -> AbstractQueue:
        return await channel.get_queue(self.names.work_queue(route), ensure=True)

    async def close(self) -> None:
        self._closing = True
        await self.connection.close()


async def settle(action: Awaitable[Any], what: str) -> bool:
    """Ack or reject a delivery; False when its channel is gone (the broker redelivers it)."""
    try:
        await action
    except CONNECTION_ERRORS as exc:
        log.warning("delivery_void", action=what, error=f"{type(exc).__name__}: {exc}")
        return False
    return True


def broker_cannot_dead_letter(incoming: AbstractIncomingMessage) -> bool:
    """Whether the broker would crash dead-lettering this delivery (see Bus.dead_letter_copy)."""
    deaths = (incoming.headers or {}).get("x-death")
    return deaths is not None and not (
        isinstance(deaths, list) and all(isinstance(death, dict) for death in deaths)
    )


def decode_incoming(incoming: AbstractIncomingMessage) -> Message:
    headers: dict[str, Any] = dict(incoming.headers or {})
    return contracts.decode(incoming.type, incoming.correlation_id, incoming.body, headers)
