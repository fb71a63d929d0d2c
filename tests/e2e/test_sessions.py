"""Sessions outlive connections: a client can come back and continue its conversation."""

from __future__ import annotations

import pytest

from fleet.state import Exchange, SessionStore, connect_redis
from tests.fleet_processes import Fleet
from voicefleet.client import VoiceClient

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


async def test_reconnecting_with_the_session_id_resumes_the_conversation(fleet: Fleet) -> None:
    first = VoiceClient(fleet.ws_url)
    ready = await first.connect()
    assert ready["resumed"] is False
    await first.close()

    store = SessionStore(connect_redis(fleet.settings), fleet.settings)
    try:
        await store.record_exchange(
            first.session_id, Exchange("Hi there.", "Hello! How can I help?")
        )
        again = VoiceClient(fleet.ws_url)
        resumed = await again.connect(sessionId=first.session_id, resumeSecret=first.resume_secret)
        await again.close()
        assert resumed["sessionId"] == first.session_id
        assert resumed["resumed"] is True
        assert await store.history(first.session_id) == [
            Exchange("Hi there.", "Hello! How can I help?")
        ]
    finally:
        await store.redis.aclose()


async def test_an_unknown_session_id_starts_a_new_conversation(fleet: Fleet) -> None:
    client = VoiceClient(fleet.ws_url)
    ready = await client.connect(sessionId="doesnotexist0000")
    await client.close()
    assert ready["resumed"] is False
    assert ready["sessionId"] != "doesnotexist0000"
