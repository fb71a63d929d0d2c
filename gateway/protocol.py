"""The client protocol of /ws/audio (docs/protocol.md): parsing and validation, with no I/O."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from fleet.audio import INPUT_SAMPLE_RATE

PCM_FORMAT = "pcm_s16le"

# WebSocket close codes (RFC 6455 and the IANA registry).
CLOSE_NORMAL = 1000
CLOSE_UNSUPPORTED = 1003
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN = 1013

_SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
_VOICE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_LANGUAGE = re.compile(r"^[a-z]{2,3}(-[A-Za-z]{2,4})?$")


class ProtocolError(Exception):
    """Bad input from a client: an ``error`` event, and a close code if it cannot go on."""

    def __init__(self, code: str, message: str, close_code: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.close_code = close_code


@dataclass(frozen=True, slots=True)
class Start:
    session_id: str | None
    voice: str
    language: str
    token: str


@dataclass(frozen=True, slots=True)
class Stop:
    pass


ClientCommand = Start | Stop


def _optional_str(data: dict[str, Any], key: str, pattern: re.Pattern[str]) -> str:
    value = data.get(key)
    if value is None or value == "":
        return ""
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ProtocolError("bad_message", f"start: invalid {key!r}")
    return value


def parse_start(data: dict[str, Any]) -> Start:
    if data.get("format", PCM_FORMAT) != PCM_FORMAT:
        raise ProtocolError(
            "unsupported_format",
            f"format {data.get('format')!r} is not supported; send {PCM_FORMAT}",
            CLOSE_UNSUPPORTED,
        )
    if data.get("sampleRate", INPUT_SAMPLE_RATE) != INPUT_SAMPLE_RATE:
        raise ProtocolError(
            "unsupported_format",
            f"sampleRate {data.get('sampleRate')!r} is not supported; send {INPUT_SAMPLE_RATE}",
            CLOSE_UNSUPPORTED,
        )
    if data.get("channels", 1) != 1:
        raise ProtocolError(
            "unsupported_format", "only mono audio (channels: 1) is supported", CLOSE_UNSUPPORTED
        )
    token = data.get("token", "")
    if not isinstance(token, str):
        raise ProtocolError("bad_message", "start: 'token' must be a string")
    return Start(
        session_id=_optional_str(data, "sessionId", _SESSION_ID) or None,
        voice=_optional_str(data, "voice", _VOICE),
        language=_optional_str(data, "language", _LANGUAGE),
        token=token,
    )


def parse_text(raw: str, max_bytes: int) -> ClientCommand:
    if len(raw.encode()) > max_bytes:
        raise ProtocolError(
            "message_too_big", f"text messages are limited to {max_bytes} bytes", CLOSE_TOO_BIG
        )
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ProtocolError("bad_message", f"text message is not JSON: {exc.msg}") from exc
    except RecursionError as exc:  # deeply nested arrays/objects within max_bytes
        raise ProtocolError("bad_message", "text message is nested too deeply") from exc
    if not isinstance(data, dict):
        raise ProtocolError("bad_message", "text message must be a JSON object")
    kind = data.get("type")
    if kind == "start":
        return parse_start(data)
    if kind == "stop":
        return Stop()
    raise ProtocolError("unknown_type", f"unknown message type {kind!r}")


def check_frame(frame: bytes, max_bytes: int) -> None:
    if len(frame) > max_bytes:
        raise ProtocolError(
            "frame_too_big",
            f"audio frames are limited to {max_bytes} bytes ({len(frame)} received)",
            CLOSE_TOO_BIG,
        )
    if len(frame) % 2:
        raise ProtocolError("bad_frame", "PCM16 frames must have an even number of bytes")


def event(kind: str, **fields: Any) -> str:
    return json.dumps({"type": kind, **fields}, separators=(",", ":"))
