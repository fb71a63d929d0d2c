"""Spoken turns answered by vLLM, the server every deployment profile runs: the reply, the abort
of a reply talked over, batching of concurrent sessions, and what each request carries.

vLLM's CPU build here serves the small chat model with the deployment's arguments
(tests/vllm_server.py); what these tests read about it comes from vLLM itself, its /metrics and
its log.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import pytest

from fleet.contracts import TurnRequest
from tests.fleet_processes import Fleet
from tests.speech import pcm, silence, speech, spoken_words, words
from tests.vllm_server import VllmServer
from tests.voice_turns import (
    INTERRUPTION,
    LONG_REQUEST,
    QUESTION,
    SECOND_QUESTION,
    STORYTELLER,
    voice_turn,
)
from voicefleet.client import VoiceClient
from workers.llm_bridge.chat import OpenAICompatibleChat
from workers.llm_bridge.conversation import build_messages
from workers.llm_bridge.main import reply_seed

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
FINISHED = "vllm:request_success_total"  # finished requests, by reason (stop, length, ...)
SESSIONS = 4  # talking at once in the batching test


async def metrics(vllm: VllmServer) -> dict[str, float]:
    return await asyncio.to_thread(vllm.metrics)


async def until(condition: Callable[[], bool], patience: float, what: str) -> None:
    """Wait for something another process shows only in a file or on /metrics."""
    try:
        async with asyncio.timeout(patience):
            while not await asyncio.to_thread(condition):  # noqa: ASYNC110
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"{what} not seen within {patience:g} s") from None


async def test_a_spoken_question_is_answered_by_vllm(vllm_fleet: Fleet, vllm: VllmServer) -> None:
    finished = (await metrics(vllm))[FINISHED]
    client = VoiceClient(vllm_fleet.ws_url)
    await client.connect()
    try:
        turn = await voice_turn(client, QUESTION)
    finally:
        await client.close()
    assert {"capital", "france"} <= words(turn.heard), turn.heard
    assert spoken_words(turn.reply), "the reply had no words"
    assert not client.events("error"), client.events("error")
    assert (await metrics(vllm))[FINISHED] > finished, "vLLM finished no request for the turn"


async def test_the_conversation_and_the_turns_seed_reach_vllm(
    vllm_fleet: Fleet, vllm: VllmServer
) -> None:
    """The second turn's request carries the conversation so far and the turn's seed; sent to
    vLLM again, that very request gives the same reply (the seed fixes the sampling)."""
    tap = vllm_fleet.chat_tap
    assert tap is not None
    client = VoiceClient(vllm_fleet.ws_url)
    await client.connect()
    try:
        first = await voice_turn(client, QUESTION)
        asked = len(tap.requests())
        second = await voice_turn(client, SECOND_QUESTION)
    finally:
        await client.close()

    body = [b for b in tap.requests()[asked:] if "messages" in b][-1]
    messages = body["messages"]
    # The first reply may have been cut where the second question began (replies here run
    # long); the history has what the user heard of it, and the request has that history.
    history = await vllm_fleet.history(client.session_id)
    assert spoken_words(history[0].user) == spoken_words(first.heard), history
    assert spoken_words(first.reply)[: len(spoken_words(history[0].assistant))] == spoken_words(
        history[0].assistant
    ), history
    assert spoken_words(history[-1].user) == spoken_words(second.heard), history
    assert messages == build_messages(STORYTELLER, history[:-1], history[-1].user)
    assert body["model"] == vllm.served_model_name
    assert body["seed"] == reply_seed(TurnRequest(client.session_id, second.number, second.heard))

    async with OpenAICompatibleChat(vllm.url, body["model"], vllm.api_key, 60) as chat:
        again = [
            delta
            async for delta in chat.stream(
                messages,
                max_tokens=body["max_tokens"],
                temperature=body["temperature"],
                seed=body["seed"],
            )
        ]
    assert spoken_words("".join(again)) == spoken_words(second.reply)


async def test_talking_over_a_reply_aborts_its_vllm_request_and_frees_its_slot(
    vllm_fleet: Fleet, vllm: VllmServer
) -> None:
    aborted = len(vllm.aborted_requests())
    client = VoiceClient(vllm_fleet.ws_url)
    await client.connect()
    try:
        await client.stream(pcm(silence(0.3), speech(LONG_REQUEST), silence(1.5)))
        start = await client.wait_for("audio_start", timeout=120)
        assert isinstance(start.data, dict)
        old_turn = start.data["turn"]
        await client.wait_for("audio", timeout=30, after=client.index_of(start))
        assert (await metrics(vllm))[RUNNING] >= 1, (
            "vLLM had finished the reply before the user could talk over it: nothing to abort"
        )

        await client.stream(pcm(speech(INTERRUPTION), silence(2.5)))
        cancel = await client.wait_for("audio_cancel", timeout=30, turn=old_turn)
        await until(lambda: len(vllm.aborted_requests()) > aborted, 60, "an abort in vLLM's log")

        # The slot is free: the next turn is answered, and once it is, vLLM runs nothing.
        end = await client.wait_for("audio_end", timeout=180, after=client.index_of(cancel))
        assert isinstance(end.data, dict) and end.data["turn"] > old_turn
        now = await metrics(vllm)
        assert (now[RUNNING], now[WAITING]) == (0, 0), vllm.tail()
    finally:
        await client.close()


async def test_sessions_talking_at_once_are_generated_in_one_batch(
    vllm_fleet: Fleet, vllm: VllmServer
) -> None:
    clients = [VoiceClient(vllm_fleet.ws_url) for _ in range(SESSIONS)]
    most_running = 0.0

    async def watch() -> None:
        nonlocal most_running
        while True:
            most_running = max(most_running, (await metrics(vllm))[RUNNING])
            await asyncio.sleep(0.1)

    watching = asyncio.create_task(watch())
    try:
        for client in clients:
            await client.connect()
        utterance = pcm(silence(0.3), speech(LONG_REQUEST), silence(1.5))
        await asyncio.gather(*(client.stream(utterance) for client in clients))
        for client in clients:
            await client.wait_for("audio_start", timeout=180)
        # Each story runs to the token limit: they are all still being generated.
        await until(lambda: most_running >= 2, 120, "two requests running at once in vLLM")
        assert not [c.events("error") for c in clients if c.events("error")]
    finally:
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching
        for client in clients:
            await client.close()
    print(f"\nat most {most_running:g} of {SESSIONS} sessions' requests running at once")
