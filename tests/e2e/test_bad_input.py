"""Bad input on /ws/audio gets a clear error and never disturbs anyone else."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
import websockets

from fleet.settings import Settings
from fleet.topology import Bus
from tests.fleet_processes import Fleet
from tests.speech import pcm, silence, speech, words
from tests.voice_turns import QUESTION, talk_until_closed, voice_turn
from voicefleet.client import VoiceClient

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

START = {"type": "start", "format": "pcm_s16le", "sampleRate": 16000, "channels": 1}
LIMITS = Settings()  # the fleet runs with the default VF_MAX_FRAME_BYTES and VF_MAX_TEXT_BYTES
TOO_BIG_FRAME = b"\x00" * (LIMITS.max_frame_bytes + 2)
TOO_BIG_TEXT = json.dumps({"type": "x", "pad": "y" * LIMITS.max_text_bytes})


async def _error_and_close(
    fleet: Fleet, *messages: str | bytes, started: bool = True
) -> tuple[list[dict[str, object]], int | None]:
    """Send messages (after a start, if ``started``), then ``stop``; return the error events and
    the close code: 1000 when the connection stayed open until the ``stop``."""
    errors: list[dict[str, object]] = []
    async with websockets.connect(fleet.ws_url) as ws:
        if started:
            await ws.send(json.dumps(START))
            ready = json.loads(await asyncio.wait_for(ws.recv(), 30))
            assert ready["type"] == "ready", ready
        with contextlib.suppress(websockets.ConnectionClosed):
            for message in messages:
                await ws.send(message)
            await ws.send(json.dumps({"type": "stop"}))
        with contextlib.suppress(websockets.ConnectionClosed):
            async with asyncio.timeout(30):
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
        (b"", "bad_frame"),  # an empty frame
    ],
)
async def test_recoverable_bad_input_gets_an_error_and_the_session_goes_on(
    fleet: Fleet, message: str | bytes, code: str
) -> None:
    errors, close_code = await _error_and_close(fleet, message, b"\x00" * 3200)
    assert [e["code"] for e in errors] == [code]
    assert close_code == 1000, "the connection should have stayed open until `stop`"


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
    # The largest frame allowed is accepted; one a sample larger is refused.
    errors, closed_with = await _error_and_close(fleet, b"\x00" * LIMITS.max_frame_bytes)
    assert (errors, closed_with) == ([], 1000)
    errors, closed_with = await _error_and_close(fleet, TOO_BIG_FRAME)
    assert [e["code"] for e in errors] == ["frame_too_big"]
    assert closed_with == 1009
    errors, closed_with = await _error_and_close(fleet, TOO_BIG_TEXT)
    assert [e["code"] for e in errors] == ["message_too_big"]
    assert closed_with == 1009


async def test_stop_closes_normally(fleet: Fleet) -> None:
    errors, closed_with = await _error_and_close(fleet, json.dumps({"type": "stop"}))
    assert errors == []
    assert closed_with == 1000


async def test_bad_client_does_not_disturb_another_session(fleet: Fleet) -> None:
    """A well-behaved session completes a voice turn while another client misbehaves."""
    good = VoiceClient(fleet.ws_url)
    await good.connect()
    try:
        talking = asyncio.create_task(voice_turn(good, QUESTION))
        for message in ("garbage", b"\x01", TOO_BIG_FRAME):
            await _error_and_close(fleet, message)
        turn = await talking
        assert {"capital", "france"} <= words(turn.heard), turn.heard
        assert turn.reply.strip()
        assert good.events("error") == []
        assert good.close_code is None
        await good.send_json({"type": "stop"})
        await good.wait_for("closed", timeout=10)
        assert good.close_code == 1000
    finally:
        await good.close()


async def dead_lettered_sessions(fleet: Fleet) -> set[str]:
    """The session ids of what is in the fleet's dead-letter queue (read without removing)."""
    bus = await Bus.connect(fleet.settings, "test-dead-letters")
    try:
        channel = await bus.connection.channel()
        queue = await channel.get_queue(bus.names.dead_letter_queue)
        found = set()
        while (incoming := await queue.get(no_ack=False, fail=False)) is not None:
            found.add(str(incoming.correlation_id))
        await channel.close()  # what was read goes back to the queue
        return found
    finally:
        await bus.close()


async def test_a_stream_that_fails_on_every_recognizer_ends_with_stt_unavailable(
    fleet: Fleet,
) -> None:
    """Speech the recognizers cannot decode (a language code a misconfigured gateway accepts,
    VF_STT_LANGUAGES, and Whisper does not know) fails on every try: the stream is dead-lettered
    and the client gets ``stt_unavailable``, close 1011; the session itself goes on over a new
    connection."""
    with fleet.extra_gateway("gateway-zz", VF_STT_LANGUAGES="en,zz") as url:
        client = VoiceClient(url)
        await client.connect(language="zz")
        said = pcm(silence(0.3), speech(QUESTION), silence(20))
        error = await talk_until_closed(client, said, patience=120)
    assert isinstance(error.data, dict) and error.data["code"] == "stt_unavailable", error
    assert client.close_code == 1011
    assert client.session_id in await dead_lettered_sessions(fleet)

    again = VoiceClient(fleet.ws_url)
    try:
        ready = await again.connect(
            sessionId=client.session_id, resumeSecret=client.resume_secret, language="en"
        )
        assert ready["resumed"] is True
        turn = await voice_turn(again, QUESTION)
        assert {"capital", "france"} <= words(turn.heard), turn.heard
    finally:
        await again.close()
