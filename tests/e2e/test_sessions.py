"""Sessions outlive connections: a client can come back and continue its conversation."""

from __future__ import annotations

import pytest

from fleet.settings import Settings
from tests.fleet_processes import Fleet
from tests.speech import spoken_words
from tests.voice_turns import QUESTION, SECOND_QUESTION, talk_until_closed, voice_turn
from voicefleet.client import SessionRefused, VoiceClient

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def said_in(messages: list[dict[str, str]], role: str) -> list[list[str]]:
    """The words of each message of ``role``, in order."""
    return [spoken_words(m["content"]) for m in messages if m["role"] == role]


async def test_reconnecting_with_the_session_id_resumes_the_conversation(fleet: Fleet) -> None:
    """The resumed session's next turn is numbered after the old ones, and the model is shown
    the turns of the earlier connection."""
    assert fleet.chat_tap is not None
    first = VoiceClient(fleet.ws_url)
    ready = await first.connect()
    assert ready["resumed"] is False
    try:
        before = await voice_turn(first, QUESTION)
    finally:
        await first.close()

    again = VoiceClient(fleet.ws_url)
    resumed = await again.connect(sessionId=first.session_id, resumeSecret=first.resume_secret)
    try:
        assert (resumed["sessionId"], resumed["resumed"]) == (first.session_id, True)
        asked = len(fleet.chat_tap.chat_messages())
        after = await voice_turn(again, SECOND_QUESTION)
        assert after.number > before.number, (before.number, after.number)
        assert not again.events("error"), again.events("error")
    finally:
        await again.close()

    # What the chat server was asked for the resumed turn: the earlier exchange, then the new
    # question.
    requests = fleet.chat_tap.chat_messages()[asked:]
    assert requests, "the resumed turn never reached the chat server"
    messages = requests[-1]
    configured = Settings()  # the fleet runs with the default VF_LLM_MODEL and system prompt
    assert messages[0] == {"role": "system", "content": configured.llm_system_prompt}
    models = {body.get("model") for body in fleet.chat_tap.requests() if "messages" in body}
    assert models == {configured.llm_model}
    assert said_in(messages, "user") == [spoken_words(before.heard), spoken_words(after.heard)]
    assert said_in(messages, "assistant") == [spoken_words(before.reply)], messages


async def test_an_unknown_session_id_starts_a_new_conversation(fleet: Fleet) -> None:
    client = VoiceClient(fleet.ws_url)
    ready = await client.connect(sessionId="doesnotexist0000")
    await client.close()
    assert ready["resumed"] is False
    assert ready["sessionId"] != "doesnotexist0000"


async def test_a_session_past_its_time_limit_is_closed_and_can_be_resumed(fleet: Fleet) -> None:
    """``session_expired`` (1008) ends the connection at VF_MAX_SESSION_S, not the conversation."""
    with fleet.extra_gateway("gateway-short", VF_MAX_SESSION_S="3") as short_url:
        client = VoiceClient(short_url)
        await client.connect()
        # Keep talking (silence) so that only the time limit can end the connection.
        error = await talk_until_closed(client, bytes(30 * 32000), patience=30)
        assert isinstance(error.data, dict) and error.data["code"] == "session_expired", error
        assert client.close_code == 1008

    again = VoiceClient(fleet.ws_url)
    try:
        ready = await again.connect(sessionId=client.session_id, resumeSecret=client.resume_secret)
        assert ready["resumed"] is True
    finally:
        await again.close()


async def test_a_server_with_a_token_refuses_clients_without_it(fleet: Fleet) -> None:
    """VF_AUTH_TOKEN: a missing or wrong ``token`` gets ``unauthorized`` and close 1008."""
    with fleet.extra_gateway("gateway-token", VF_AUTH_TOKEN="s3cret") as url:
        for token in (None, "wrong"):
            client = VoiceClient(url)
            start = {} if token is None else {"token": token}
            with pytest.raises(SessionRefused) as refused:
                await client.connect(**start)
            await client.wait_for("closed", timeout=10)
            await client.close()
            assert refused.value.code == "unauthorized", (token, refused.value)
            assert client.close_code == 1008, token
        allowed = VoiceClient(url)
        try:
            ready = await allowed.connect(token="s3cret")
            assert ready["type"] == "ready"
        finally:
            await allowed.close()
