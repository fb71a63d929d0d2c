"""A session belongs to whoever holds its resume secret: its id alone opens nothing.

``ready`` needs only a gateway and an STT worker (the lease of the session's audio), so these
tests run a fleet of just those, with two gateways for the cross-gateway cases.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator

import pytest

from fleet.contracts import TranscriptFinal
from fleet.state import Exchange, SessionStore, connect_redis
from fleet.topology import Bus
from tests.fleet_processes import Fleet, running_fleet
from voicefleet.client import VoiceClient

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

EARLIER = Exchange("What is the capital of France?", "Paris.")


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    with running_fleet("ownership", llm=0, tts=0, gateways=2) as running:
        yield running


@pytest.fixture
async def store(fleet: Fleet) -> AsyncIterator[SessionStore]:
    store = SessionStore(connect_redis(fleet.settings), fleet.settings)
    try:
        yield store
    finally:
        await store.redis.aclose()


async def owned_conversation(fleet: Fleet, store: SessionStore) -> VoiceClient:
    """A connected client whose session has one exchange of history and is at turn 1."""
    owner = VoiceClient(fleet.ws_url)
    await owner.connect()
    await store.record_exchange(owner.session_id, EARLIER)
    await store.next_turn(owner.session_id)
    return owner


@pytest.mark.parametrize("secret", [None, "wrong-secret-0123456789abcdef"])
async def test_a_session_id_without_its_secret_opens_a_new_session(
    fleet: Fleet, store: SessionStore, secret: str | None
) -> None:
    owner = await owned_conversation(fleet, store)
    intruder = VoiceClient(fleet.ws_url_of(1))
    try:
        start = {"sessionId": owner.session_id}
        if secret is not None:
            start["resumeSecret"] = secret
        ready = await intruder.connect(**start)
        assert ready["resumed"] is False
        assert intruder.session_id != owner.session_id
        assert intruder.resume_secret != owner.resume_secret
        # The new session starts empty, and the owner's conversation is untouched by it.
        assert await store.history(intruder.session_id) == []
        assert await store.current_turn(intruder.session_id) == 0
        assert await store.history(owner.session_id) == [EARLIER]
        assert await store.current_turn(owner.session_id) == 1
        # Nothing of the owner's session reached the intruder's connection.
        assert [r.kind for r in intruder.received] == ["ready"]
    finally:
        await intruder.close()
        await owner.close()


async def test_the_owner_resumes_with_its_secret_on_any_gateway(
    fleet: Fleet, store: SessionStore
) -> None:
    owner = await owned_conversation(fleet, store)
    await owner.close()
    for gateway in (0, 1):
        again = VoiceClient(fleet.ws_url_of(gateway))
        ready = await again.connect(sessionId=owner.session_id, resumeSecret=owner.resume_secret)
        await again.close()
        assert ready["resumed"] is True
        assert again.session_id == owner.session_id
        # Each ready hands out a new secret: a secret seen once does not resume for ever.
        assert again.resume_secret != owner.resume_secret
        assert await store.history(owner.session_id) == [EARLIER]
        assert await store.next_turn(owner.session_id) == 2 + gateway
        owner.resume_secret = again.resume_secret


async def test_a_superseded_secret_no_longer_resumes(fleet: Fleet, store: SessionStore) -> None:
    owner = await owned_conversation(fleet, store)
    await owner.close()
    first_secret = owner.resume_secret
    again = VoiceClient(fleet.ws_url)
    await again.connect(sessionId=owner.session_id, resumeSecret=first_secret)
    await again.close()
    late = VoiceClient(fleet.ws_url)
    ready = await late.connect(sessionId=owner.session_id, resumeSecret=first_secret)
    await late.close()
    assert ready["resumed"] is False
    assert late.session_id != owner.session_id


async def test_no_gateway_log_line_holds_a_resume_secret_or_token(
    fleet: Fleet, store: SessionStore
) -> None:
    owner = await owned_conversation(fleet, store)
    await owner.close()
    again = VoiceClient(fleet.ws_url_of(1))
    # A token the client sends is as secret as the resume secret, even where none is required.
    token = "token-that-must-not-be-logged-0123"
    await again.connect(sessionId=owner.session_id, resumeSecret=owner.resume_secret, token=token)
    await again.close()
    secrets = {owner.resume_secret, again.resume_secret, token}
    for name in ("gateway-1", "gateway-2"):
        log = fleet.processes[name].log_path.read_text(errors="replace")
        assert owner.session_id in log, f"{name} logged nothing of the session"
        leaked = [line for line in log.splitlines() if any(s in line for s in secrets)]
        assert leaked == [], f"{name} logged a resume secret or token"


@pytest.mark.parametrize("gateway", [0, 1], ids=["same-gateway", "other-gateway"])
async def test_a_resume_closes_the_older_connection_within_a_second(
    fleet: Fleet, gateway: int
) -> None:
    owner = VoiceClient(fleet.ws_url)
    await owner.connect()
    again = VoiceClient(fleet.ws_url_of(gateway))
    try:
        resumed_at = time.monotonic()
        await again.connect(sessionId=owner.session_id, resumeSecret=owner.resume_secret)
        closed = await owner.wait_for("closed", timeout=5)
        error = await owner.wait_for("error", timeout=0)
        assert error.data == {
            "type": "error",
            "code": "session_taken_over",
            "message": "the session was resumed on another connection",
        }
        assert owner.close_code == 1008
        assert closed.at - resumed_at < 1.0
        # The error is the last the older connection hears of the session; the new one goes on.
        assert [r.kind for r in owner.received[owner.index_of(error) :]] == ["error", "closed"]
        assert again.close_code is None
    finally:
        await again.close()
        await owner.close()


async def test_a_connection_whose_stream_is_no_longer_current_starts_no_turn(
    fleet: Fleet, store: SessionStore
) -> None:
    owner = VoiceClient(fleet.ws_url)
    await owner.connect()
    # A resume elsewhere whose notice has not reached this connection yet: Redis already names
    # the new stream when a final transcript arrives.
    await store.open_session(owner.session_id, "gateway-elsewhere", "stream-elsewhere", "digest")
    bus = await Bus.connect(fleet.settings, "test-ownership")
    try:
        await bus.publish(TranscriptFinal(owner.session_id, "What time is it?", upto_seq=0))
        await owner.wait_for("closed", timeout=5)
    finally:
        await bus.close()
        await owner.close()
    assert [r.kind for r in owner.received] == ["ready", "error", "closed"]
    assert owner.events("error")[0]["code"] == "session_taken_over"
    assert await store.current_turn(owner.session_id) == 0
