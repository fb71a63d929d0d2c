"""The message contract of the fleet: one frozen dataclass per message kind, defined once.

Every message on the broker is one of these. On the wire (docs/architecture.md, "Messages"):
- the AMQP ``type`` property is the kind, ``correlation_id`` the session id, ``message_id`` unique;
- a message with a binary payload (audio) sends the payload as the raw body and its other fields
  as headers, never base64;
- any other message sends its fields as a JSON body;
- ``turn`` and ``seq``-like integers are also copied into the headers so that routing and
  inspection tools can read them without parsing bodies.

This module knows nothing about aio-pika: it turns messages into an :class:`Envelope` and back,
so that it can be tested without a broker.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeAlias

from pydantic import TypeAdapter, ValidationError

from fleet.audio import INPUT_SAMPLE_RATE
from fleet.errors import ErrorCode


class ContractError(ValueError):
    """A message that does not follow the contract (a poison message)."""


@dataclass(frozen=True, slots=True)
class Envelope:
    """What travels on the broker: body, headers and the standard properties."""

    kind: str
    session_id: str
    body: bytes
    headers: dict[str, Any]
    message_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    content_type: str = "application/json"


# --- gateway <-> STT -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionOpen:
    """The lease of one audio stream of a session, held unacked by the STT worker that owns it.

    A stream is one client connection: a client that reconnects (to any gateway) opens a new
    stream of the same session, so the old owner's lease lapses by its idle timeout and two
    workers never receive the same audio.
    """

    KIND: ClassVar[str] = "session.open"
    session_id: str
    stream_id: str
    gateway_id: str
    language: str = "en"
    sample_rate: int = INPUT_SAMPLE_RATE


@dataclass(frozen=True, slots=True)
class SessionAssigned:
    KIND: ClassVar[str] = "session.assigned"
    session_id: str
    stream_id: str
    worker_id: str


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """16 kHz PCM16 LE mono from the user; ``seq`` increases by one per frame of a stream."""

    KIND: ClassVar[str] = "audio.chunk"
    PAYLOAD: ClassVar[str] = "pcm"
    session_id: str
    stream_id: str
    seq: int
    pcm: bytes
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class ReplayDone:
    """The gateway has replayed the utterance in progress to a stream's new owner.

    Frames the new owner receives before this, and that are not replayed, were sent live while
    the gateway did not yet know of the change: they are held back until here, so that the
    transcriber sees the utterance in order.
    """

    KIND: ClassVar[str] = "audio.replayed"
    session_id: str
    stream_id: str


@dataclass(frozen=True, slots=True)
class SessionClose:
    KIND: ClassVar[str] = "session.close"
    session_id: str
    stream_id: str
    reason: str = "client closed"


@dataclass(frozen=True, slots=True)
class SessionReleased:
    """The STT worker gave up a stream's lease (draining, failing, idle); audio must wait for the
    next owner. ``final``: no worker will take the stream again (it failed on every try).
    ``reoffer``: the lease is settled, so no worker will come by itself: the gateway offers the
    stream again when its client next sends audio."""

    KIND: ClassVar[str] = "session.released"
    session_id: str
    stream_id: str
    worker_id: str
    reason: str
    final: bool = False
    reoffer: bool = False


@dataclass(frozen=True, slots=True)
class SessionTakenOver:
    """A newer connection resumed the session: every other connection of it must end.

    Routed by session id, so the gateway of an older connection receives it wherever it is;
    ``stream_id`` is the new connection's stream, the one that stays.
    """

    KIND: ClassVar[str] = "session.taken_over"
    session_id: str
    stream_id: str


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """``spoken_s``: how long the user had been speaking when the voice detector was sure of it
    (seconds of their audio): the speech began that long before this was sent."""

    KIND: ClassVar[str] = "speech.started"
    session_id: str
    spoken_s: float = 0.0


@dataclass(frozen=True, slots=True)
class TranscriptPartial:
    """What the user has said so far in the utterance in progress. ``logprob``: the recognizer's
    mean log-probability per token of ``text`` (0 = certain, or not known)."""

    KIND: ClassVar[str] = "transcript.partial"
    session_id: str
    text: str
    logprob: float = 0.0


@dataclass(frozen=True, slots=True)
class TranscriptFinal:
    """End of the user's turn. ``upto_seq`` is the last audio frame the text covers; ``logprob``
    as in TranscriptPartial."""

    KIND: ClassVar[str] = "transcript.final"
    session_id: str
    text: str
    upto_seq: int
    logprob: float = 0.0


@dataclass(frozen=True, slots=True)
class TranscriptTentative:
    """The user paused mid-utterance and the turn detector expects more: ``text`` is what the
    final will say if they do not go on (the turn then ends at the silence timeout). More speech
    before the final (a partial, or a final with other words) withdraws it. ``logprob`` as in
    TranscriptPartial."""

    KIND: ClassVar[str] = "transcript.tentative"
    session_id: str
    text: str
    logprob: float = 0.0


# --- gateway -> LLM bridge -> TTS -> gateway -------------------------------------------------


@dataclass(frozen=True, slots=True)
class TurnRequest:
    KIND: ClassVar[str] = "turn.request"
    session_id: str
    turn: int
    text: str
    voice: str = ""
    language: str = "en"


@dataclass(frozen=True, slots=True)
class AssistantDelta:
    """Text of the reply as it streams; ``index`` counts deltas, so repeats can be dropped."""

    KIND: ClassVar[str] = "assistant.delta"
    session_id: str
    turn: int
    index: int
    text: str


@dataclass(frozen=True, slots=True)
class TtsRequest:
    """One sentence (or first clause) of a reply; ``sentence`` is its index in the turn.

    ``deadline``: when the client will need the piece's audio, Unix time in seconds (the first
    piece: when it was sent; a later one: when the audio before it will have played;
    fleet/deadlines.py). TTS workers serve the earliest first; 0 = not known (a publisher from
    before deadlines), served as due when received.
    """

    KIND: ClassVar[str] = "tts.request"
    session_id: str
    turn: int
    sentence: int
    text: str
    voice: str = ""
    deadline: float = 0.0


@dataclass(frozen=True, slots=True)
class TurnDone:
    """The LLM finished the turn; the reply has ``sentences`` sentences to play."""

    KIND: ClassVar[str] = "turn.done"
    session_id: str
    turn: int
    text: str
    sentences: int


@dataclass(frozen=True, slots=True)
class AudioOut:
    """24 kHz PCM16 LE mono reply audio: chunk ``chunk`` of sentence ``sentence`` of ``turn``.

    ``last`` marks the sentence's final chunk; ``text`` (on chunk 0 only) is the sentence, so the
    gateway can record what was actually spoken when a reply is cut off.
    """

    KIND: ClassVar[str] = "audio.out"
    PAYLOAD: ClassVar[str] = "pcm"
    session_id: str
    turn: int
    sentence: int
    chunk: int
    last: bool
    pcm: bytes
    text: str = ""


@dataclass(frozen=True, slots=True)
class TurnFailed:
    """A stage could not do its part of a turn; the gateway tells the client.

    With ``sentence``, that sentence of the reply is given up (its audio is missing or cut) and
    the reply plays on with the next one.
    """

    KIND: ClassVar[str] = "turn.failed"
    session_id: str
    turn: int
    stage: str
    code: ErrorCode  # what the client is told: a documented code, or the message is malformed
    message: str
    sentence: int | None = None


# --- conversation log ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConversationEntry:
    """One line of the conversation for the ``vf.transcripts`` stream.

    A later entry for the same (session, turn, role) supersedes an earlier one: a reply cut off
    by barge-in after it was fully sent is re-published with what the user actually heard.
    """

    KIND: ClassVar[str] = "conversation.entry"
    session_id: str
    turn: int
    role: str
    text: str
    interrupted: bool = False


Message: TypeAlias = (
    SessionOpen
    | SessionAssigned
    | AudioChunk
    | ReplayDone
    | SessionClose
    | SessionReleased
    | SessionTakenOver
    | SpeechStarted
    | TranscriptPartial
    | TranscriptTentative
    | TranscriptFinal
    | TurnRequest
    | AssistantDelta
    | TtsRequest
    | TurnDone
    | AudioOut
    | TurnFailed
    | ConversationEntry
)

MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.KIND: cls
    for cls in (
        SessionOpen,
        SessionAssigned,
        AudioChunk,
        ReplayDone,
        SessionClose,
        SessionReleased,
        SessionTakenOver,
        SpeechStarted,
        TranscriptPartial,
        TranscriptTentative,
        TranscriptFinal,
        TurnRequest,
        AssistantDelta,
        TtsRequest,
        TurnDone,
        AudioOut,
        TurnFailed,
        ConversationEntry,
    )
}

_ADAPTERS: dict[str, TypeAdapter[Any]] = {
    kind: TypeAdapter(cls) for kind, cls in MESSAGE_TYPES.items()
}

_HEADER_COPIES = ("turn", "seq", "sentence", "chunk")


def _payload_field(cls: type[Message]) -> str | None:
    return getattr(cls, "PAYLOAD", None)


def encode(message: Message) -> Envelope:
    cls = type(message)
    fields = {f.name: getattr(message, f.name) for f in dataclasses.fields(message)}
    session_id = fields.pop("session_id")
    payload_name = _payload_field(cls)
    if payload_name is not None:
        body = fields.pop(payload_name)
        return Envelope(
            kind=cls.KIND,
            session_id=session_id,
            body=body,
            headers=fields,
            content_type="application/octet-stream",
        )
    headers = {name: fields[name] for name in _HEADER_COPIES if name in fields}
    return Envelope(
        kind=cls.KIND,
        session_id=session_id,
        body=json.dumps(fields, separators=(",", ":")).encode(),
        headers=headers,
    )


def decode(
    kind: str | None, session_id: str | None, body: bytes, headers: dict[str, Any]
) -> Message:
    """Rebuild a message from what the broker delivered; raise ContractError if it is malformed."""
    if kind is None or kind not in MESSAGE_TYPES:
        raise ContractError(f"unknown message kind {kind!r}")
    if not session_id:
        raise ContractError(f"{kind}: missing correlation_id (session id)")
    cls = MESSAGE_TYPES[kind]
    payload_name = _payload_field(cls)
    if payload_name is not None:
        data: dict[str, Any] = {k: v for k, v in headers.items() if not k.startswith("x-")}
        data[payload_name] = bytes(body)
    else:
        try:
            parsed = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ContractError(f"{kind}: body is not JSON: {exc}") from exc
        if not isinstance(parsed, dict):
            raise ContractError(f"{kind}: body is not a JSON object")
        data = parsed
    data["session_id"] = session_id
    try:
        message: Message = _ADAPTERS[kind].validate_python(data, strict=False)
    except ValidationError as exc:
        raise ContractError(f"{kind}: {exc.error_count()} invalid field(s): {exc}") from exc
    return message
