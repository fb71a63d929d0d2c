"""One client connection: wires the WebSocket to the session's uplink, turns and history.

Two tasks per connection: the receive loop (client -> fleet) and the event loop (fleet ->
client). Only the event loop drives the turn machine, so it needs no locks; the receive loop
only hands audio to the uplink.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import ClassVar, assert_never

import structlog
from redis.exceptions import RedisError
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from fleet import telemetry
from fleet.contracts import (
    AssistantDelta,
    AudioOut,
    Message,
    SessionAssigned,
    SessionReleased,
    SessionTakenOver,
    SpeechStarted,
    TranscriptFinal,
    TranscriptPartial,
    TranscriptTentative,
    TurnDone,
    TurnFailed,
    TurnRequest,
)
from fleet.engines import accepted_languages, accepted_voices, voices_source
from fleet.errors import ErrorCode
from fleet.settings import Settings
from fleet.state import secret_hash
from fleet.topology import BrokerUnavailable
from gateway.auth import Authenticator, AuthError
from gateway.history import History
from gateway.hub import BrokerLost, Hub
from gateway.interruptions import Backchannels
from gateway.limits import AudioRate
from gateway.protocol import (
    ClientCommand,
    CloseCode,
    Error,
    ProtocolError,
    Ready,
    ServerEvent,
    Start,
    Stop,
    check_frame,
    parse_text,
)
from gateway.turns import (
    CancelTurn,
    Command,
    ExpectDecision,
    FirstAudio,
    Heard,
    SendAudio,
    SpeculationSettled,
    StartTurn,
    TurnMachine,
)
from gateway.uplink import Uplink

log = structlog.get_logger(__name__)


@dataclass
class _Session:
    id: str
    voice: str
    language: str
    uplink: Uplink
    history: History
    turns: TurnMachine
    # Handed to this connection's client only: what it resumes the session with next time.
    resume_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))


@dataclass(frozen=True, slots=True)
class DecisionDue:
    """Not a wire message: the time for a decision on a paused reply is up (ExpectDecision)."""

    KIND: ClassVar[str] = "decision.due"
    paused_at: float


# What an event other than reply audio counts against VF_SEND_QUEUE_MAX_BYTES.
_EVENT_BYTES = 256


Inbound = Message | BrokerLost | DecisionDue


def _queued_size(message: Inbound) -> int:
    return _EVENT_BYTES + (len(message.pcm) if isinstance(message, AudioOut) else 0)


def _slow_client() -> ProtocolError:
    return ProtocolError(ErrorCode.SLOW_CLIENT, "the client does not read what it is sent")


def _taken_over() -> ProtocolError:
    return ProtocolError(
        ErrorCode.SESSION_TAKEN_OVER, "the session was resumed on another connection"
    )


class ClientConnection:
    def __init__(
        self, websocket: WebSocket, hub: Hub, settings: Settings, auth: Authenticator
    ) -> None:
        self.ws = websocket
        self.hub = hub
        self.settings = settings
        self.auth = auth
        self.stream_id = uuid.uuid4().hex
        self._send_lock = asyncio.Lock()
        # Events for the client, bounded in bytes (VF_SEND_QUEUE_MAX_BYTES): a client that
        # falls further behind is closed rather than buffered for.
        self._inbox: asyncio.Queue[Inbound] = asyncio.Queue()
        self._inbox_bytes = 0
        self._overflowed = False
        self._events: asyncio.Task[None] | None = None
        self._closed = False
        self._errors = 0
        client = websocket.client
        self.address = client.host if client is not None else "unknown"

    # --- sending ------------------------------------------------------------------------------

    async def _send_event(self, event: ServerEvent) -> None:
        if isinstance(event, Error):
            telemetry.CLIENT_ERRORS.labels(event.code).inc()
        await self._send(event.to_json())

    async def _send(self, data: str | bytes) -> None:
        """Send now; a client that does not take it within VF_SEND_TIMEOUT_S is too slow."""
        if self._closed:
            return
        try:
            async with asyncio.timeout(self.settings.send_timeout_s), self._send_lock:
                if isinstance(data, bytes):
                    await self.ws.send_bytes(data)
                else:
                    await self.ws.send_text(data)
        except TimeoutError:
            raise _slow_client() from None
        except (WebSocketDisconnect, RuntimeError, OSError):
            self._closed = True

    def _deliver(self, message: Inbound) -> None:
        """The hub's sink: queue an event for the client, unless it is too far behind."""
        size = _queued_size(message)
        if self._inbox_bytes + size > self.settings.send_queue_max_bytes:
            if not self._overflowed:
                self._overflowed = True
                log.warning("send_queue_full", queued_bytes=self._inbox_bytes)
                # The event loop may be stuck sending to this client: the connection ends now.
                if self._events is not None:
                    self._events.cancel()
            return
        self._inbox_bytes += size
        self._inbox.put_nowait(message)

    async def _fail(self, error: ProtocolError) -> None:
        log.info("client_error", code=error.code, detail=error.message)
        if error.code is ErrorCode.SLOW_CLIENT:
            # Nothing more reaches a client that does not read: the close frame goes out if it
            # reads again within VF_SEND_TIMEOUT_S, else the connection is just dropped.
            telemetry.CLIENT_ERRORS.labels(error.code).inc()
            await self._close(CloseCode.TRY_AGAIN, error.code)
            return
        await self._send_event(Error(error.code, error.message))
        if error.close_code is not None:
            await self._close(error.close_code, error.code)

    async def _refuse(self, error: ProtocolError) -> None:
        """An error the client's input caused: recoverable ones count against the budget."""
        if error.close_code is None:
            self._errors += 1
            if self._errors > self.settings.error_budget:
                error = ProtocolError(
                    ErrorCode.TOO_MANY_ERRORS,
                    f"more than {self.settings.error_budget} bad messages or frames "
                    f"(the last: {error.code})",
                )
        if error.close_code is not None:
            try:
                raise error
            finally:
                # Raised from a local, the error's traceback holds this frame, which holds the
                # error: a cycle keeping the whole connection until the cycle collector runs.
                del error
        await self._fail(error)

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
            # A client that does not read never lets the close frame out: give up after a while.
            try:
                async with asyncio.timeout(self.settings.send_timeout_s):
                    await self.ws.close(code, reason[:120])
            except Exception as exc:  # the client is gone or does not read: nothing to tell it
                log.info("close_not_sent", code=code, error=f"{type(exc).__name__}: {exc}"[:200])

    # --- the connection's life ------------------------------------------------------------------

    async def serve(self) -> None:
        if not self.hub.connections.admit(self.address):
            log.info("connection_refused", address=self.address)
            await self._fail(
                ProtocolError(
                    ErrorCode.TOO_MANY_CONNECTIONS,
                    f"at most {self.settings.max_connections_per_ip} connections per address",
                )
            )
            return
        try:
            await self._serve()
        finally:
            # Released before the close frame goes out: a client that saw its connection closed
            # may open another at once.
            self.hub.connections.release(self.address)
            await self._close(CloseCode.NORMAL)

    async def _serve(self) -> None:
        session: _Session | None = None
        events: asyncio.Task[None] | None = None
        receiving: asyncio.Task[None] | None = None
        try:
            try:
                async with asyncio.timeout(self.settings.start_timeout_s):
                    start = await self._receive_start()
            except TimeoutError:
                raise ProtocolError(
                    ErrorCode.START_TIMEOUT,
                    f"no start message within {self.settings.start_timeout_s:g} s",
                ) from None
            if start is None:
                return
            session = await self._session_for(start)
            await self._check_engines(session)
            audio_rate = AudioRate(
                self.settings.audio_rate, self.settings.audio_burst_s, time.monotonic()
            )
            events = asyncio.create_task(self._event_loop(session), name="session-events")
            self._events = events
            await self._open(session)
            async with asyncio.timeout(self.settings.max_session_s):
                receiving = asyncio.create_task(
                    self._receive_loop(session.uplink, audio_rate), name="session-receive"
                )
                # The connection ends with either: the client leaves (or breaks a limit), or
                # the event loop ends it (taken over, a slow client, the fleet unavailable).
                await asyncio.wait({receiving, events}, return_when=asyncio.FIRST_COMPLETED)
                if self._overflowed:
                    raise _slow_client()
                if receiving.done():
                    receiving.result()
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
            for task in (receiving, events):
                if task is not None and not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            # A finished task keeps its exception, whose traceback holds this frame, which holds
            # the task: a cycle that only the cycle collector frees, and it runs seldom in a big
            # process. Dropped here, the connection (and the audio it kept) is freed at once.
            receiving = events = self._events = None
            if session is not None:
                await self._end(session)

    async def _receive(self) -> bytes | ClientCommand | None:
        """The client's next audio frame or command, None once it has gone."""
        message = await self.ws.receive()
        if message["type"] == "websocket.disconnect":
            return None
        frame: bytes | None = message.get("bytes")
        if frame is not None:
            return frame
        return parse_text(message.get("text") or "", self.settings.max_text_bytes)

    async def _receive_start(self) -> Start | None:
        while True:
            try:
                received = await self._receive()
            except ProtocolError as error:
                await self._refuse(error)
                continue
            if isinstance(received, bytes):
                raise ProtocolError(ErrorCode.NOT_STARTED, "send a start message first")
            if isinstance(received, Stop):
                return None
            return received

    async def _session_for(self, start: Start) -> _Session:
        # Before anything is read or written for the session: a refused client leaves no trace.
        try:
            principal = self.auth.authenticate(start.token)
        except AuthError as refused:
            raise ProtocolError(refused.code, refused.message) from None
        if principal.subject is not None:
            structlog.contextvars.bind_contextvars(subject=principal.subject)
        owned = start.session_id is not None and await self.hub.store.owned_by(
            start.session_id, start.resume_secret
        )
        # An unknown or expired id is not an error: the client gets a new conversation. Nor is
        # another's id without its secret: the client must not learn that the session exists.
        session_id = start.session_id if owned and start.session_id else uuid.uuid4().hex
        structlog.contextvars.bind_contextvars(session_id=session_id)
        language = start.language or self.settings.stt_language
        backchannels = Backchannels.parse(
            self.settings.barge_in_acknowledgements.get(language, ""),
            self.settings.barge_in_decision_s,
            self.settings.barge_in_least_logprob,
        )
        return _Session(
            session_id,
            voice=start.voice or self.settings.tts_voice,
            language=language,
            uplink=Uplink(self.hub.bus, session_id, self.stream_id, self.settings.replay_max_bytes),
            history=History(self.hub.store, self.hub.bus, session_id),
            turns=TurnMachine(backchannels),
        )

    async def _check_engines(self, session: _Session) -> None:
        """Refuse, before anything is written or published, what no engine would accept."""
        languages = accepted_languages(self.settings)
        if session.language not in languages:
            raise ProtocolError(
                ErrorCode.UNSUPPORTED_LANGUAGE,
                f"language {session.language!r} is not supported; use one of: "
                + ", ".join(languages),
            )
        # The voices of the providers the TTS workers speak with now (fleet/engines.py).
        offers = await self.hub.tts_offers.current()
        voices = accepted_voices(self.settings, offers)
        if voices is not None and session.voice not in voices:
            raise ProtocolError(
                ErrorCode.UNKNOWN_VOICE,
                f"unknown voice {session.voice!r}; {voices_source(self.settings, offers)} "
                "offers: " + ", ".join(voices),
            )

    async def _open(self, session: _Session) -> None:
        digest = secret_hash(session.resume_secret)
        resumed = await self.hub.store.open_session(
            session.id, self.hub.gateway_id, self.stream_id, digest
        )
        await self.hub.attach(session.id, self._deliver, self.stream_id, digest)
        if resumed:
            # One live connection per session: an older one, on whichever gateway, ends now.
            await self.hub.bus.publish(SessionTakenOver(session.id, self.stream_id))
        await session.uplink.open(self.hub.gateway_id, session.language)
        try:
            await asyncio.wait_for(session.uplink.wait_owned(), self.settings.assign_timeout_s)
        except TimeoutError:
            raise ProtocolError(
                ErrorCode.BUSY, "no speech recognizer is free; try again shortly"
            ) from None
        await self._send_event(Ready(session.id, resumed, session.resume_secret))
        log.info("session_started", resumed=resumed)

    async def _end(self, session: _Session) -> None:
        await self.hub.detach(session.id, self._deliver)
        # Either of these alone ends the STT lease; one failing must not skip the other.
        with contextlib.suppress(Exception):
            await session.uplink.close()
        with contextlib.suppress(Exception):
            await self.hub.store.end_stream(session.id, self.stream_id)
        with contextlib.suppress(Exception):
            await self._execute(session, session.turns.closed(), time.monotonic())
        log.info("session_ended")

    # --- client -> fleet -----------------------------------------------------------------------

    async def _receive_loop(self, uplink: Uplink, audio_rate: AudioRate) -> None:
        while not self._closed:
            try:
                received = await self._receive()
                if isinstance(received, bytes):
                    check_frame(received, self.settings.max_frame_bytes)
                    if not audio_rate.spend(len(received), time.monotonic()):
                        raise ProtocolError(
                            ErrorCode.AUDIO_TOO_FAST,
                            f"audio is limited to {self.settings.audio_rate:g}x real time; "
                            "send it as it is captured",
                        )
            except ProtocolError as error:
                await self._refuse(error)
                continue
            if received is None or isinstance(received, Stop):
                return
            if isinstance(received, bytes):
                await uplink.send(received)
            else:
                await self._refuse(
                    ProtocolError(ErrorCode.ALREADY_STARTED, "the session is already started")
                )

    # --- fleet -> client -----------------------------------------------------------------------

    async def _event_loop(self, session: _Session) -> None:
        while True:
            if self._overflowed:
                await self._fail(_slow_client())
                return
            message = await self._inbox.get()
            self._inbox_bytes -= _queued_size(message)
            try:
                await self._on_event(session, message)
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

    async def _on_event(self, session: _Session, message: Inbound) -> None:
        now = time.monotonic()
        turns = session.turns
        match message:
            case BrokerLost():
                raise BrokerUnavailable("the connection to the message broker was lost")
            case SessionAssigned(stream_id=stream) if stream == self.stream_id:
                await session.uplink.owner_taken()
            case SessionReleased(stream_id=stream, final=final, reoffer=reoffer) if (
                stream == self.stream_id
            ):
                session.uplink.owner_released(reoffer)
                if final:
                    raise ProtocolError(
                        ErrorCode.STT_UNAVAILABLE,
                        "speech recognition failed for this session; reconnect to start again",
                    )
            case SessionTakenOver(stream_id=stream) if stream != self.stream_id:
                raise _taken_over()
            case SpeechStarted(spoken_s=spoken):
                await self._execute(session, turns.speech_started(now, spoken), now)
            case DecisionDue(paused_at=paused_at):
                await self._execute(session, turns.decision_due(paused_at, now), now)
            case TranscriptPartial(text=text, logprob=logprob):
                await self._execute(session, turns.partial_transcript(text, now, logprob), now)
            case TranscriptTentative(text=text) if self.settings.speculate_turns:
                await self._execute(session, turns.tentative_transcript(text, now), now)
            case TranscriptFinal(text=text, upto_seq=upto, logprob=logprob):
                # A final transcript that reaches this connection after a resume took the session
                # over (before the notice did) is the new connection's: it starts the turn.
                if await self.hub.store.stream_ended(session.id, self.stream_id):
                    raise _taken_over()
                session.uplink.transcribed(upto)
                await self._execute(session, turns.final_transcript(text, now, logprob), now)
            case AssistantDelta(turn=turn, index=index, text=text):
                await self._execute(session, turns.reply_text(turn, index, text), now)
            case AudioOut():
                await self._execute(session, turns.reply_audio(message, now), now)
            case TurnDone(turn=turn, sentences=total):
                await self._execute(session, turns.reply_done(turn, total), now)
            case TurnFailed(turn=turn, code=code, message=text, sentence=sentence):
                await self._execute(
                    session, turns.reply_failed(turn, code, text, sentence, now), now
                )
            case _:
                pass  # another stream's lease events, or nothing a connection acts on

    async def _execute(self, session: _Session, commands: list[Command], now: float) -> None:
        for command in commands:
            match command:
                case ServerEvent():
                    await self._send_event(command)
                case SendAudio(pcm=pcm):
                    await self._send(pcm)
                case StartTurn(text=text, speculative=speculative):
                    number = await self.hub.store.next_turn(session.id)
                    session.turns.turn_started(number, text, now, speculative=speculative)
                    if speculative:
                        log.info("speculation_started", speculative_turn=number)
                    else:
                        structlog.contextvars.bind_contextvars(turn=number)
                    await self.hub.bus.publish(
                        TurnRequest(session.id, number, text, session.voice, session.language)
                    )
                case CancelTurn(turn=turn, unanswered=unanswered, reason=reason):
                    # Only if it is still the session's turn: a newer connection's is not ours.
                    if await self.hub.store.cancel_turn(session.id, turn):
                        log.info(reason, cancelled_turn=turn, unanswered=unanswered)
                case Heard():
                    await session.history.record(command)
                case FirstAudio(waited_s=waited):
                    telemetry.GATEWAY_TTFA.observe(waited)
                case SpeculationSettled(turn=turn, used=used):
                    outcome = "used" if used else "wasted"
                    telemetry.SPECULATIONS.labels(outcome).inc()
                    log.info(f"speculation_{outcome}", speculative_turn=turn)
                    if used:
                        structlog.contextvars.bind_contextvars(turn=turn)
                case ExpectDecision(paused_at=paused_at, within_s=within):
                    asyncio.get_running_loop().call_later(
                        within, self._deliver, DecisionDue(paused_at)
                    )
                case _:
                    assert_never(command)
