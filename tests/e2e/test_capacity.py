"""A full fleet says so: new clients get `busy` (1013); sessions already running go on."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fleet_processes import Fleet, running_fleet
from voicefleet.client import SessionRefused, VoiceClient

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def one_seat_fleet() -> Iterator[Fleet]:
    with running_fleet("e2e-capacity", stt_max_sessions="1", assign_timeout_s="2") as fleet:
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

    # The running session is unaffected, and leaving gives its seat back.
    await first.stream_silence(0.5)
    assert first.events("error") == []
    await first.send_json({"type": "stop"})
    await first.wait_for("closed", timeout=10)
    assert first.close_code == 1000

    third = VoiceClient(one_seat_fleet.ws_url)
    ready = await third.connect()
    assert ready["type"] == "ready"
    await third.close()
