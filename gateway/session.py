"""One client connection: the WebSocket on one side, the fleet on the other.

Two tasks per connection: the receive loop (client -> fleet) and the event loop (fleet ->
client). All turn state is touched only by the event loop, so it needs no locks; the receive loop
only publishes audio and keeps the utterance in progress for replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from collections import deque
from dataclasses import dataclass

import structlog
from aio_pika.exceptions import DeliveryError
from redis.exceptions import RedisError
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from fleet import telemetry
from fleet.audio import INPUT_SAMPLE_RATE, OUTPUT_SAMPLE_RATE
from fleet.contracts import (
    AssistantDelta,
    AudioChunk,
    AudioOut,
    ConversationEntry,
    Message,
    ReplayDone,
    SessionAssigned,
    SessionClose,
    SessionOpen,
    SessionReleased,
    SpeechStarted,
    TranscriptFinal,
    TranscriptPartial,
    TurnDone,
    TurnFailed,
    TurnRequest,
)
from fleet.errors import ErrorCode
from fleet.settings import Settings
from fleet.state import Exchange
from fleet.topology import BrokerUnavailable
from gateway.hub import BrokerLost, Hub
from gateway.playback import ReplyAssembler
from gateway.protocol import (
    AssistantText,
    AudioCancel,
    AudioEnd,
    AudioStart,
    CloseCode,
    Error,
    ProtocolError,
    Ready,
    ServerEvent,
    Start,
    Stop,
    Transcript,
    check_frame,
    parse_text,
)

log = structlog.get_logger(__name__)

# The utterance in progress is kept for replay to a new STT owner; beyond this it is dropped
# from the front (a single utterance this long is not a conversation turn).
_MAX_REPLAY_SECONDS = 60.0


@dataclass
class _Turn:
    number: int
    user_text: str
    requested_at: float
    reply: ReplyAssembler
    first_audio_at: float | None = None
    recorded: bool = False
    next_delta: int = 0

    def seconds_played(self, now: float) -> float:
        if self.first_audio_at is None:
            return 0.0
        return min(now - self.first_audio_at, self.reply.seconds_emitted)

    def still_playing(self, now: float) -> bool:
        """Whether the user may still be hearing (or waiting for) this reply."""
        if not self.reply.complete:
            return True
        return self.first_audio_at is not None and now < self.first_audio_at + (
            self.reply.seconds_emitted
        )


class ClientConnection:
    def __init__(self, websocket: WebSocket, hub: Hub, settings: Settings) -> None:
        self.ws = websocket
        self.hub = hub
        self.settings = settings
        self.session_id = ""
        self.stream_id = uuid.uuid4().hex
        self.voice = settings.tts_voice
        self.language = settings.stt_language
        self._send_lock = asyncio.Lock()
        self._inbox: asyncio.Queue[Message | BrokerLost] = asyncio.Queue()
        self._assigned = asyncio.Event()
        self._seq = 0
        self._replay: deque[AudioChunk] = deque()
        # The STT owner ignores frames older than the newest it has seen, so a replay and live
        # frames must never interleave: both publish under this lock.
        self._audio_lock = asyncio.Lock()
        self._turn: _Turn | None = None
        # The request of a turn cut off before any of its reply played: the user paused
        # mid-request and went on. The next turn answers it together with what followed.
        self._unanswered = ""
        self._closed = False

    # --- sending ------------------------------------------------------------------------------

    async def _send_event(self, event: ServerEvent) -> None:
        if isinstance(event, Error):
            telemetry.CLIENT_ERRORS.labels(event.code).inc()
        await self._send(event.to_json())

    async def _send(self, data: str | bytes) -> None:
        if self._closed:
            return
        async with self._send_lock:
            try:
                if isinstance(data, bytes):
                    await self.ws.send_bytes(data)
                else:
                    await self.ws.send_text(data)
            except (WebSocketDisconnect, RuntimeError, OSError):
                self._closed = True

    async def _fail(self, error: ProtocolError) -> None:
        log.info("client_error", code=error.code, detail=error.message)
        await self._send_event(Error(error.code, error.message))
        if error.close_code is not None:
            await self._close(error.close_code, error.code)

    async def _unavailable(self, exc: Exception) -> None:
        """The broker or Redis is away: what is in flight may be lost, so say so and close (1013).

        The client resumes the session by its id once the gateway is ready again.
        """
        log.warning("fleet_unavailable", error=f"{type(exc).__name__}: {exc}"[:300])
        await self._fail(
            ProtocolError(
                ErrorCode.UNAVAILABLE,
                "the service lost its message broker or session store; reconnect shortly and"
                " resume with your sessionId",
            )
        )

    async def _close(self, code: CloseCode, reason: str = "") -> None:
        if self._closed:
            return
        self._closed = True
        if self.ws.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await self.ws.close(code, reason[:120])

    # --- the connection's life ------------------------------------------------------------------

    async def serve(self) -> None:
        events: asyncio.Task[None] | None = None
        try:
            start = await self._receive_start()
            if start is None:
                return
            events = asyncio.create_task(self._event_loop(), name="session-events")
            await self._open(start)
            async with asyncio.timeout(self.settings.max_session_s):
                await self._receive_loop()
        except ProtocolError as error:
            await self._fail(error)
        except (BrokerUnavailable, RedisError) as exc:
            await self._unavailable(exc)
        except TimeoutError:
            await self._fail(
                ProtocolError(ErrorCode.SESSION_EXPIRED, "the session reached its time limit")
            )
        except Exception:
            log.exception("connection_failed")
            await self._fail(ProtocolError(ErrorCode.INTERNAL, "internal error"))
        finally:
            if events is not None:
                events.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await events
            await self._end()

    async def _receive_start(self) -> Start | None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return None
            if message.get("bytes") is not None:
                raise ProtocolError(ErrorCode.NOT_STARTED, "send a start message first")
            try:
                command = parse_text(message.get("text") or "", self.settings.max_text_bytes)
            except ProtocolError as error:
                if error.close_code is not None:
                    raise
                await self._fail(error)
                continue
            if isinstance(command, Stop):
                await self._close(CloseCode.NORMAL, "stopped")
                return None
            return command

    async def _open(self, start: Start) -> None:
        if self.settings.auth_token and start.token != self.settings.auth_token:
            raise ProtocolError(ErrorCode.UNAUTHORIZED, "missing or wrong token")
        known = start.session_id is not None and await self.hub.store.exists(start.session_id)
        # An unknown or expired id is not an error: the client gets a new conversation.
        self.session_id = start.session_id if known and start.session_id else uuid.uuid4().hex
        self.voice = start.voice or self.settings.tts_voice
        self.language = start.language or self.settings.stt_language
        structlog.contextvars.bind_contextvars(session_id=self.session_id)
        resumed = await self.hub.store.open_session(
            self.session_id, self.hub.gateway_id, self.stream_id
        )
        await self.hub.attach(self.session_id, self._inbox.put_nowait, self.stream_id)
        await self.hub.bus.publish(
            SessionOpen(self.session_id, self.stream_id, self.hub.gateway_id, self.language)
        )
        try:
            await asyncio.wait_for(self._assigned.wait(), self.settings.assign_timeout_s)
        except TimeoutError:
            raise ProtocolError(
                ErrorCode.BUSY, "no speech recognizer is free; try again shortly"
            ) from None
        await self._send_event(Ready(self.session_id, resumed))
        log.info("session_started", resumed=resumed)

    async def _end(self) -> None:
        if self.session_id:
            await self.hub.detach(self.session_id, self._inbox.put_nowait)
            # Either of these alone ends the STT lease; one failing must not skip the other.
            with contextlib.suppress(Exception):
                await self.hub.bus.publish(SessionClose(self.session_id, self.stream_id))
            with contextlib.suppress(Exception):
                await self.hub.store.end_stream(self.session_id, self.stream_id)
            if self._turn is not None and not self._turn.recorded:
                with contextlib.suppress(Exception):
                    await self._record_turn(self._turn, interrupted=True)
            log.info("session_ended")
        await self._close(CloseCode.NORMAL)

    # --- client -> fleet -----------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        while not self._closed:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            frame = message.get("bytes")
            if frame is not None:
                try:
                    check_frame(frame, self.settings.max_frame_bytes)
                except ProtocolError as error:
                    await self._fail(error)
                    continue
                await self._on_audio(frame)
                continue
            try:
                command = parse_text(message.get("text") or "", self.settings.max_text_bytes)
            except ProtocolError as error:
                await self._fail(error)
                continue
            if isinstance(command, Stop):
                return
            await self._fail(
                ProtocolError(ErrorCode.ALREADY_STARTED, "the session is already started")
            )

    async def _on_audio(self, pcm: bytes) -> None:
        async with self._audio_lock:
            self._seq += 1
            chunk = AudioChunk(self.session_id, self.stream_id, self._seq, pcm)
            self._replay.append(chunk)
            max_frames = int(_MAX_REPLAY_SECONDS * INPUT_SAMPLE_RATE * 2 / max(len(pcm), 1))
            while len(self._replay) > max_frames:
                self._replay.popleft()
            if self._assigned.is_set():
                await self._publish_audio(chunk)

    async def _publish_audio(self, chunk: AudioChunk) -> bool:
        try:
            await self.hub.bus.publish(chunk, mandatory=True)
        except DeliveryError:
            # Nobody holds the stream (its worker died): keep the audio, wait for the new owner.
            if self._assigned.is_set():
                log.warning("stt_owner_lost")
            self._assigned.clear()
            return False
        return True

    async def _take_owner(self) -> None:
        """A worker holds the stream now: send it the utterance in progress, then go live."""
        async with self._audio_lock:
            self._assigned.set()
            for chunk in list(self._replay):
                if not await self._publish_audio(dataclasses.replace(chunk, replayed=True)):
                    return
            with contextlib.suppress(DeliveryError):
                await self.hub.bus.publish(
                    ReplayDone(self.session_id, self.stream_id), mandatory=True
                )

    # --- fleet -> client -----------------------------------------------------------------------

    async def _event_loop(self) -> None:
        while True:
            message = await self._inbox.get()
            try:
                await self._on_event(message)
            except asyncio.CancelledError:
                raise
            except (BrokerUnavailable, RedisError) as exc:
                await self._unavailable(exc)
                return
            except ProtocolError as error:
                await self._fail(error)
                return
            except Exception:
                log.exception("event_failed", kind=message.KIND)

    async def _on_event(self, message: Message | BrokerLost) -> None:
        turn = self._turn
        now = time.monotonic()
        match message:
            case BrokerLost():
                raise BrokerUnavailable("the connection to the message broker was lost")
            case SessionAssigned(stream_id=stream) if stream == self.stream_id:
                await self._take_owner()
            case SessionReleased(stream_id=stream, final=final) if stream == self.stream_id:
                self._assigned.clear()
                if final:
                    raise ProtocolError(
                        ErrorCode.STT_UNAVAILABLE,
                        "speech recognition failed for this session; reconnect to start again",
                    )
            case SpeechStarted() if turn is not None and turn.still_playing(now):
                await self._barge_in(turn, now)
            case TranscriptPartial(text=text):
                if turn is not None and text.strip() and turn.still_playing(now):
                    await self._barge_in(turn, now)
                await self._send_event(Transcript(text, final=False))
            case TranscriptFinal(text=text, upto_seq=upto):
                while self._replay and self._replay[0].seq <= upto:
                    self._replay.popleft()
                said = text.strip()
                # A cancel precedes the transcript that caused it, as it does for partials.
                if said and turn is not None and turn.still_playing(now):
                    await self._barge_in(turn, now)
                await self._send_event(Transcript(text, final=True))
                # Speech that had no words (a cough) cut a request off: it is answered still.
                if said or self._unanswered:
                    await self._start_turn(said, now)
            case AssistantDelta(turn=number, index=index, text=text) if (
                turn and number == turn.number and index >= turn.next_delta
            ):
                # A retried turn (its LLM worker died) streams from the start again.
                turn.next_delta = index + 1
                await self._send_event(AssistantText(text, number))
            case AudioOut(turn=number) if turn and number == turn.number:
                for chunk in turn.reply.add(message):
                    if turn.first_audio_at is None:
                        turn.first_audio_at = time.monotonic()
                        telemetry.GATEWAY_TTFA.observe(turn.first_audio_at - turn.requested_at)
                        await self._send_event(AudioStart(OUTPUT_SAMPLE_RATE, number))
                    if chunk.pcm:
                        await self._send(chunk.pcm)
                await self._finish_if_complete(turn)
            case TurnDone(turn=number, sentences=total) if turn and number == turn.number:
                turn.reply.finish(total)
                await self._finish_if_complete(turn)
            case TurnFailed(turn=number, code=code, message=text) if turn and number == turn.number:
                # Workers send ErrorCode values only; any other code raises here (a bug to log),
                # so a client is never sent an undocumented code.
                await self._send_event(Error(ErrorCode(code), text))
            case _:
                pass  # an event of an older turn or stream: stale, never forwarded

    async def _start_turn(self, said: str, now: float) -> None:
        user_text = f"{self._unanswered} {said}".strip()
        self._unanswered = ""
        number = await self.hub.store.next_turn(self.session_id)
        self._turn = _Turn(number, user_text, now, ReplyAssembler(number))
        structlog.contextvars.bind_contextvars(turn=number)
        await self.hub.bus.publish(
            TurnRequest(self.session_id, number, user_text, self.voice, self.language)
        )

    async def _finish_if_complete(self, turn: _Turn) -> None:
        if not turn.reply.complete or turn.recorded:
            return
        # Recorded first: once the client hears the turn ended, its history holds it, even if
        # this gateway dies the next moment and the client resumes elsewhere.
        await self._record_turn(turn, interrupted=False)
        if turn.first_audio_at is not None:
            await self._send_event(AudioEnd(turn.number))

    async def _barge_in(self, turn: _Turn, now: float) -> None:
        """The user spoke over the reply: stop it everywhere, keep what was actually heard."""
        self._turn = None
        await self.hub.store.next_turn(self.session_id)
        unanswered = turn.first_audio_at is None
        if unanswered:
            self._unanswered = turn.user_text
        else:
            # A reply fully sent may still be playing: what was heard replaces what was recorded.
            await self._record_turn(turn, interrupted=True, heard_seconds=turn.seconds_played(now))
        await self._send_event(AudioCancel(turn.number))
        log.info("barge_in", cancelled_turn=turn.number, unanswered=unanswered)

    async def _record_turn(
        self, turn: _Turn, *, interrupted: bool, heard_seconds: float | None = None
    ) -> None:
        correction = turn.recorded
        turn.recorded = True
        seconds = turn.reply.seconds_emitted if heard_seconds is None else heard_seconds
        spoken = turn.reply.spoken_text(seconds)
        await self.hub.store.record_exchange(
            self.session_id, Exchange(turn.user_text, spoken, interrupted), replaces_last=correction
        )
        if not correction:
            await self.hub.bus.publish(
                ConversationEntry(self.session_id, turn.number, "user", turn.user_text, interrupted)
            )
        await self.hub.bus.publish(
            ConversationEntry(self.session_id, turn.number, "assistant", spoken, interrupted)
        )
