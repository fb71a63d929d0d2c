"""The client protocol of /ws/audio (docs/protocol.md): parsing, validation and the server's
events, with no I/O."""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, ClassVar

from fleet.audio import INPUT_SAMPLE_RATE
from fleet.errors import ErrorCode

PCM_FORMAT = "pcm_s16le"


class CloseCode(IntEnum):
    """The WebSocket close codes the server sends (RFC 6455 and the IANA registry)."""

    NORMAL = 1000
    UNSUPPORTED = 1003
    # Sent by the WebSocket layer (not by a session) for a text frame that is not UTF-8.
    INVALID_PAYLOAD = 1007
    POLICY = 1008
    TOO_BIG = 1009
    INTERNAL = 1011
    TRY_AGAIN = 1013


# What each error does to the connection: closes it with this code, or (None) leaves it open.
CLOSES_WITH: dict[ErrorCode, CloseCode | None] = {
    ErrorCode.BAD_MESSAGE: None,
    ErrorCode.UNKNOWN_TYPE: None,
    ErrorCode.ALREADY_STARTED: None,
    ErrorCode.BAD_FRAME: None,
    ErrorCode.NOT_STARTED: CloseCode.POLICY,
    ErrorCode.UNSUPPORTED_FORMAT: CloseCode.UNSUPPORTED,
    ErrorCode.FRAME_TOO_BIG: CloseCode.TOO_BIG,
    ErrorCode.MESSAGE_TOO_BIG: CloseCode.TOO_BIG,
    ErrorCode.UNAUTHORIZED: CloseCode.POLICY,
    ErrorCode.BUSY: CloseCode.TRY_AGAIN,
    ErrorCode.SESSION_EXPIRED: CloseCode.POLICY,
    ErrorCode.SESSION_TAKEN_OVER: CloseCode.POLICY,
    ErrorCode.STT_UNAVAILABLE: CloseCode.INTERNAL,
    ErrorCode.LLM_FAILED: None,
    ErrorCode.TTS_FAILED: None,
    ErrorCode.UNAVAILABLE: CloseCode.TRY_AGAIN,
    ErrorCode.INTERNAL: CloseCode.INTERNAL,
    # --- gateway: auth
    ErrorCode.TOKEN_EXPIRED: CloseCode.POLICY,
    # --- limits (docs/security.md, "Limits") ---
    ErrorCode.START_TIMEOUT: CloseCode.POLICY,
    ErrorCode.TOO_MANY_CONNECTIONS: CloseCode.POLICY,
    ErrorCode.TOO_MANY_ERRORS: CloseCode.POLICY,
    ErrorCode.AUDIO_TOO_FAST: CloseCode.POLICY,
    ErrorCode.SLOW_CLIENT: CloseCode.TRY_AGAIN,
    ErrorCode.UNSUPPORTED_LANGUAGE: CloseCode.UNSUPPORTED,
    ErrorCode.UNKNOWN_VOICE: CloseCode.UNSUPPORTED,
}

_SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
_RESUME_SECRET = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
_VOICE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_LANGUAGE = re.compile(r"^[a-z]{2,3}(-[A-Za-z]{2,4})?$")


class ProtocolError(Exception):
    """An error the client is told of, which ends the connection if its code says so."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.close_code = CLOSES_WITH[code]


@dataclass(frozen=True, slots=True)
class Start:
    session_id: str | None
    voice: str
    language: str
    token: str
    resume_secret: str


@dataclass(frozen=True, slots=True)
class Stop:
    pass


ClientCommand = Start | Stop


def _optional_str(data: dict[str, Any], key: str, pattern: re.Pattern[str]) -> str:
    value = data.get(key)
    if value is None or value == "":
        return ""
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"start: invalid {key!r}")
    return value


def _number_is(value: Any, expected: int) -> bool:
    """A JSON number equal to ``expected``; ``true`` is not the number 1."""
    return isinstance(value, int | float) and not isinstance(value, bool) and value == expected


def parse_start(data: dict[str, Any]) -> Start:
    if data.get("format", PCM_FORMAT) != PCM_FORMAT:
        raise ProtocolError(
            ErrorCode.UNSUPPORTED_FORMAT,
            f"format {data.get('format')!r} is not supported; send {PCM_FORMAT}",
        )
    if not _number_is(data.get("sampleRate", INPUT_SAMPLE_RATE), INPUT_SAMPLE_RATE):
        raise ProtocolError(
            ErrorCode.UNSUPPORTED_FORMAT,
            f"sampleRate {data.get('sampleRate')!r} is not supported; send {INPUT_SAMPLE_RATE}",
        )
    if not _number_is(data.get("channels", 1), 1):
        raise ProtocolError(
            ErrorCode.UNSUPPORTED_FORMAT, "only mono audio (channels: 1) is supported"
        )
    token = data.get("token", "")
    if not isinstance(token, str):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "start: 'token' must be a string")
    return Start(
        session_id=_optional_str(data, "sessionId", _SESSION_ID) or None,
        voice=_optional_str(data, "voice", _VOICE),
        language=_optional_str(data, "language", _LANGUAGE),
        token=token,
        resume_secret=_optional_str(data, "resumeSecret", _RESUME_SECRET),
    )


def parse_text(raw: str, max_bytes: int) -> ClientCommand:
    if len(raw.encode()) > max_bytes:
        raise ProtocolError(
            ErrorCode.MESSAGE_TOO_BIG, f"text messages are limited to {max_bytes} bytes"
        )
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"text message is not JSON: {exc.msg}") from exc
    except RecursionError as exc:  # deeply nested arrays/objects within max_bytes
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "text message is nested too deeply") from exc
    if not isinstance(data, dict):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "text message must be a JSON object")
    kind = data.get("type")
    if kind == "start":
        return parse_start(data)
    if kind == "stop":
        return Stop()
    raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {kind!r}")


def check_frame(frame: bytes, max_bytes: int) -> None:
    if len(frame) > max_bytes:
        raise ProtocolError(
            ErrorCode.FRAME_TOO_BIG,
            f"audio frames are limited to {max_bytes} bytes ({len(frame)} received)",
        )
    if not frame:
        raise ProtocolError(ErrorCode.BAD_FRAME, "empty audio frames are not accepted")
    if len(frame) % 2:
        raise ProtocolError(ErrorCode.BAD_FRAME, "PCM16 frames must have an even number of bytes")


# --- server -> client ------------------------------------------------------------------------


def _camel_case(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word.title() for word in rest)


@dataclass(frozen=True, slots=True)
class ServerEvent:
    """A text frame to the client: ``type`` and the fields, camelCase, in declaration order."""

    TYPE: ClassVar[str]

    def to_json(self) -> str:
        fields = {_camel_case(f.name): getattr(self, f.name) for f in dataclasses.fields(self)}
        return json.dumps({"type": self.TYPE, **fields}, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class Ready(ServerEvent):
    TYPE: ClassVar[str] = "ready"
    session_id: str
    resumed: bool
    resume_secret: str


@dataclass(frozen=True, slots=True)
class Transcript(ServerEvent):
    TYPE: ClassVar[str] = "transcript"
    text: str
    final: bool


@dataclass(frozen=True, slots=True)
class AssistantText(ServerEvent):
    TYPE: ClassVar[str] = "assistant_text"
    text: str
    turn: int


@dataclass(frozen=True, slots=True)
class AudioStart(ServerEvent):
    TYPE: ClassVar[str] = "audio_start"
    sample_rate: int
    turn: int


@dataclass(frozen=True, slots=True)
class AudioEnd(ServerEvent):
    TYPE: ClassVar[str] = "audio_end"
    turn: int


@dataclass(frozen=True, slots=True)
class AudioPause(ServerEvent):
    TYPE: ClassVar[str] = "audio_pause"
    turn: int


@dataclass(frozen=True, slots=True)
class AudioResume(ServerEvent):
    TYPE: ClassVar[str] = "audio_resume"
    turn: int


@dataclass(frozen=True, slots=True)
class AudioCancel(ServerEvent):
    TYPE: ClassVar[str] = "audio_cancel"
    turn: int


@dataclass(frozen=True, slots=True)
class Error(ServerEvent):
    TYPE: ClassVar[str] = "error"
    code: ErrorCode
    message: str
