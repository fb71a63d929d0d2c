"""Bad input on /ws/audio gets a clear error and never disturbs anyone else."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
import websockets

from tests.fleet_processes import Fleet
from voicefleet.client import VoiceClient

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

START = {"type": "start", "format": "pcm_s16le", "sampleRate": 16000, "channels": 1}


async def _error_and_close(
    fleet: Fleet, *messages: str | bytes, started: bool = True
) -> tuple[list[dict[str, object]], int | None]:
    """Send messages (after a start, if ``started``); return the error events and close code."""
    errors: list[dict[str, object]] = []
    async with websockets.connect(fleet.ws_url) as ws:
        if started:
            await ws.send(json.dumps(START))
            ready = json.loads(await asyncio.wait_for(ws.recv(), 30))
            assert ready["type"] == "ready", ready
        for message in messages:
            await ws.send(message)
        # Read until the server closes, or 3 s of quiet show it kept the connection open.
        with contextlib.suppress(TimeoutError, websockets.ConnectionClosed):
            async with asyncio.timeout(3):
                async for reply in ws:
                    if isinstance(reply, str) and json.loads(reply)["type"] == "error":
                        errors.append(json.loads(reply))
        return errors, ws.close_code


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("this is not json", "bad_message"),
        ("[1, 2, 3]", "bad_message"),
        (json.dumps({"type": "dance"}), "unknown_type"),
        (json.dumps(START), "already_started"),
        (b"\x01\x02\x03", "bad_frame"),
    ],
)
async def test_recoverable_bad_input_gets_an_error_and_the_session_goes_on(
    fleet: Fleet, message: str | bytes, code: str
) -> None:
    errors, close_code = await _error_and_close(fleet, message, b"\x00" * 3200)
    assert [e["code"] for e in errors] == [code]
    assert close_code is None, "the connection should have stayed open"


@pytest.mark.parametrize(
    ("start", "code", "close_code"),
    [
        ({**START, "sampleRate": 8000}, "unsupported_format", 1003),
        ({**START, "format": "opus"}, "unsupported_format", 1003),
        ({**START, "channels": 2}, "unsupported_format", 1003),
    ],
)
async def test_unsupported_audio_format_is_refused(
    fleet: Fleet, start: dict[str, object], code: str, close_code: int
) -> None:
    errors, closed_with = await _error_and_close(fleet, json.dumps(start), started=False)
    assert [e["code"] for e in errors] == [code]
    assert closed_with == close_code


async def test_audio_before_start_is_a_policy_violation(fleet: Fleet) -> None:
    errors, closed_with = await _error_and_close(fleet, b"\x00" * 3200, started=False)
    assert [e["code"] for e in errors] == ["not_started"]
    assert closed_with == 1008


async def test_oversized_frames_and_messages_close_with_1009(fleet: Fleet) -> None:
    errors, closed_with = await _error_and_close(fleet, b"\x00" * 64000)
    assert [e["code"] for e in errors] == ["frame_too_big"]
    assert closed_with == 1009
    errors, closed_with = await _error_and_close(
        fleet, json.dumps({"type": "x", "pad": "y" * 9000})
    )
    assert [e["code"] for e in errors] == ["message_too_big"]
    assert closed_with == 1009


async def test_stop_closes_normally(fleet: Fleet) -> None:
    errors, closed_with = await _error_and_close(fleet, json.dumps({"type": "stop"}))
    assert errors == []
    assert closed_with == 1000


async def test_bad_client_does_not_disturb_another_session(fleet: Fleet) -> None:
    """A well-behaved session keeps streaming and stays healthy while another one misbehaves."""
    good = VoiceClient(fleet.ws_url)
    await good.connect()
    try:
        streaming = asyncio.create_task(good.stream_silence(3.0))
        for message in ("garbage", b"\x01", b"\x00" * 64000):
            await _error_and_close(fleet, message)
        await streaming
        assert good.events("error") == []
        assert good.close_code is None
        await good.send_json({"type": "stop"})
        closed = await good.wait_for("closed", timeout=10)
        assert closed is not None
    finally:
        await good.close()
