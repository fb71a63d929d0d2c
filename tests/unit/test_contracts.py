"""The message contract: what every kind looks like on the wire, and what is rejected as poison."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fleet.contracts import (
    MESSAGE_TYPES,
    AssistantDelta,
    AudioChunk,
    AudioOut,
    ContractError,
    ConversationEntry,
    Message,
    ReplayDone,
    SessionAssigned,
    SessionClose,
    SessionOpen,
    SessionReleased,
    SessionTakenOver,
    SpeechStarted,
    TranscriptFinal,
    TranscriptPartial,
    TranscriptTentative,
    TtsRequest,
    TurnDone,
    TurnFailed,
    TurnRequest,
    decode,
    encode,
)
from fleet.errors import ErrorCode

SID = "session-0123456789"
PCM = bytes(range(256)) * 4  # every byte value, including ones that are not valid UTF-8

SAMPLES: dict[str, Message] = {
    m.KIND: m
    for m in (
        SessionOpen(SID, "stream-1", "gw-1", language="de", sample_rate=16000),
        SessionAssigned(SID, "stream-1", "stt-7"),
        AudioChunk(SID, "stream-1", 42, PCM, replayed=True),
        ReplayDone(SID, "stream-1"),
        SessionClose(SID, "stream-1", reason="client closed"),
        SessionReleased(SID, "stream-1", "stt-7", "failed", final=True),
        SessionTakenOver(SID, "stream-2"),
        SpeechStarted(SID),
        TranscriptPartial(SID, "hello wor", logprob=-0.42),
        TranscriptTentative(SID, "hello world", logprob=-0.3),
        TranscriptFinal(SID, "hello world", upto_seq=41, logprob=-0.25),
        TurnRequest(SID, 3, "what's the weather?", voice="af_heart", language="en"),
        AssistantDelta(SID, 3, 0, "It is "),
        TtsRequest(SID, 3, 1, "It is sunny.", voice="af_heart", deadline=1764500000.25),
        TurnDone(SID, 3, "It is sunny. Enjoy!", sentences=2),
        AudioOut(SID, 3, 1, 0, False, PCM, text="Ça va — très bien…"),
        TurnFailed(SID, 3, "llm", ErrorCode.LLM_FAILED, "the model server did not answer"),
        ConversationEntry(SID, 3, "assistant", "It is sunny.", interrupted=True),
    )
}


def test_every_kind_has_a_sample() -> None:
    assert set(SAMPLES) == set(MESSAGE_TYPES)


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_every_kind_round_trips(kind: str) -> None:
    message = SAMPLES[kind]
    envelope = encode(message)
    assert envelope.kind == kind
    assert envelope.session_id == SID
    assert envelope.message_id
    decoded = decode(envelope.kind, envelope.session_id, envelope.body, dict(envelope.headers))
    assert decoded == message
    assert type(decoded) is type(message)


@pytest.mark.parametrize("kind", ["audio.chunk", "audio.out"])
def test_audio_travels_as_raw_bytes_with_fields_in_headers(kind: str) -> None:
    envelope = encode(SAMPLES[kind])
    assert envelope.body == PCM  # the PCM itself, not base64 or JSON
    assert envelope.content_type == "application/octet-stream"
    assert "pcm" not in envelope.headers
    assert "session_id" not in envelope.headers  # travels as correlation_id
    for value in envelope.headers.values():
        assert isinstance(value, str | int | bool)
    if kind == "audio.out":
        assert envelope.headers == {
            "turn": 3,
            "sentence": 1,
            "chunk": 0,
            "last": False,
            "text": "Ça va — très bien…",
        }
    else:
        assert envelope.headers == {"stream_id": "stream-1", "seq": 42, "replayed": True}


def test_control_bodies_are_json_with_turn_copied_to_headers() -> None:
    envelope = encode(SAMPLES["tts.request"])
    assert envelope.content_type == "application/json"
    assert json.loads(envelope.body) == {
        "turn": 3,
        "sentence": 1,
        "text": "It is sunny.",
        "voice": "af_heart",
        "deadline": 1764500000.25,
    }
    assert envelope.headers == {"turn": 3, "sentence": 1}


def test_every_message_gets_a_unique_message_id() -> None:
    ids = {encode(SAMPLES["speech.started"]).message_id for _ in range(100)}
    assert len(ids) == 100


def test_broker_headers_starting_with_x_are_ignored_on_audio() -> None:
    envelope = encode(SAMPLES["audio.chunk"])
    headers: dict[str, Any] = {**envelope.headers, "x-death": [{"count": 1}], "x-delivery-count": 2}
    assert decode("audio.chunk", SID, envelope.body, headers) == SAMPLES["audio.chunk"]


def test_unknown_kind_is_rejected() -> None:
    with pytest.raises(ContractError, match="unknown message kind"):
        decode("turn.teleport", SID, b"{}", {})
    with pytest.raises(ContractError, match="unknown message kind"):
        decode(None, SID, b"{}", {})


@pytest.mark.parametrize("session_id", [None, ""])
def test_missing_correlation_id_is_rejected(session_id: str | None) -> None:
    envelope = encode(SAMPLES["transcript.partial"])
    with pytest.raises(ContractError, match="correlation_id"):
        decode(envelope.kind, session_id, envelope.body, dict(envelope.headers))


@pytest.mark.parametrize("body", [b"not json", b"\xff\xfe\x00", b"", b'{"turn": 3,'])
def test_non_json_control_body_is_rejected(body: bytes) -> None:
    with pytest.raises(ContractError, match="not JSON"):
        decode("turn.request", SID, body, {"turn": 3})


@pytest.mark.parametrize("body", [b"[1, 2]", b'"text"', b"null", b"3"])
def test_json_that_is_not_an_object_is_rejected(body: bytes) -> None:
    with pytest.raises(ContractError):
        decode("turn.request", SID, body, {})


@pytest.mark.parametrize(
    "fields",
    [
        {"turn": "three", "text": "hi"},  # int field with a word
        {"turn": 3, "text": 5},  # str field with a number
        {"turn": 3.5, "text": "hi"},  # int field with a fraction
        {"turn": [3], "text": "hi"},
        {"text": "hi"},  # missing field
    ],
)
def test_control_message_with_wrong_field_types_is_rejected(fields: dict[str, Any]) -> None:
    with pytest.raises(ContractError, match=r"turn\.request: \d+ invalid field"):
        decode("turn.request", SID, json.dumps(fields).encode(), {})


@pytest.mark.parametrize(
    "headers",
    [
        {"stream_id": "stream-1", "seq": "forty-two"},
        {"stream_id": 17, "seq": 1},
        {"stream_id": "stream-1"},  # seq missing
        {},
    ],
)
def test_audio_with_wrong_header_types_is_rejected(headers: dict[str, Any]) -> None:
    with pytest.raises(ContractError, match=r"audio\.chunk"):
        decode("audio.chunk", SID, PCM, headers)


@pytest.mark.parametrize(
    ("kind", "body", "headers"),
    [("turn.request", b"not json", {}), ("audio.chunk", PCM, {}), ("turn.teleport", b"{}", {})],
)
def test_poison_is_caught_by_callers_that_catch_value_error(
    kind: str, body: bytes, headers: dict[str, Any]
) -> None:
    # Callers that catch ValueError for bad input also catch poison messages.
    try:
        decode(kind, SID, body, headers)
    except ValueError as exc:
        assert isinstance(exc, ContractError)
    else:
        pytest.fail(f"{kind} with {body[:10]!r} was accepted")


def test_a_turn_failure_with_an_undocumented_code_is_malformed() -> None:
    """The gateway forwards a TurnFailed's code to the client; one that is not a documented
    ErrorCode must be refused at decoding (found by tests/e2e/test_fuzz.py: it raised in the
    gateway's event loop instead)."""
    valid = encode(TurnFailed(SID, 1, "llm", ErrorCode.LLM_FAILED, "timed out"))
    assert decode(valid.kind, SID, valid.body, valid.headers) == TurnFailed(
        SID, 1, "llm", ErrorCode.LLM_FAILED, "timed out"
    )
    forged = json.loads(valid.body)
    forged["code"] = "llm_unavailable"
    with pytest.raises(ContractError, match=r"turn\.failed"):
        decode(valid.kind, SID, json.dumps(forged).encode(), valid.headers)
