"""The /ws/audio protocol: what a client sending bad input is told, and when it is cut off."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fleet.errors import ErrorCode
from gateway.protocol import (
    AssistantText,
    AudioCancel,
    AudioEnd,
    AudioPause,
    AudioResume,
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

MAX_TEXT = 4096
MAX_FRAME = 16000
BROWSER_START = {
    "type": "start",
    "format": "pcm_s16le",
    "sampleRate": 16000,
    "channels": 1,
    "frameDurationMs": 100,
}


def start(**fields: Any) -> str:
    return json.dumps({**BROWSER_START, **fields})


def rejected(raw: str) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_text(raw, MAX_TEXT)
    return info.value


def test_the_browser_clients_start_is_accepted() -> None:
    assert parse_text(start(), MAX_TEXT) == Start(
        session_id=None, voice="", language="", token="", resume_secret=""
    )


def test_a_minimal_start_takes_the_defaults() -> None:
    assert parse_text('{"type":"start"}', MAX_TEXT) == Start(None, "", "", "", "")


def test_start_with_every_optional_field() -> None:
    raw = start(
        sessionId="abc_DEF-12345678",
        voice="af_heart",
        language="en-US",
        token="s3cret",
        resumeSecret="Zm9vYmFyYmF6cXV4LV8x",
    )
    assert parse_text(raw, MAX_TEXT) == Start(
        "abc_DEF-12345678", "af_heart", "en-US", "s3cret", "Zm9vYmFyYmF6cXV4LV8x"
    )


def test_stop_is_understood() -> None:
    assert parse_text('{"type":"stop"}', MAX_TEXT) == Stop()


@pytest.mark.parametrize(
    "fields",
    [
        {"format": "opus"},
        {"format": "pcm_f32le"},
        {"sampleRate": 48000},
        {"sampleRate": 8000},
        {"sampleRate": "16000"},
        {"channels": 2},
        {"channels": 0},
        {"channels": True},  # JSON true is not the number 1 (found by tests/e2e/test_fuzz.py)
        {"channels": "1"},
    ],
)
def test_unsupported_audio_format_closes_with_1003(fields: dict[str, Any]) -> None:
    error = rejected(start(**fields))
    assert error.code == "unsupported_format"
    assert error.close_code == CloseCode.UNSUPPORTED


@pytest.mark.parametrize(
    "session_id",
    [
        "short",  # under 8 characters
        "x" * 65,  # over 64
        "has space inside",
        "../../etc/passwd",
        "abcdefgh\n",  # a trailing newline must not slip through
        "sess:ion:12345",  # ':' would alias Redis keys
        12345678,
    ],
)
def test_bad_session_id_is_a_bad_message(session_id: Any) -> None:
    error = rejected(start(sessionId=session_id))
    assert error.code == "bad_message"
    assert "sessionId" in error.message
    assert error.close_code is None  # the client may send a corrected start


@pytest.mark.parametrize("field", ["voice", "language"])
@pytest.mark.parametrize("value", ["bad value!", "x\n", 7])
def test_bad_voice_or_language_is_a_bad_message(field: str, value: Any) -> None:
    error = rejected(start(**{field: value}))
    assert error.code == "bad_message"
    assert field in error.message


@pytest.mark.parametrize("token", [123, ["a"], {"k": "v"}, True])
def test_token_must_be_a_string(token: Any) -> None:
    error = rejected(start(token=token))
    assert error.code == "bad_message"
    assert "token" in error.message
    assert error.close_code is None


@pytest.mark.parametrize("raw", ["hello", "{", "", "{'type': 'start'}", "[" * 3000])
def test_non_json_text_is_a_bad_message_without_closing(raw: str) -> None:
    error = rejected(raw)
    assert error.code == "bad_message"
    assert error.close_code is None


@pytest.mark.parametrize("raw", ['["start"]', '"start"', "null", "42"])
def test_json_that_is_not_an_object_is_a_bad_message(raw: str) -> None:
    error = rejected(raw)
    assert error.code == "bad_message"
    assert error.close_code is None


@pytest.mark.parametrize("raw", ['{"type":"dance"}', '{"format":"pcm_s16le"}', '{"type":null}'])
def test_unknown_type_is_reported_without_closing(raw: str) -> None:
    error = rejected(raw)
    assert error.code == "unknown_type"
    assert error.close_code is None


def test_oversize_text_closes_with_1009() -> None:
    raw = start(voice="af_heart", padding="x" * MAX_TEXT)
    error = rejected(raw)
    assert error.code == "message_too_big"
    assert error.close_code == CloseCode.TOO_BIG


def test_the_text_limit_counts_bytes_not_characters() -> None:
    raw = json.dumps(
        {"type": "stop", "note": "é" * 1500}, ensure_ascii=False
    )  # 1500 chars, 3000+ bytes
    assert len(raw) < 2000
    with pytest.raises(ProtocolError) as info:
        parse_text(raw, 2000)
    assert info.value.code == "message_too_big"


def test_text_at_the_limit_is_accepted() -> None:
    raw = '{"type":"stop"}'
    assert parse_text(raw, len(raw)) == Stop()


@pytest.mark.parametrize("size", [2, 3200, MAX_FRAME])
def test_even_frames_up_to_the_limit_are_accepted(size: int) -> None:
    check_frame(b"\x00" * size, MAX_FRAME)


def test_an_empty_frame_is_a_bad_frame_without_closing() -> None:
    with pytest.raises(ProtocolError) as info:
        check_frame(b"", MAX_FRAME)
    assert info.value.code == "bad_frame"
    assert info.value.close_code is None
    assert "empty" in info.value.message


@pytest.mark.parametrize("size", [1, 3199, MAX_FRAME - 1])
def test_odd_length_frame_is_a_bad_frame_without_closing(size: int) -> None:
    with pytest.raises(ProtocolError) as info:
        check_frame(b"\x00" * size, MAX_FRAME)
    assert info.value.code == "bad_frame"
    assert info.value.close_code is None


@pytest.mark.parametrize("size", [MAX_FRAME + 1, MAX_FRAME + 2, 10 * MAX_FRAME])
def test_too_big_frame_closes_with_1009(size: int) -> None:
    with pytest.raises(ProtocolError) as info:
        check_frame(b"\x00" * size, MAX_FRAME)
    assert info.value.code == "frame_too_big"
    assert info.value.close_code == CloseCode.TOO_BIG


@pytest.mark.parametrize(
    ("event", "sent"),
    [
        (
            Ready("4f1c0b2e", resumed=False, resume_secret="c2VjcmV0"),
            '{"type":"ready","sessionId":"4f1c0b2e","resumed":false,"resumeSecret":"c2VjcmV0"}',
        ),
        (Transcript("hi", final=True), '{"type":"transcript","text":"hi","final":true}'),
        (AssistantText("It's ", 3), '{"type":"assistant_text","text":"It\'s ","turn":3}'),
        (AudioStart(24000, 3), '{"type":"audio_start","sampleRate":24000,"turn":3}'),
        (AudioEnd(3), '{"type":"audio_end","turn":3}'),
        (AudioPause(3), '{"type":"audio_pause","turn":3}'),
        (AudioResume(3), '{"type":"audio_resume","turn":3}'),
        (AudioCancel(3), '{"type":"audio_cancel","turn":3}'),
        (Error(ErrorCode.BUSY, "later"), '{"type":"error","code":"busy","message":"later"}'),
    ],
)
def test_events_are_compact_json_with_a_type_and_camel_case_fields(
    event: ServerEvent, sent: str
) -> None:
    assert event.to_json() == sent
