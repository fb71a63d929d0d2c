"""The error codes a client can be sent, defined once: docs/protocol.md lists exactly these.

The gateway sends them for what it detects itself; the workers put them in ``TurnFailed`` for
the gateway to forward.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    BAD_MESSAGE = "bad_message"
    UNKNOWN_TYPE = "unknown_type"
    ALREADY_STARTED = "already_started"
    BAD_FRAME = "bad_frame"
    NOT_STARTED = "not_started"
    UNSUPPORTED_FORMAT = "unsupported_format"
    FRAME_TOO_BIG = "frame_too_big"
    MESSAGE_TOO_BIG = "message_too_big"
    UNAUTHORIZED = "unauthorized"
    BUSY = "busy"
    SESSION_EXPIRED = "session_expired"
    SESSION_TAKEN_OVER = "session_taken_over"
    STT_UNAVAILABLE = "stt_unavailable"
    LLM_FAILED = "llm_failed"
    TTS_FAILED = "tts_failed"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"
    # --- gateway: auth (docs/security.md)
    TOKEN_EXPIRED = "token_expired"
    # --- limits (docs/security.md, "Limits") ---
    START_TIMEOUT = "start_timeout"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    TOO_MANY_ERRORS = "too_many_errors"
    AUDIO_TOO_FAST = "audio_too_fast"
    SLOW_CLIENT = "slow_client"
    UNSUPPORTED_LANGUAGE = "unsupported_language"
    UNKNOWN_VOICE = "unknown_voice"
