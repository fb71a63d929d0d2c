"""STT worker: holds sessions by lease, transcribes their audio as it streams.

A session's lease is its ``session.open`` message, kept unacked while this worker holds the
session (see DESIGN.md, "The session lease"): the broker gives a worker no more sessions than its
prefetch, and hands the lease to another worker if this one dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import structlog
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage, AbstractQueue
from redis.exceptions import RedisError

from fleet import telemetry
from fleet.contracts import (
    AudioChunk,
    ContractError,
    Message,
    ReplayDone,
    SessionAssigned,
    SessionClose,
    SessionOpen,
    SessionReleased,
    SpeechStarted,
    TranscriptFinal,
    TranscriptPartial,
)
from fleet.topology import CONNECTION_ERRORS, Route, decode_incoming, prune_bindings, settle
from fleet.worker import Runtime, run_worker
from workers.stt.transcriber import (
    FinalTranscript,
    PartialTranscript,
    StreamingTranscriber,
    SttEngines,
    SttEvent,
)
from workers.stt.transcriber import SpeechStarted as SpeechStartedEvent

log = structlog.get_logger(__name__)

_CLOSE = object()
_MAX_EARLY_FRAMES = 100  # 10 s of 100 ms frames


@dataclass
class HeldSession:
    session_id: str
    stream_id: str
    lease: AbstractIncomingMessage
    transcriber: StreamingTranscriber
    inbox: asyncio.Queue[AudioChunk | object] = field(default_factory=asyncio.Queue)
    last_audio: float = field(default_factory=time.monotonic)
    task: asyncio.Task[None] | None = None
    # Until the gateway's ReplayDone, live frames wait here (see contracts.ReplayDone).
    replay_done: bool = False
    early: list[AudioChunk] = field(default_factory=list)

    def end_replay(self) -> None:
        self.replay_done = True
        for chunk in sorted(self.early, key=lambda c: c.seq):
            self.inbox.put_nowait(chunk)
        self.early.clear()


class SttWorker:
    def __init__(self, runtime: Runtime, engines: SttEngines) -> None:
        self.runtime = runtime
        self.engines = engines
        self.settings = runtime.settings
        self.sessions: dict[str, HeldSession] = {}  # by stream id
        self._audio_queue: AbstractQueue | None = None
        self._audio_exchange: AbstractExchange | None = None

    async def serve(self) -> None:
        bus = self.runtime.bus
        audio_channel = await bus.channel(prefetch=0)
        self._audio_exchange = await bus.exchange(audio_channel, Route.AUDIO)
        self._audio_queue = await bus.exclusive_queue(
            audio_channel, bus.names.stt_queue(self.runtime.worker_id)
        )
        audio_reader = asyncio.create_task(self._read_audio(self._audio_queue))
        bus.on_lost(self._forget_sessions)
        bus.on_restored(lambda: prune_bindings(self._audio_queue, self.sessions))  # type: ignore[arg-type]

        lease_channel = await bus.channel(prefetch=self.settings.stt_max_sessions)
        leases = await bus.work_queue(lease_channel, Route.STT_SESSIONS)
        lease_tag = await leases.consume(self._on_lease)
        self.runtime.consuming.set()
        watchdog = asyncio.create_task(self._release_idle_sessions())
        log.info("serving", max_sessions=self.settings.stt_max_sessions)

        await self.runtime.stopping.wait()
        await leases.cancel(lease_tag)
        await self._drain()
        for task in (watchdog, audio_reader):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await lease_channel.close()
        await audio_channel.close()

    # --- leases -----------------------------------------------------------------------------

    async def _on_lease(self, incoming: AbstractIncomingMessage) -> None:
        try:
            message = decode_incoming(incoming)
            if not isinstance(message, SessionOpen):
                raise ContractError(f"{message.KIND} on the session queue")
        except ContractError as exc:
            await self.runtime.dead_letter(
                incoming.routing_key or "", incoming, "malformed", str(exc)
            )
            return
        session_id, stream_id = message.session_id, message.stream_id
        if stream_id in self.sessions:
            # The broker redelivered a lease this worker still holds on another delivery tag.
            await incoming.ack()
            return
        try:
            current = await self.runtime.store.current_stream(session_id)
        except RedisError as exc:
            # Whether the stream is live cannot be known now: hand the lease back for later.
            log.warning("lease_requeued_redis_unavailable", error=str(exc))
            await asyncio.sleep(1.0)
            await settle(incoming.reject(requeue=True), "requeue lease")
            return
        if current != stream_id:
            # The client is gone (or came back on another stream): the lease must not live on.
            log.info("lease_for_ended_stream_dropped", session_id=session_id)
            await incoming.ack()
            return
        transcriber = StreamingTranscriber(
            self.engines, self.settings, message.language or self.settings.stt_language
        )
        held = HeldSession(session_id, stream_id, incoming, transcriber)
        self.sessions[stream_id] = held
        held.task = asyncio.create_task(self._run_session(held), name=f"stt-{stream_id}")
        telemetry.SESSIONS.set(len(self.sessions))
        assert self._audio_queue is not None and self._audio_exchange is not None
        try:
            await self._audio_queue.bind(self._audio_exchange, routing_key=stream_id)
            await self.runtime.bus.publish(
                SessionAssigned(session_id, stream_id, self.runtime.worker_id)
            )
        except CONNECTION_ERRORS as exc:
            # Not announced, so not held: give the lease back for this or another worker.
            log.warning("lease_not_taken", session_id=session_id, error=str(exc))
            await self._stop_task(held)
            await self._end_session(held, hand_back=True, reason="could not announce")
            return
        log.info("session_held", session_id=session_id, redelivered=incoming.redelivered)

    async def _end_session(self, held: HeldSession, *, hand_back: bool, reason: str) -> None:
        """Stop holding a session: ack its lease when it is over, requeue it to hand it back."""
        if self.sessions.get(held.stream_id) is not held:
            return
        del self.sessions[held.stream_id]
        telemetry.SESSIONS.set(len(self.sessions))
        assert self._audio_queue is not None and self._audio_exchange is not None
        with contextlib.suppress(Exception):
            await self._audio_queue.unbind(self._audio_exchange, routing_key=held.stream_id)
        if hand_back:
            with contextlib.suppress(*CONNECTION_ERRORS):
                await self.runtime.bus.publish(
                    SessionReleased(held.session_id, held.stream_id, self.runtime.worker_id, reason)
                )
            await settle(held.lease.reject(requeue=True), "hand back lease")
        else:
            await settle(held.lease.ack(), "ack lease")
        log.info("session_ended", session_id=held.session_id, reason=reason, handed_back=hand_back)

    # --- audio ------------------------------------------------------------------------------

    async def _read_audio(self, queue: AbstractQueue) -> None:
        """Hands frames to their session's inbox, in the order the broker delivered them.

        Audio is live: a worker that dies loses its queue, and the gateway replays the
        utterance in progress to the next owner, so there is nothing to ack.
        """
        async with queue.iterator(no_ack=True) as frames:
            async for incoming in frames:
                try:
                    message: Message = decode_incoming(incoming)
                except ContractError as exc:
                    telemetry.ERRORS.labels("stt", "malformed_audio").inc()
                    log.warning("malformed_audio_dropped", error=str(exc)[:300])
                    continue
                if not isinstance(message, AudioChunk | ReplayDone | SessionClose):
                    continue
                held = self.sessions.get(message.stream_id)
                if held is None:
                    continue
                if isinstance(message, ReplayDone):
                    held.end_replay()
                elif isinstance(message, SessionClose):
                    held.inbox.put_nowait(_CLOSE)
                else:
                    held.last_audio = time.monotonic()
                    if held.replay_done or message.replayed:
                        held.inbox.put_nowait(message)
                    else:
                        held.early.append(message)
                        if len(held.early) > _MAX_EARLY_FRAMES:
                            # No replay is coming (a gateway too old to send one, say).
                            held.end_replay()

    async def _run_session(self, held: HeldSession) -> None:
        """Feeds one session's frames to its transcriber, strictly in order."""
        with structlog.contextvars.bound_contextvars(session_id=held.session_id):
            try:
                while True:
                    item = await held.inbox.get()
                    if item is _CLOSE:
                        await self._publish(held.session_id, await held.transcriber.flush())
                        await self._end_session(held, hand_back=False, reason="closed")
                        return
                    assert isinstance(item, AudioChunk)
                    if len(item.pcm) % 2:
                        continue
                    async with self.runtime.working():
                        events = await held.transcriber.feed(item.seq, item.pcm)
                    await self._publish(held.session_id, events)
            except asyncio.CancelledError:
                raise
            except Exception:
                telemetry.ERRORS.labels("stt", "session_failed").inc()
                log.exception("session_failed")
                await self._give_up_or_hand_back(held)

    async def _give_up_or_hand_back(self, held: HeldSession) -> None:
        """After a failure another worker may do better, but a stream that keeps failing
        everywhere is poison: its lease goes to the dead letters instead of round and round."""
        try:
            failures = await self.runtime.store.count_delivery(f"stt-failure:{held.stream_id}")
        except RedisError:
            failures = 0
        if failures < self.settings.max_deliveries:
            await self._end_session(held, hand_back=True, reason="error")
            return
        del self.sessions[held.stream_id]
        telemetry.SESSIONS.set(len(self.sessions))
        with contextlib.suppress(*CONNECTION_ERRORS):
            await self.runtime.bus.publish(
                SessionReleased(
                    held.session_id, held.stream_id, self.runtime.worker_id, "failed", final=True
                )
            )
        await self.runtime.dead_letter(
            self.runtime.bus.names.stt_sessions,
            held.lease,
            "too_many_failures",
            f"the stream failed {failures} times",
        )

    async def _publish(self, session_id: str, events: list[SttEvent]) -> None:
        bus = self.runtime.bus
        for event in events:
            if isinstance(event, SpeechStartedEvent):
                await bus.publish(SpeechStarted(session_id))
            elif isinstance(event, PartialTranscript):
                await bus.publish(TranscriptPartial(session_id, event.text))
            elif isinstance(event, FinalTranscript):
                await bus.publish(TranscriptFinal(session_id, event.text, event.upto_seq))

    # --- lifecycle ----------------------------------------------------------------------------

    async def _release_idle_sessions(self) -> None:
        """A lease must not outlive its session: a silent session's gateway may be gone."""
        while True:
            await asyncio.sleep(min(5.0, self.settings.stt_idle_timeout_s / 4))
            deadline = time.monotonic() - self.settings.stt_idle_timeout_s
            for held in list(self.sessions.values()):
                try:
                    if held.last_audio < deadline:
                        reason = "idle"
                    elif await self.runtime.store.stream_ended(held.session_id, held.stream_id):
                        reason = "stream ended"
                    else:
                        continue
                    await self._stop_task(held)
                    await self._end_session(held, hand_back=False, reason=reason)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # Redis or the broker away: try again next round
                    log.warning("idle_check_failed", error=f"{type(exc).__name__}: {exc}")
                    break

    async def _forget_sessions(self) -> None:
        """The broker connection is lost: every lease this worker held is void.

        The broker requeues unacked leases when a channel closes (and keeps them across its own
        restart), so each goes to a worker again, this one included, which takes it as new; the
        gateway meanwhile has told its client (error ``unavailable``). Stop transcribing them.
        """
        if self.sessions:
            log.warning("leases_void_broker_lost", sessions=len(self.sessions))
        for held in list(self.sessions.values()):
            del self.sessions[held.stream_id]
            if held.task is not None:
                held.task.cancel()
        telemetry.SESSIONS.set(len(self.sessions))

    async def _stop_task(self, held: HeldSession) -> None:
        if held.task is not None and held.task is not asyncio.current_task():
            held.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await held.task

    async def _drain(self) -> None:
        """On SIGTERM: hand each session back between utterances, or all of them at the deadline."""
        deadline = time.monotonic() + self.settings.drain_timeout_s
        while self.sessions and time.monotonic() < deadline:
            for held in list(self.sessions.values()):
                if not held.transcriber.in_utterance and held.inbox.empty():
                    await self._stop_task(held)
                    await self._end_session(held, hand_back=True, reason="draining")
            await asyncio.sleep(0.1)
        for held in list(self.sessions.values()):
            await self._stop_task(held)
            await self._end_session(held, hand_back=True, reason="drain deadline")


def run() -> None:
    async def serve(runtime: Runtime) -> None:
        engines = await asyncio.to_thread(SttEngines.load, runtime.settings)
        await SttWorker(runtime, engines).serve()

    run_worker("stt", serve)
