"""The broker topology: names, declarations, and where each message kind is routed.

One routing table (:data:`ROUTES`) decides where a message goes, so a publisher only says *what*
it sends. All names carry the settings' namespace so that several fleets (or test runs) can share
one broker without seeing each other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from enum import Enum
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

# What a publish, ack or reject raises when the connection or its channel is gone.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.ChannelClosed,
    ConnectionError,
    TimeoutError,
)

StateHook = Callable[[], Awaitable[None] | None]


class BrokerUnavailable(ConnectionError):
    """The broker cannot be reached now; the robust connection is trying to reconnect."""


class Route(Enum):
    EVENTS = "events"  # vf.events, key = session id: back to the session's gateway
    AUDIO = "audio"  # vf.audio, key = stream id: to the STT worker holding the stream's lease
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
    contracts.SpeechStarted: Route.EVENTS,
    contracts.TranscriptPartial: Route.EVENTS,
    contracts.TranscriptFinal: Route.EVENTS,
    contracts.TurnRequest: Route.LLM_TURNS,
    contracts.AssistantDelta: Route.EVENTS,
    contracts.TurnDone: Route.EVENTS,
    contracts.TtsRequest: Route.TTS_JOBS,
    contracts.AudioOut: Route.EVENTS,
    contracts.TurnFailed: Route.EVENTS,
    contracts.ConversationEntry: Route.TRANSCRIPTS,
}

# Work whose loss would lose a turn survives a broker restart; audio and events are live only.
_PERSISTENT: frozenset[type[Message]] = frozenset(
    {
        contracts.SessionOpen,
        contracts.TurnRequest,
        contracts.TtsRequest,
        contracts.ConversationEntry,
    }
)

TTS_MAX_PRIORITY = 9


def tts_priority(sentence: int) -> int:
    """The first sentence of a turn is what the user is waiting for: it jumps the queue."""
    return max(TTS_MAX_PRIORITY - 4 * sentence, 0)


@dataclass(frozen=True, slots=True)
class Names:
    namespace: str = ""

    def _n(self, name: str) -> str:
        return f"{self.namespace}.{name}" if self.namespace else name

    @property
    def events_exchange(self) -> str:
        return self._n("vf.events")

    @property
    def audio_exchange(self) -> str:
        return self._n("vf.audio")

    @property
    def dead_letter_exchange(self) -> str:
        return self._n("vf.dlx")

    @property
    def dead_letter_queue(self) -> str:
        return self._n("vf.dead-letters")

    @property
    def stt_sessions(self) -> str:
        return self._n("stt.sessions")

    @property
    def llm_turns(self) -> str:
        return self._n("llm.turns")

    @property
    def tts_jobs(self) -> str:
        return self._n("tts.jobs")

    @property
    def transcripts_stream(self) -> str:
        return self._n("vf.transcripts")

    def gateway_queue(self, gateway_id: str) -> str:
        return self._n(f"gateway.{gateway_id}")

    def stt_queue(self, worker_id: str) -> str:
        return self._n(f"stt.{worker_id}")

    def work_queue(self, route: Route) -> str:
        return {
            Route.STT_SESSIONS: self.stt_sessions,
            Route.LLM_TURNS: self.llm_turns,
            Route.TTS_JOBS: self.tts_jobs,
            Route.TRANSCRIPTS: self.transcripts_stream,
        }[route]


class Bus:
    """A robust connection to RabbitMQ with the fleet's topology declared.

    Publishing uses a channel with publisher confirms, so ``publish`` returns once the broker has
    the message, and a ``mandatory`` publish that no queue takes raises ``DeliveryError``.

    Broker restarts: aio-pika's robust connection reconnects (every ``RECONNECT_INTERVAL_S``) and
    re-declares every exchange and queue declared through it, with the bindings made with
    ``queue.bind`` and the consumers made with ``queue.consume``/``queue.iterator``. While it is
    away, :attr:`available` is clear and ``publish`` raises :class:`BrokerUnavailable` at once
    rather than waiting for the reconnection (one that gets no confirm in ``PUBLISH_TIMEOUT_S``
    raises it too); hooks added with :meth:`on_lost` and
    :meth:`on_restored` run when the connection goes and when it is back with everything restored
    (deliveries received before the loss are void then: the broker redelivers what was unacked).
    """

    def __init__(self, settings: Settings, connection: AbstractRobustConnection) -> None:
        self.settings = settings
        self.names = Names(settings.namespace)
        self.connection = connection
        self._publish_channel: AbstractChannel | None = None
        self._exchanges: dict[Route, AbstractExchange] = {}
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
        url = URL(settings.amqp_url)
        if "heartbeat" not in url.query:
            url = url.update_query(heartbeat=settings.amqp_heartbeat_s)
        connection = await aio_pika.connect_robust(
            url,
            client_properties={"connection_name": client_name},
            reconnect_interval=RECONNECT_INTERVAL_S,
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
        log.info("broker_connection_restored")
        await self._run_hooks(self._restored_hooks, "restored")

    async def declare(self) -> None:
        """Declare the shared topology; idempotent, every process does it at start-up."""
        channel = await self.connection.channel(publisher_confirms=True, on_return_raises=True)
        self._publish_channel = channel
        names = self.names
        events = await channel.declare_exchange(
            names.events_exchange, aio_pika.ExchangeType.DIRECT, durable=True
        )
        audio = await channel.declare_exchange(
            names.audio_exchange, aio_pika.ExchangeType.DIRECT, durable=True
        )
        dlx = await channel.declare_exchange(
            names.dead_letter_exchange, aio_pika.ExchangeType.FANOUT, durable=True
        )
        dead_letters = await channel.declare_queue(
            names.dead_letter_queue,
            durable=True,
            # Kept for inspection, bounded so that a flood of poison cannot fill the disk.
            arguments={"x-max-length": 100_000, "x-message-ttl": 7 * 24 * 3600 * 1000},
        )
        await dead_letters.bind(dlx)
        dead_lettered = {"x-dead-letter-exchange": names.dead_letter_exchange}
        await channel.declare_queue(names.stt_sessions, durable=True, arguments=dead_lettered)
        await channel.declare_queue(names.llm_turns, durable=True, arguments=dead_lettered)
        await channel.declare_queue(
            names.tts_jobs,
            durable=True,
            arguments={**dead_lettered, "x-max-priority": TTS_MAX_PRIORITY},
        )
        await channel.declare_queue(
            names.transcripts_stream,
            durable=True,
            arguments={
                "x-queue-type": "stream",
                "x-max-age": self.settings.transcripts_max_age,
            },
        )
        self._exchanges = {
            Route.EVENTS: events,
            Route.AUDIO: audio,
            Route.STT_SESSIONS: channel.default_exchange,
            Route.LLM_TURNS: channel.default_exchange,
            Route.TTS_JOBS: channel.default_exchange,
            Route.TRANSCRIPTS: channel.default_exchange,
        }

    async def publish(self, message: Message, *, mandatory: bool = False) -> None:
        route = ROUTES[type(message)]
        envelope = contracts.encode(message)
        if route is Route.EVENTS:
            key = envelope.session_id
        elif isinstance(
            message, contracts.AudioChunk | contracts.ReplayDone | contracts.SessionClose
        ):
            key = message.stream_id
        else:
            key = self.names.work_queue(route)
        priority = None
        if isinstance(message, contracts.TtsRequest):
            priority = tts_priority(message.sentence)
        amqp_message = aio_pika.Message(
            body=envelope.body,
            headers=envelope.headers,
            content_type=envelope.content_type,
            type=envelope.kind,
            correlation_id=envelope.session_id,
            message_id=envelope.message_id,
            priority=priority,
            delivery_mode=(
                aio_pika.DeliveryMode.PERSISTENT
                if type(message) in _PERSISTENT
                else aio_pika.DeliveryMode.NOT_PERSISTENT
            ),
        )
        # Fail fast while disconnected. Once reconnected, publish even before every channel is
        # restored: consumers come back during the restore, and their handlers publish (an STT
        # worker announcing a lease it was just given); the publish channel is ready soon after.
        if not self.connection.connected.is_set():
            raise BrokerUnavailable("the message broker is unreachable; reconnecting")
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                await self._exchanges[route].publish(
                    amqp_message, routing_key=key, mandatory=mandatory
                )
        except aiormq.exceptions.DeliveryError:
            raise  # unroutable (mandatory) or nacked: the broker is there, the caller decides
        except CONNECTION_ERRORS as exc:
            raise BrokerUnavailable(f"publish failed: {type(exc).__name__}: {exc}") from exc

    async def channel(self, prefetch: int) -> AbstractChannel:
        channel = await self.connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        return channel

    async def exclusive_queue(self, channel: AbstractChannel, name: str) -> AbstractQueue:
        """A process-owned queue that vanishes with its connection (gateway events, STT audio)."""
        return await channel.declare_queue(name, exclusive=True, auto_delete=True)

    async def exchange(self, channel: AbstractChannel, route: Route) -> AbstractExchange:
        name = {Route.EVENTS: self.names.events_exchange, Route.AUDIO: self.names.audio_exchange}[
            route
        ]
        return await channel.get_exchange(name)

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


def decode_incoming(incoming: AbstractIncomingMessage) -> Message:
    headers: dict[str, Any] = dict(incoming.headers or {})
    return contracts.decode(incoming.type, incoming.correlation_id, incoming.body, headers)


async def prune_bindings(queue: AbstractQueue, keep: Collection[str]) -> None:
    """Unbind every routing key of ``queue`` that is not in ``keep``.

    A robust queue re-creates, after a reconnection, every binding made through it that was not
    unbound; one whose owner went away while the broker was unreachable (its unbind could not
    be sent) would come back. Called from an ``on_restored`` hook, this drops those.
    """
    remembered = getattr(queue, "_bindings", {})  # aio-pika's RobustQueue binding memory
    for exchange, key in list(remembered):
        if key not in keep:
            try:
                await queue.unbind(exchange, routing_key=key)
            except CONNECTION_ERRORS as exc:
                log.warning("stale_binding_kept", key=key, error=str(exc))
                return
