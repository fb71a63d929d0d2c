"""Preemptive replies: the fleet starts answering at the user's pause, and only the user's whole
request is ever answered aloud.

The request is Kokoro speech of one sentence cut where Smart Turn takes it for unfinished (see
tests/integration/test_stt_engines.py), so the pause ends no turn but starts a speculative one.
"""

from __future__ import annotations

import pytest

from tests.fleet_processes import Fleet
from tests.speech import pcm, silence, speech, words
from tests.voice_turns import audio_between
from voicefleet.client import Received, VoiceClient

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

REQUEST = "Could you please tell me what the weather will be like in Paris tomorrow?"
# Cut here, Smart Turn scores the first part below 0.01: the user is taken to go on.
CUT = 0.55
# Longer than the pause before the turn detector is asked (VF_STT_END_SILENCE_S, 0.25 s), shorter
# than the silence that ends the turn regardless (VF_STT_SILENCE_TIMEOUT_S, 1.2 s).
PAUSE_S = 0.8


def speculations(fleet: Fleet, session_id: str, event: str) -> list[int]:
    """The speculative turns the gateway logged ``event`` of for the session."""
    return [
        int(str(e["speculative_turn"]))
        for e in fleet.processes["gateway-1"].log_events()
        if e.get("event") == event and e.get("session_id") == session_id
    ]


def turns_heard(client: VoiceClient) -> set[int]:
    """Every turn the client got reply text, audio or a cancel of."""
    kinds = ("assistant_text", "audio_start", "audio_end", "audio_cancel")
    return {int(e["turn"]) for kind in kinds for e in client.events(kind)}


async def whole_reply(client: VoiceClient, final: Received) -> tuple[int, bytes]:
    start = await client.wait_for("audio_start", timeout=120, after=client.index_of(final))
    turn = int(start.fields["turn"])
    end = await client.wait_for("audio_end", timeout=180, turn=turn)
    audio = audio_between(client, start, end)
    return turn, audio


async def test_a_user_who_pauses_mid_request_and_goes_on_hears_one_answer_to_all_of_it(
    fleet: Fleet,
) -> None:
    full = speech(REQUEST)
    cut = int(full.size * CUT)
    assert fleet.chat_tap is not None
    asked = len(fleet.chat_tap.chat_messages())
    client = VoiceClient(fleet.ws_url)
    await client.connect()
    try:
        await client.stream(
            pcm(silence(0.3), full[:cut], silence(PAUSE_S), full[cut:], silence(2.5))
        )
        final = await client.wait_for("transcript", final=True, timeout=60)
        assert {"could", "paris", "tomorrow"} <= words(final.fields["text"]), final.fields
        turn, audio = await whole_reply(client, final)
        assert len(audio) > 24000 * 2 * 0.3, "less than 0.3 s of reply audio"

        # The pause started a reply to its first part, which was cancelled when the user went on.
        session = client.session_id
        started = speculations(fleet, session, "speculation_started")
        assert started, "no speculation started at the pause"
        assert speculations(fleet, session, "speculation_wasted") == started
        assert turn not in started
        # Its request did reach the chat model, so there was a reply to keep from the client.
        requests = [m[-1]["content"] for m in fleet.chat_tap.chat_messages()[asked:]]
        assert any("tomorrow" not in words(r) for r in requests), requests

        # Nothing of it reached the client: one final transcript, one reply, of one turn.
        finals = [e for e in client.events("transcript") if e["final"]]
        assert len(finals) == 1, finals
        assert turns_heard(client) == {turn}, client.received
        assert len(client.events("audio_start")) == 1
        assert not client.events("error"), client.events("error")

        # Nor history: it holds the whole request, answered once.
        history = await fleet.history(session)
        assert len(history) == 1, history
        assert {"could", "paris", "tomorrow"} <= words(history[0].user), history
    finally:
        await client.close()


async def test_a_pause_that_ends_the_request_is_answered_by_the_speculation_started_at_it(
    fleet: Fleet,
) -> None:
    full = speech(REQUEST)
    client = VoiceClient(fleet.ws_url)
    await client.connect()
    try:
        # The user stops where the turn detector expects more: the silence timeout ends the turn.
        await client.stream(pcm(silence(0.3), full[: int(full.size * CUT)], silence(3.0)))
        final = await client.wait_for("transcript", final=True, timeout=60)
        turn, audio = await whole_reply(client, final)
        assert len(audio) > 24000 * 2 * 0.3, "less than 0.3 s of reply audio"

        session = client.session_id
        assert speculations(fleet, session, "speculation_used") == [turn]
        assert speculations(fleet, session, "speculation_started") == [turn]
        assert turns_heard(client) == {turn}
        reply = "".join(e["text"] for e in client.events("assistant_text"))
        assert reply.strip()
        assert not client.events("error"), client.events("error")

        # Recorded as any turn: what the user said, and the reply they heard.
        history = await fleet.history(session)
        assert len(history) == 1, history
        assert words(history[0].user) == words(final.fields["text"])
        assert not history[0].interrupted
        assert history[0].assistant and words(history[0].assistant) <= words(reply)
    finally:
        await client.close()
