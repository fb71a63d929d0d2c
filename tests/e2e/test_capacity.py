"""A full fleet says so: new clients get `busy` (1013); sessions already running go on."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.fleet_processes import Fleet, running_fleet
from tests.speech import words
from tests.voice_turns import QUESTION, voice_turn
from voicefleet.client import SessionRefused, VoiceClient

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

IDLE_TIMEOUT_S = 8  # VF_STT_IDLE_TIMEOUT_S of this fleet


@pytest.fixture(scope="module")
def one_seat_fleet() -> Iterator[Fleet]:
    with running_fleet(
        "e2e-capacity",
        stt_max_sessions="1",
        assign_timeout_s="2",
        stt_idle_timeout_s=str(IDLE_TIMEOUT_S),
    ) as fleet:
        yield fleet


async def test_busy_when_no_recognizer_is_free_and_seats_free_up(one_seat_fleet: Fleet) -> None:
    first = VoiceClient(one_seat_fleet.ws_url)
    await first.connect()

    second = VoiceClient(one_seat_fleet.ws_url)
    with pytest.raises(SessionRefused) as refused:
        await second.connect()
    assert refused.value.code == "busy"
    await second.wait_for("closed", timeout=5)
    assert second.close_code == 1013

    # The running session is unaffected (it completes a turn), and leaving gives its seat back.
    turn = await voice_turn(first, QUESTION)
    assert {"capital", "france"} <= words(turn.heard), turn.heard
    assert first.events("error") == []
    await first.send_json({"type": "stop"})
    await first.wait_for("closed", timeout=10)
    assert first.close_code == 1000

    third = VoiceClient(one_seat_fleet.ws_url)
    ready = await third.connect()
    assert ready["type"] == "ready"
    await third.close()


async def test_a_silent_session_gives_its_recognizer_back(one_seat_fleet: Fleet) -> None:
    """VF_STT_IDLE_TIMEOUT_S: the STT worker releases a session that sent no audio for that long,
    so a new client gets the only seat while the silent one is still connected."""
    silent = VoiceClient(one_seat_fleet.ws_url)
    await silent.connect()
    newcomer: VoiceClient | None = None
    refusals = 0
    try:
        # Each try waits VF_ASSIGN_TIMEOUT_S for the seat, then is told `busy`, as a client
        # retrying after 1013 would be.
        async with asyncio.timeout(IDLE_TIMEOUT_S + 60):
            while newcomer is None:
                attempt = VoiceClient(one_seat_fleet.ws_url)
                try:
                    await attempt.connect()
                    newcomer = attempt
                except SessionRefused as refused:
                    assert refused.code == "busy", refused
                    refusals += 1
                    await attempt.close()
        assert refusals >= 1, "the seat was free before the silent session was released"
        assert silent.close_code is None
    finally:
        await silent.close()
        if newcomer is not None:
            await newcomer.close()


async def test_a_silent_session_is_heard_again_after_its_recognizer_was_released(
    one_seat_fleet: Fleet,
) -> None:
    """The idle release frees the seat, not the user: when the silent client speaks again, its
    gateway offers the stream again and the words are heard."""
    client = VoiceClient(one_seat_fleet.ws_url)
    await client.connect()
    try:
        await one_seat_fleet.wait_for_worker(
            "stt", "session_ended", client.session_id, patience=IDLE_TIMEOUT_S + 30
        )
        turn = await voice_turn(client, QUESTION)
        assert {"capital", "france"} <= words(turn.heard), turn.heard
        assert client.events("error") == []
    finally:
        await client.close()
