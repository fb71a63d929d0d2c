"""STT worker: holds sessions by lease, transcribes their audio as it streams.

A session's lease is its ``session.open`` message, kept unacked while this worker holds the
session (docs/architecture.md, "Streams and leases"): the broker gives a worker no more sessions
than its prefetch, and hands the lease to another worker if this one dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from enum import Enum

import structlog
from aio_pika.abc import AbstractIncomingMessage
from redis.exceptions import RedisError

from fleet import telemetry
from fleet.audio import INPUT_SAMPLE_RATE
from fleet.contracts import (
    AudioChunk,
    Message,
    ReplayDone,
    SessionAssigned,
    SessionClose,
    SessionOpen,
    SessionReleased,
    SpeechStarted,
    TranscriptFinal,
    TranscriptPartial,
    TranscriptTentative,
)
from fleet.inbox import KeyedInbox
from fleet.tasks import cancel_and_wait
from fleet.topology import CONNECTION_ERRORS, Route, settle
from fleet.worker import Runtime, run_worker
from workers.stt.endpointing import StartSpeech
from workers.stt.transcriber import (
    FinalTranscript,
    PartialTranscript,
    StreamingTranscriber,
    SttEngines,
    SttEvent,
    TentativeTranscript,
)

log = structlog.get_logger(__name__)

_CLOSE = object()
_MAX_EARLY_FRAMES = 100  # 10 s of 100 ms frames


class Release(Enum):
    """How a held session ends, and so what becomes of its lease."""

    DONE = "done"  # acked: the stream is over
    IDLE = "idle"  # acked: the stream went silent; its gateway offers it again when audio comes
    HAND_BACK = "hand back"  # requeued, for this or another worker
    POISON = "poison"  # dead-lettered: the stream failed on every worker that tried it
    VOID = "void"  # the broker connection is gone, and the lease with it: nothing to settle


@dataclass(eq=False)
class HeldSession:
    """One stream this worker holds; the sink of its key in the worker's audio inbox."""

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
    # Set when the transcriber has a partial ready: it is published at once, not after the frame
    # being fed, which may wait on the voice and turn detectors and the final's decode.
    partial_ready: asyncio.Event = field(default_factory=asyncio.Event)
    # Partials and the rest of the transcript are published in the order they were taken.
    publishing: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __call__(self, message: Message) -> None:
        """Take one message of the stream's audio route, in the order the broker delivered it."""
        if isinstance(message, ReplayDone):
            self.end_replay()
        elif isinstance(message, SessionClose):
            self.inbox.put_nowait(_CLOSE)
        elif isinstance(message, AudioChunk):
            self.last_audio = time.monotonic()
            if self.replay_done or message.replayed:
                self.inbox.put_nowait(message)
            else:
                self.early.append(message)
                if len(self.early) > _MAX_EARLY_FRAMES:
                    # No replay is coming (a gateway too old to send one, say).
                    self.end_replay()

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
        # Audio is live: a worker that dies loses its queue, and the gateway replays the
        # utterance in progress to the next owner.
        self.sessions: KeyedInbox[HeldSession] = KeyedInbox(
            runtime.bus,
            Route.AUDIO,
            runtime.bus.names.stt_queue(runtime.worker_id),
            role="stt",
            malformed="malformed_audio",
        )

    async def serve(self) -> None:
        await self.sessions.start()
        self.runtime.bus.on_lost(self._forget_sessions)
        watchdog = asyncio.create_task(self._release_idle_sessions())
        try:
            await self.runtime.serve_queue(
                Route.STT_SESSIONS, self.settings.stt_max_sessions, self._on_lease, self._drain
            )
        finally:
            await cancel_and_wait(watchdog)
            await self.sessions.close()

    # --- leases -----------------------------------------------------------------------------

    async def _on_lease(self, incoming: AbstractIncomingMessage) -> None:
        message = await self.runtime.accept(Route.STT_SESSIONS, incoming, SessionOpen)
        if message is None:
            return
        session_id, stream_id = message.session_id, message.stream_id
        if self.sessions.get(stream_id) is not None:
            # The broker redelivered a lease this worker still holds on another delivery tag.
            await settle(incoming.ack(), "ack duplicate lease")
            return
        try:
            current = await self.runtime.store.current_stream(session_id)
        except RedisError as exc:
            # Whether the stream is live cannot be known now.
            await self.runtime.requeue_redis_down(incoming, exc)
            return
        if current != stream_id:
            # The client is gone (or came back on another stream): the lease must not live on.
            log.info("lease_for_ended_stream_dropped", session_id=session_id)
            await settle(incoming.ack(), "ack lease of ended stream")
            return
        partial_ready = asyncio.Event()
        transcriber = StreamingTranscriber(
            self.engines,
            self.settings,
            message.language or self.settings.stt_language,
            partial_ready=partial_ready.set,
        )
        held = HeldSession(
            session_id, stream_id, incoming, transcriber, partial_ready=partial_ready
        )
        held.task = asyncio.create_task(self._run_session(held), name=f"stt-{stream_id}")
        try:
            await self.sessions.add(stream_id, held)
            telemetry.SESSIONS.set(len(self.sessions))
            await self.runtime.bus.publish(
                SessionAssigned(session_id, stream_id, self.runtime.worker_id)
            )
        except CONNECTION_ERRORS as exc:
            # Not announced, so not held: give the lease back for this or another worker.
            log.warning("lease_not_taken", session_id=session_id, error=str(exc))
            await self._release(held, Release.HAND_BACK, "could not announce")
            return
        log.info("session_held", session_id=session_id, redelivered=incoming.redelivered)

    async def _release(
        self, held: HeldSession, how: Release, reason: str, detail: str = ""
    ) -> None:
        """Stop holding a session (once, whoever asks first) and settle its lease ``how``."""
        if not await self.sessions.remove(held.stream_id, held):
            return
        telemetry.SESSIONS.set(len(self.sessions))
        if held.task is not asyncio.current_task():
            await cancel_and_wait(held.task)
        if how in (Release.HAND_BACK, Release.POISON, Release.IDLE):
            # Audio must wait for the next owner, or (final) the stream is over.
            with contextlib.suppress(*CONNECTION_ERRORS):
                await self.runtime.bus.publish(
                    SessionReleased(
                        held.session_id,
                        held.stream_id,
                        self.runtime.worker_id,
                        reason,
                        final=how is Release.POISON,
                        reoffer=how is Release.IDLE,
                    )
                )
        if how in (Release.DONE, Release.IDLE):
            await settle(held.lease.ack(), "ack lease")
        elif how is Release.HAND_BACK:
            await settle(held.lease.reject(requeue=True), "hand back lease")
        elif how is Release.POISON:
            await self.runtime.dead_letter(
                Route.STT_SESSIONS, held.lease, "too_many_failures", detail or reason
            )
        log.info("session_ended", session_id=held.session_id, reason=reason, release=how.value)

    async def _run_session(self, held: HeldSession) -> None:
        """Feeds one session's frames to its transcriber, strictly in order."""
        with structlog.contextvars.bound_contextvars(session_id=held.session_id):
            partials = asyncio.create_task(self._publish_partials(held))
            try:
                while True:
                    item = await held.inbox.get()
                    if item is _CLOSE:
                        await self._publish(held, await held.transcriber.flush())
                        await self._release(held, Release.DONE, "closed")
                        return
                    assert isinstance(item, AudioChunk)
                    if len(item.pcm) % 2:
                        continue
                    async with self.runtime.working():
                        events = await held.transcriber.feed(item.seq, item.pcm)
                    await self._publish(held, events)
            except asyncio.CancelledError:
                raise
            except Exception:
                telemetry.ERRORS.labels("stt", "session_failed").inc()
                log.exception("session_failed")
                await self._give_up_or_hand_back(held)
            finally:
                await cancel_and_wait(partials)

    async def _publish_partials(self, held: HeldSession) -> None:
        while True:
            await held.partial_ready.wait()
            held.partial_ready.clear()
            async with held.publishing:
                try:
                    await self._publish_events(held.session_id, held.transcriber.take_partial())
                except CONNECTION_ERRORS as exc:
                    # A partial is soon outdated anyway; the session's own loop meets the same
                    # broker trouble with its next frame and deals with it.
                    log.warning("partial_not_published", error=str(exc))

    async def _give_up_or_hand_back(self, held: HeldSession) -> None:
        """After a failure another worker may do better, but a stream that keeps failing
        everywhere is poison: its lease goes to the dead letters instead of round and round."""
        try:
            failures = await self.runtime.store.count_delivery(f"stt-failure:{held.stream_id}")
        except RedisError:
            failures = 0
        if failures < self.settings.max_deliveries:
            await self._release(held, Release.HAND_BACK, "error")
        else:
            await self._release(
                held, Release.POISON, "failed", f"the stream failed {failures} times"
            )

    async def _publish(self, held: HeldSession, events: list[SttEvent]) -> None:
        async with held.publishing:
            await self._publish_events(held.session_id, events)

    async def _publish_events(self, session_id: str, events: list[SttEvent]) -> None:
        bus = self.runtime.bus
        for event in events:
            if isinstance(event, StartSpeech):
                await bus.publish(SpeechStarted(session_id, event.voiced / INPUT_SAMPLE_RATE))
            elif isinstance(event, PartialTranscript):
                await bus.publish(TranscriptPartial(session_id, event.text, event.logprob))
            elif isinstance(event, TentativeTranscript):
                await bus.publish(TranscriptTentative(session_id, event.text, event.logprob))
            elif isinstance(event, FinalTranscript):
                await bus.publish(
                    TranscriptFinal(session_id, event.text, event.upto_seq, event.logprob)
                )

    # --- lifecycle ----------------------------------------------------------------------------

    async def _release_idle_sessions(self) -> None:
        """A lease must not outlive its session: a silent session's gateway may be gone."""
        while True:
            await asyncio.sleep(min(5.0, self.settings.stt_idle_timeout_s / 4))
            deadline = time.monotonic() - self.settings.stt_idle_timeout_s
            for held in self.sessions.sinks():
                try:
                    if held.last_audio < deadline:
                        await self._release(held, Release.IDLE, "idle")
                    elif await self.runtime.store.stream_ended(held.session_id, held.stream_id):
                        await self._release(held, Release.DONE, "stream ended")
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
        if len(self.sessions):
            log.warning("leases_void_broker_lost", sessions=len(self.sessions))
        for held in self.sessions.sinks():
            await self._release(held, Release.VOID, "broker lost")

    async def _drain(self) -> None:
        """On SIGTERM: hand each session back between utterances, or all of them at the deadline."""
        deadline = time.monotonic() + self.settings.drain_timeout_s
        while len(self.sessions) and time.monotonic() < deadline:
            for held in self.sessions.sinks():
                if not held.transcriber.in_utterance and held.inbox.empty():
                    await self._release(held, Release.HAND_BACK, "draining")
            await asyncio.sleep(0.1)
        for held in self.sessions.sinks():
            await self._release(held, Release.HAND_BACK, "drain deadline")


def run() -> None:
    async def serve(runtime: Runtime) -> None:
        engines = await asyncio.to_thread(SttEngines.load, runtime.settings)
        try:
            await SttWorker(runtime, engines).serve()
        finally:
            engines.close()

    run_worker("stt", serve)
