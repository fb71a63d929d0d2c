"""What every worker process shares: start-up, the job loop, poison handling and drain.

A worker is ``consume -> engine -> publish``; this module is the ``consume`` part and the process
around it, so each worker's own module only holds its handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import structlog
from aio_pika.abc import AbstractIncomingMessage
from aio_pika.exceptions import ChannelInvalidStateError
from redis.exceptions import RedisError

from fleet import telemetry
from fleet.contracts import ContractError, Message
from fleet.deadlines import Closed, EarliestFirst, Rank
from fleet.health import HealthState, serve_health
from fleet.settings import Settings, get_settings
from fleet.state import SessionStore, TurnWatch, connect_redis
from fleet.topology import (
    CONNECTION_ERRORS,
    BrokerUnavailable,
    Bus,
    Route,
    broker_cannot_dead_letter,
    decode_incoming,
    settle,
)

log = structlog.get_logger(__name__)

M = TypeVar("M", bound=Message)


@dataclass
class Runtime:
    settings: Settings
    role: str
    worker_id: str
    bus: Bus
    store: SessionStore
    turns: TurnWatch
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    # Set once the worker consumes its queue, which it does only with its models loaded.
    consuming: asyncio.Event = field(default_factory=asyncio.Event)
    # The worker's own readiness checks (fleet/health.py): each returns why it is not ready.
    readiness_checks: list[Callable[[], list[str]]] = field(default_factory=list)
    # The held jobs' line while serve_jobs runs with a rank (fleet/deadlines.py).
    job_gate: EarliestFirst | None = None
    _active: int = 0
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    async def serve_jobs(
        self,
        route: Route,
        expects: type[M],
        handler: Callable[[M], Awaitable[None]],
        concurrency: int,
        gave_up: Callable[[M], Awaitable[None]],
        *,
        prefetch: int = 0,
        rank: Callable[[M, float], Rank] | None = None,
    ) -> None:
        """Consume a work queue until SIGTERM, then finish what is in hand and return.

        ``gave_up`` is called for a job dead-lettered after ``VF_MAX_DELIVERIES`` failed
        attempts: it tells the session what is missing, so that its turn does not wait forever.

        With ``rank`` (given the job and the Unix time it was received), the worker holds up to
        ``prefetch`` deliveries and runs ``concurrency`` of them at once, the smallest rank first
        (fleet/deadlines.py); on SIGTERM the held ones that have not started go back to the
        queue at once, for another worker. Without it every delivery starts as it arrives.
        """
        gate = EarliestFirst(concurrency) if rank is not None else None
        self.job_gate = gate

        async def on_message(incoming: AbstractIncomingMessage) -> None:
            async with self.working():
                await self.handle_job(route, incoming, expects, handler, gave_up, gate, rank)

        async def drain() -> None:
            if gate is not None:
                gate.close()
            await self.drain()

        window = max(prefetch, concurrency) if rank is not None else concurrency
        await self.serve_queue(route, window, on_message, drain)

    async def serve_queue(
        self,
        route: Route,
        prefetch: int,
        on_message: Callable[[AbstractIncomingMessage], Awaitable[None]],
        drain: Callable[[], Awaitable[None]],
    ) -> None:
        """Consume a work queue with ``on_message`` until SIGTERM, then ``drain`` and return."""
        channel = await self.bus.channel(prefetch=prefetch)
        queue = await self.bus.work_queue(channel, route)
        tag = await queue.consume(on_message)
        self.consuming.set()
        log.info("serving", queue=queue.name, prefetch=prefetch)
        await self.stopping.wait()
        try:
            async with asyncio.timeout(5.0):
                await queue.cancel(tag)
        except CONNECTION_ERRORS as exc:
            # The broker is away: nothing more will be delivered on this channel anyway.
            log.warning("cancel_failed", error=f"{type(exc).__name__}: {exc}")
        await drain()
        with contextlib.suppress(*CONNECTION_ERRORS):
            async with asyncio.timeout(5.0):
                await channel.close()

    @contextlib.asynccontextmanager
    async def working(self) -> AsyncIterator[None]:
        """Counts a unit of work in hand, so that drain knows when the process is idle."""
        self._active += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._active -= 1
            if self._active == 0:
                self._idle.set()

    async def drain(self) -> None:
        """Wait for work in hand; what is unfinished at the deadline the broker redelivers."""
        if self._active == 0:
            return
        log.info("draining", jobs=self._active, deadline_s=self.settings.drain_timeout_s)
        try:
            await asyncio.wait_for(self._idle.wait(), self.settings.drain_timeout_s)
        except TimeoutError:
            log.warning("drain_deadline_passed", unfinished=self._active)

    async def accept(
        self, route: Route, incoming: AbstractIncomingMessage, expects: type[M]
    ) -> M | None:
        """The delivery's message; None when it is poison (undecodable or of another kind),
        which is dead-lettered."""
        try:
            message = decode_incoming(incoming)
        except ContractError as exc:
            await self.dead_letter(route, incoming, "malformed", str(exc))
            return None
        if not isinstance(message, expects):
            await self.dead_letter(route, incoming, "wrong_kind", f"{message.KIND} here")
            return None
        return message

    async def requeue_redis_down(self, incoming: AbstractIncomingMessage, exc: RedisError) -> None:
        """Without Redis nothing can be done safely; hand the delivery back rather than hold it."""
        log.warning("job_requeued_redis_unavailable", kind=incoming.type, error=str(exc))
        # Not at once: it would come straight back, and Redis is rarely back within a second.
        await asyncio.sleep(1.0)
        await settle(incoming.reject(requeue=True), "requeue")

    async def handle_job(
        self,
        route: Route,
        incoming: AbstractIncomingMessage,
        expects: type[M],
        handler: Callable[[M], Awaitable[None]],
        gave_up: Callable[[M], Awaitable[None]],
        gate: EarliestFirst | None = None,
        rank: Callable[[M, float], Rank] | None = None,
    ) -> None:
        message = await self.accept(route, incoming, expects)
        if message is None:
            return
        if gate is None or rank is None:
            await self.attempt(route, incoming, message, handler, gave_up)
            return
        try:
            async with gate.slot(rank(message, time.time())):
                if delivery_void(incoming):
                    # The connection was lost while it was held: the broker redelivers it.
                    log.info("held_job_void", kind=incoming.type, session_id=message.session_id)
                    return
                await self.attempt(route, incoming, message, handler, gave_up)
        except Closed:
            # Held, never started, and the worker is draining: another worker takes it now.
            log.info("held_job_handed_back", kind=incoming.type, session_id=message.session_id)
            await settle(incoming.reject(requeue=True), "requeue held job")

    async def attempt(
        self,
        route: Route,
        incoming: AbstractIncomingMessage,
        message: M,
        handler: Callable[[M], Awaitable[None]],
        gave_up: Callable[[M], Awaitable[None]],
    ) -> None:
        """One attempt at a job: counted, dead-lettered past ``VF_MAX_DELIVERIES``, acked when
        done, handed back when it fails."""
        delivery_id = incoming.message_id or hashlib.sha256(incoming.body).hexdigest()
        try:
            deliveries = await self.store.count_delivery(delivery_id)
        except RedisError as exc:
            await self.requeue_redis_down(incoming, exc)
            return
        if deliveries > self.settings.max_deliveries:
            await self.dead_letter(
                route, incoming, "too_many_deliveries", f"{deliveries - 1} attempts failed"
            )
            try:
                await gave_up(message)
            except BrokerUnavailable as exc:
                log.warning("gave_up_not_told", error=str(exc))
            return
        telemetry.JOBS_IN_FLIGHT.inc()
        try:
            with structlog.contextvars.bound_contextvars(
                session_id=message.session_id, turn=getattr(message, "turn", None)
            ):
                await handler(message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            telemetry.ERRORS.labels(self.role, type(exc).__name__).inc()
            log.exception("job_failed", queue=self.bus.names.work_queue(route), attempt=deliveries)
            # If the broker connection is what failed, the delivery is void already and the
            # broker redelivers the job when it is back.
            await settle(incoming.reject(requeue=True), "requeue")
            return
        finally:
            telemetry.JOBS_IN_FLIGHT.dec()
        await settle(incoming.ack(), "ack")

    async def dead_letter(
        self, route: Route, incoming: AbstractIncomingMessage, reason: str, detail: str
    ) -> None:
        queue_name = self.bus.names.work_queue(route)
        telemetry.DEAD_LETTERED.labels(queue_name, reason).inc()
        log.error(
            "dead_lettered",
            queue=queue_name,
            reason=reason,
            detail=detail[:500],
            kind=incoming.type,
            message_id=incoming.message_id,
            session_id=incoming.correlation_id,
        )
        if broker_cannot_dead_letter(incoming):
            try:
                await self.bus.dead_letter_copy(incoming, queue_name, reason)
            except BrokerUnavailable:
                return  # the delivery is void with the connection: the broker redelivers it
            await settle(incoming.ack(), "ack, copied to the dead letters")
            return
        await settle(incoming.reject(requeue=False), "dead-letter")


def delivery_void(incoming: AbstractIncomingMessage) -> bool:
    """Whether the delivery's channel is gone (it can no longer be acked)."""
    try:
        incoming.channel  # noqa: B018 - the property raises once the channel is closed
    except ChannelInvalidStateError:
        return True
    return False


@contextlib.asynccontextmanager
async def start_runtime(settings: Settings, role: str, worker_id: str) -> AsyncIterator[Runtime]:
    bus = await Bus.connect(settings, f"voicefleet-{worker_id}")
    redis_client = connect_redis(settings)
    store = SessionStore(redis_client, settings)
    turns = TurnWatch(store)
    await turns.start()
    runtime = Runtime(settings, role, worker_id, bus, store, turns)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, runtime.stopping.set)
    health = HealthState(
        bus.available,
        runtime.consuming,
        runtime.stopping,
        redis_client,
        runtime.readiness_checks,
    )
    try:
        async with serve_health(health, settings.health_port):
            yield runtime
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await turns.stop()
        await bus.close()
        await redis_client.aclose()


def run_worker(role: str, serve: Callable[[Runtime], Awaitable[None]]) -> None:
    """Process entry point of a worker: logs, metrics, runtime, then ``serve`` until drained."""
    settings = get_settings()
    worker_id = telemetry.configure_logging(settings, role)
    telemetry.serve_metrics(settings)

    async def main() -> None:
        async with start_runtime(settings, role, worker_id) as runtime:
            log.info("worker_started")
            await serve(runtime)
            log.info("worker_stopped")

    asyncio.run(main())
