"""A listener's "uh-huh" over a reply pauses it, then it goes on; a real interruption stops it.

Real fleet, real models: the user's voice is Kokoro speech streamed at real-time pace. The chat
relay holds each reply after its first sentence until the user has spoken over it, so the reply
is still being made (and so still playing) when they do.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.event_tap import tapping
from tests.fleet_processes import Fleet
from tests.replies import (
    assert_heard_each_chunk_once,
    assert_nothing_of_a_cancelled_turn_after_its_cancel,
    heard_reply,
)
from tests.speech import pcm, silence, speech, wordless, words
from voicefleet.client import Received, VoiceClient

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

REQUEST = "Please tell me a long story about a brave knight."


async def a_reply_playing(client: VoiceClient) -> int:
    """Ask for a story; return its turn once its first audio has arrived."""
    await client.stream(pcm(silence(0.3), speech(REQUEST), silence(1.5)))
    start = await client.wait_for("audio_start", timeout=90)
    assert isinstance(start.data, dict)
    await client.wait_for("audio", timeout=30, after=client.index_of(start))
    return int(start.data["turn"])


def between(client: VoiceClient, first: Received, last: Received) -> list[Received]:
    return client.received[client.index_of(first) + 1 : client.index_of(last)]


async def over_the_reply_then_resumed(fleet: Fleet, cue: bytes, url: str = "") -> VoiceClient:
    """Play ``cue`` over a reply: it pauses, resumes, and the whole reply follows, unanswered."""
    assert fleet.chat_tap is not None
    fleet.chat_tap.hold_after_first_sentence = True
    client = VoiceClient(url or fleet.ws_url)
    await client.connect()
    try:
        async with tapping(fleet.settings, client.session_id) as tap:
            turn = await a_reply_playing(client)
            asked = len(fleet.chat_tap.chat_messages())
            talking = asyncio.create_task(client.stream(cue + pcm(silence(2.5))))
            pause = await client.wait_for("audio_pause", timeout=30, turn=turn)
            # The rest of the reply is made while it stands paused.
            fleet.chat_tap.release()
            resume = await client.wait_for("audio_resume", timeout=30, turn=turn)
            reply = await heard_reply(client, tap, turn, timeout=180)
            await talking

        assert client.events("audio_cancel") == [], "the reply was cancelled"
        assert not [r for r in between(client, pause, resume) if r.kind == "audio"], (
            "reply audio was sent while paused"
        )
        end = await client.wait_for("audio_end", timeout=1, turn=turn)
        assert [r for r in between(client, resume, end) if r.kind == "audio"], (
            "nothing of the reply followed the resume"
        )
        # Every chunk of every sentence reached the client once, in order: nothing lost or
        # repeated by the pause.
        assert_heard_each_chunk_once(reply)
        # Not a new turn: no other reply, the chat model was not asked again.
        assert {e["turn"] for e in client.events("audio_start")} == {turn}
        assert {e["turn"] for e in client.events("assistant_text")} == {turn}
        assert len(fleet.chat_tap.chat_messages()) == asked
        history = await fleet.history(client.session_id)
        assert len(history) == 1 and not history[0].interrupted, history
        assert "story" in words(history[0].user), history
    finally:
        fleet.chat_tap.release()
        await client.close()
    return client


async def test_an_acknowledgement_pauses_the_reply_and_then_the_rest_of_it_follows(
    fleet: Fleet,
) -> None:
    await over_the_reply_then_resumed(fleet, pcm(speech("Uh-huh.", voice="am_adam")))


async def test_a_pause_without_words_in_time_resumes(fleet: Fleet) -> None:
    """Speech starts, no words come within VF_BARGE_IN_DECISION_S (made short here, so that the
    recognizer cannot have any by then): the reply resumes on its own."""
    with fleet.extra_gateway("gateway-quick", VF_BARGE_IN_DECISION_S="0.05") as url:
        client = await over_the_reply_then_resumed(fleet, pcm(wordless("Ha ha.", "af_heart")), url)
    resume = await client.wait_for("audio_resume", timeout=1)
    pause = await client.wait_for("audio_pause", timeout=1)
    heard = [
        r
        for r in between(client, pause, resume)
        if r.kind == "transcript" and isinstance(r.data, dict) and words(str(r.data["text"]))
    ]
    assert not heard, f"the resume waited for words: {heard}"


async def test_a_real_interruption_pauses_then_cancels_the_reply_with_nothing_stale_after(
    fleet: Fleet,
) -> None:
    assert fleet.chat_tap is not None
    fleet.chat_tap.hold_after_first_sentence = True
    client = VoiceClient(fleet.ws_url)
    await client.connect()
    try:
        turn = await a_reply_playing(client)
        await client.stream(
            pcm(speech("Wait, tell me about a dragon instead.", voice="am_adam"), silence(2.5))
        )
        cancel = await client.wait_for("audio_cancel", timeout=30, turn=turn)
        fleet.chat_tap.release()
        pause = await client.wait_for("audio_pause", timeout=1, turn=turn)
        assert client.index_of(pause) < client.index_of(cancel)
        # Words that come after VF_BARGE_IN_DECISION_S find the reply resumed: they cancel it
        # then. Either way nothing of it resumes after the cancel.
        assert all(
            client.index_of(r) < client.index_of(cancel)
            for r in client.received
            if r.kind == "audio_resume"
        )

        end = await client.wait_for("audio_end", timeout=120, after=client.index_of(cancel))
        assert_nothing_of_a_cancelled_turn_after_its_cancel(client.received[: client.index_of(end)])
        final = await client.wait_for(
            "transcript", final=True, timeout=1, after=client.index_of(cancel)
        )
        assert isinstance(final.data, dict) and "dragon" in words(final.data["text"]), final.data
    finally:
        fleet.chat_tap.release()
        await client.close()
