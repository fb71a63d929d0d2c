"""A person talks to the fleet: real processes, real broker and Redis, real models.

The spoken question is Kokoro speech streamed at real-time pace, then silence, exactly as a
browser would send it.
"""

from __future__ import annotations

import pytest

from tests.fleet_processes import Fleet
from tests.replies import assert_nothing_of_a_cancelled_turn_after_its_cancel
from tests.speech import likeness, pcm, silence, speech, transcribe_reply, words
from voicefleet.client import VoiceClient

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

QUESTION = "What is the capital of France?"
LONG_REQUEST = "Please tell me a long story about a brave knight and a friendly dragon."
INTERRUPTION = "Stop. What is two plus two?"


def turn_audio(client: VoiceClient, start_index: int, end_index: int) -> bytes:
    return b"".join(
        r.data
        for r in client.received[start_index:end_index]
        if r.kind == "audio" and isinstance(r.data, bytes)
    )


async def test_spoken_question_gets_a_spoken_answer(fleet: Fleet) -> None:
    client = VoiceClient(fleet.ws_url)
    ready = await client.connect()
    assert ready["resumed"] is False
    try:
        await client.stream(pcm(silence(0.5), speech(QUESTION), silence(3.0)))

        final = await client.wait_for("transcript", final=True, timeout=30)
        assert isinstance(final.data, dict)
        assert {"capital", "france"} <= words(final.data["text"]), final.data

        start = await client.wait_for("audio_start", timeout=60, after=client.index_of(final))
        assert isinstance(start.data, dict)
        turn = start.data["turn"]
        assert start.data["sampleRate"] == 24000
        end = await client.wait_for("audio_end", timeout=120, turn=turn)

        reply_audio = turn_audio(client, client.index_of(start), client.index_of(end))
        assert len(reply_audio) > 24000 * 2 * 0.5, "less than half a second of reply audio"
        assistant_text = "".join(
            e["text"] for e in client.events("assistant_text") if e["turn"] == turn
        )
        assert assistant_text.strip()

        heard = transcribe_reply(reply_audio)
        # Whisper hearing the assistant's text back proves the audio is that reply.
        assert likeness(heard, assistant_text) >= 0.5, (heard, assistant_text)
        assert not client.events("error"), client.events("error")
    finally:
        await client.close()


async def test_barge_in_stops_old_audio(fleet: Fleet) -> None:
    assert fleet.chat_tap is not None
    # The model answers in a few short sentences, which it can finish, and TTS speak, before the
    # interruption is heard: the rest of the reply comes only once the barge-in is seen.
    fleet.chat_tap.hold_after_first_sentence = True
    client = VoiceClient(fleet.ws_url)
    await client.connect()
    try:
        await client.stream(pcm(silence(0.3), speech(LONG_REQUEST)))
        await client.stream_silence(1.5)
        start = await client.wait_for("audio_start", timeout=90)
        assert isinstance(start.data, dict)
        old_turn = start.data["turn"]
        # Talk over the reply as soon as its audio flows: the rest of it is still being made.
        await client.wait_for("audio", timeout=30, after=client.index_of(start))
        await client.stream(pcm(speech(INTERRUPTION), silence(2.5)))

        cancel = await client.wait_for("audio_cancel", timeout=30, turn=old_turn)
        fleet.chat_tap.release()
        before_cancel = client.received[: client.index_of(cancel)]
        assert not any(
            r.kind == "audio_end" and isinstance(r.data, dict) and r.data["turn"] == old_turn
            for r in before_cancel
        ), "the old reply had all been sent before the barge-in: nothing was cut"

        # Everything up to the end of the answer to the interruption, not only what had
        # arrived by the cancel: stale work still in the fleet must never reach the client.
        end = await client.wait_for("audio_end", timeout=120, after=client.index_of(cancel))
        received = client.received[: client.index_of(end) + 1]
        assert_nothing_of_a_cancelled_turn_after_its_cancel(received)
        assert isinstance(end.data, dict) and end.data["turn"] > old_turn

        final = await client.wait_for(
            "transcript", final=True, timeout=30, after=client.index_of(cancel)
        )
        assert isinstance(final.data, dict)
        assert {"two", "plus"} <= words(final.data["text"]) or "2" in final.data["text"]

        history = await fleet.history(client.session_id)
        # The request may itself have been split (Smart Turn can end the turn at a pause, and
        # the rest of the sentence then barges in on that turn); the reply to it was cut short.
        cut = [h for h in history if h.interrupted]
        assert any("knight" in h.user.lower() or "dragon" in h.user.lower() for h in cut), history
    finally:
        fleet.chat_tap.release()
        await client.close()


async def test_a_request_continued_after_a_pause_is_answered_whole(fleet: Fleet) -> None:
    client = VoiceClient(fleet.ws_url)
    await client.connect()
    try:
        await client.stream(
            pcm(
                silence(0.3),
                speech("Tell me a story about a brave knight."),
                silence(0.6),
                speech("And put a dragon in it."),
                silence(2.0),
            )
        )
        start = await client.wait_for("audio_start", timeout=90)
        assert isinstance(start.data, dict)
        await client.wait_for("audio_end", timeout=180, turn=start.data["turn"])
        # Every final transcript precedes the reply it gets, so all of them are in by now.
        finals = [e for e in client.events("transcript") if e["final"] and e["text"].strip()]
        # Smart Turn ends a turn after the first sentence; the pause is shorter than a reply takes.
        assert len(finals) == 2, finals
        assert {e["turn"] for e in client.events("audio_start")} == {start.data["turn"]}

        history = await fleet.history(client.session_id)
        assert len(history) == 1, history
        assert {"knight", "dragon"} <= words(history[0].user), history
    finally:
        await client.close()
