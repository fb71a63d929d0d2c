"""Workers skip work of a superseded turn, and stop it when the turn changes mid-way.

The real TTS worker (Kokoro) and LLM bridge run in this process on the real broker and Redis;
the bridge talks to the real local chat server (`voicefleet llm-server`, llama.cpp), whose log
shows whether it was asked and whether the bridge hung up on it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from fleet.contracts import (
    AssistantDelta,
    AudioOut,
    TranscriptPartial,
    TtsRequest,
    TurnDone,
    TurnRequest,
)
from fleet.settings import Settings
from fleet.state import SessionStore
from fleet.topology import Bus
from fleet.worker import Runtime, start_runtime
from tests.event_tap import EventTap
from tests.fleet_processes import FleetProcess
from tests.role_processes import local_chat_server, printed
from workers.llm_bridge.chat import OpenAICompatibleChat
from workers.llm_bridge.main import LlmBridge
from workers.tts.main import TtsWorker
from workers.tts.providers import create_synthesizer

pytestmark = pytest.mark.timeout(120)

# What the chat server (llama-server) prints when it starts generating for a request, and when
# the client of a stream hangs up, after which it stops generating for that request.
STARTED = "processing task"
DISCONNECTED = "cancel task"


@pytest.fixture
async def session(store: SessionStore) -> str:
    session_id = uuid.uuid4().hex
    await store.open_session(session_id, "gateway-test", "stream-1", "digest")
    return session_id


@pytest.fixture(scope="module")
def synthesizer() -> Any:
    return create_synthesizer(Settings())


async def test_tts_skips_a_sentence_of_a_superseded_turn(
    settings: Settings, bus: Bus, store: SessionStore, session: str, synthesizer: Any
) -> None:
    stale_turn = await store.next_turn(session)
    current_turn = await store.next_turn(session)
    tap = await EventTap.open(bus, session)
    async with start_runtime(settings, "tts", "tts-test") as runtime:
        worker = TtsWorker(runtime, synthesizer)
        await worker.handle(TtsRequest(session, stale_turn, 0, "This reply is no longer wanted."))
        await worker.handle(TtsRequest(session, current_turn, 0, "This one is."))
    await tap.caught_up(bus, session)
    audio = tap.of(AudioOut)
    assert {m.turn for m in audio} == {current_turn}
    assert audio[-1].last


async def test_tts_stops_a_sentence_when_the_user_barges_in_while_its_audio_flows(
    settings: Settings, bus: Bus, store: SessionStore, session: str, synthesizer: Any
) -> None:
    turn = await store.next_turn(session)
    tap = await EventTap.open(bus, session)
    # Several of Kokoro's phoneme batches: audio goes out batch by batch, so the cut lands
    # between chunks of one batch or while the next is being synthesized, never after the end.
    long_text = " ".join(["This sentence goes on and on for quite a while, and then"] * 24) + "."
    async with start_runtime(settings, "tts", "tts-test") as runtime:
        worker = TtsWorker(runtime, synthesizer)
        speaking = asyncio.create_task(worker.handle(TtsRequest(session, turn, 0, long_text)))
        await tap.wait_for(AudioOut, timeout=90)  # the sentence's audio is flowing
        await store.next_turn(session)  # barge-in
        await asyncio.wait_for(speaking, 90)
        await tap.caught_up(bus, session)
    audio = tap.of(AudioOut)
    assert [m.chunk for m in audio] == list(range(len(audio))), "chunks in order, once"
    assert not any(m.last for m in audio), "the cancelled sentence must not be played to its end"


@pytest.fixture(scope="module")
def chat_server() -> Iterator[tuple[FleetProcess, str]]:
    """The local chat server, and its OpenAI-compatible base URL."""
    with local_chat_server() as running:
        yield running


def chat_requests(server: FleetProcess) -> int:
    """How many chat completions the server has started generating (its log)."""
    return server.log_path.read_text(errors="replace").count(STARTED)


def bridge(runtime: Runtime, url: str) -> LlmBridge:
    settings = runtime.settings
    return LlmBridge(
        runtime, OpenAICompatibleChat(url, settings.llm_model, settings.llm_api_key, 60.0)
    )


async def test_llm_bridge_closes_the_stream_of_a_cancelled_turn(
    settings: Settings,
    bus: Bus,
    store: SessionStore,
    session: str,
    chat_server: tuple[FleetProcess, str],
) -> None:
    server, url = chat_server
    turn = await store.next_turn(session)
    tap = await EventTap.open(bus, session)
    asked = chat_requests(server)
    # Long enough that the server would still be generating for a minute if nobody hung up. At
    # temperature 0 the reply is the same for every session id (the seed is per session and turn);
    # sampled, or under the default voice-assistant prompt, the small model may answer in a line.
    long_replies = settings.model_copy(
        update={
            "llm_max_tokens": 1500,
            "llm_temperature": 0.0,
            "llm_system_prompt": "You are a storyteller. Your stories are long and detailed.",
        }
    )
    async with start_runtime(long_replies, "llm", "llm-test") as runtime:
        streaming = asyncio.create_task(
            bridge(runtime, url).handle(
                TurnRequest(
                    session, turn, "Tell me a long story about a brave knight and a dragon."
                )
            )
        )
        await tap.wait_for(AssistantDelta, lambda m: m.index >= 10, timeout=60)  # it streams
        await store.next_turn(session)  # barge-in
        await asyncio.wait_for(streaming, 30)
        await tap.caught_up(bus, session)
    assert not tap.of(TurnDone), "a cancelled turn is not 'done'"
    assert chat_requests(server) == asked + 1
    # The server saw the client hang up, so it stopped generating and is free for others.
    await printed(server, DISCONNECTED, patience=15)


async def test_llm_bridge_skips_a_turn_that_is_already_stale(
    settings: Settings,
    bus: Bus,
    store: SessionStore,
    session: str,
    chat_server: tuple[FleetProcess, str],
) -> None:
    server, url = chat_server
    stale = await store.next_turn(session)
    await store.next_turn(session)
    tap = await EventTap.open(bus, session)
    asked = chat_requests(server)
    async with start_runtime(settings, "llm", "llm-test") as runtime:
        await bridge(runtime, url).handle(TurnRequest(session, stale, "Old question."))
    await tap.caught_up(bus, session)
    assert chat_requests(server) == asked, "the model was asked for a stale turn"
    assert [m for m in tap.messages if not isinstance(m, TranscriptPartial)] == []
