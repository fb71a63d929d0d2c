"""Audio arrives faster than real time: a whole reply may be sent while the user hears its first
sentences. Talking then still stops it, and history keeps only what was heard.

The fleet speaks with Piper, which synthesizes a long reply many times faster than it plays; with
Kokoro on two shared cores the margin would be too thin to talk into reliably. The chat model is
the other pace that matters: the small one the tests run generates on loaded shared cores more
slowly than its reply is spoken (measured: 480 tokens, 110 s of speech, in 166 s), so that no reply
would be sent before it has played. Between it and the fleet a relay passes each reply on whole
once it is complete (``Relay.whole_replies``), standing for a model server faster than speech, as a
GPU server is; the interruption is then streamed at once on ``audio_end``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fleet_processes import Fleet, running_fleet
from tests.speech import pcm, silence, speech, words
from tests.voice_turns import INTERRUPTION, LONG_REQUEST
from voicefleet.client import VoiceClient

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

OUTPUT_BYTES_PER_SECOND = 24000 * 2
# What must be left to play when the whole reply has been sent: room for the recognizer to hear
# the interruption start (it is streamed at real-time pace) on a loaded machine. A reply of five
# or six sentences is 20-40 s of speech, which Piper makes several times faster than real time.
LEFT_TO_PLAY_S = 5.0


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    with running_fleet(
        "e2e-tail",
        tap_chat=True,
        tts_provider="piper",
        llm_system_prompt="You are a storyteller. Tell stories of five or six sentences.",
    ) as running:
        assert running.chat_tap is not None
        running.chat_tap.whole_replies = True
        yield running


async def test_talking_over_a_reply_still_playing_after_it_was_sent_cuts_it_off(
    fleet: Fleet,
) -> None:
    client = VoiceClient(fleet.ws_url)
    await client.connect()
    try:
        await client.stream(pcm(silence(0.3), speech(LONG_REQUEST), silence(1.5)))
        # Smart Turn may end the turn at a pause mid-request; the reply that matters is the one
        # to the end of the request.
        request = await client.wait_for("transcript", final=True, timeout=30)
        while "dragon" not in words(str(request.fields["text"])):
            after = client.index_of(request) + 1
            request = await client.wait_for("transcript", final=True, timeout=30, after=after)
        # The whole reply is generated before any of it is passed on: on loaded cores that can
        # take a minute or more.
        start = await client.wait_for("audio_start", timeout=300, after=client.index_of(request))
        assert isinstance(start.data, dict)
        turn = start.data["turn"]
        end = await client.wait_for("audio_end", timeout=180, turn=turn)
        sent = sum(
            len(r.data)
            for r in client.received[client.index_of(start) : client.index_of(end)]
            if isinstance(r.data, bytes)
        )
        still_playing = sent / OUTPUT_BYTES_PER_SECOND - (end.at - start.at)
        print(f"\nreply of {sent / OUTPUT_BYTES_PER_SECOND:.1f}s sent, {still_playing:.1f}s left")
        assert still_playing > LEFT_TO_PLAY_S, f"only {still_playing:.1f}s of the reply to play"

        await client.stream(pcm(speech(INTERRUPTION), silence(2.0)))
        cancel = await client.wait_for("audio_cancel", timeout=30, turn=turn)
        assert client.index_of(cancel) > client.index_of(end)

        history = await fleet.history(client.session_id)
        reply = "".join(e["text"] for e in client.events("assistant_text") if e["turn"] == turn)
        story = next(h for h in history if "dragon" in h.user.lower())
        assert story.interrupted, history
        assert 0 < len(story.assistant) < len(reply.strip()), (story.assistant, reply)
    finally:
        await client.close()
