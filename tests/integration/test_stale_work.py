"""Workers skip work of a superseded turn, and stop it when the turn changes mid-way.

The real TTS worker (Kokoro) and LLM bridge run in this process on the real broker and Redis.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import pytest
from aio_pika.abc import AbstractQueue

from fleet.contracts import AudioOut, Message, TtsRequest, TurnDone, TurnRequest
from fleet.settings import Settings
from fleet.state import SessionStore
from fleet.topology import Bus, Route, decode_incoming
from fleet.worker import start_runtime
from workers.llm_bridge.main import LlmBridge
from workers.tts.main import TtsWorker
from workers.tts.providers import create_synthesizer

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def session(store: SessionStore) -> str:
    session_id = uuid.uuid4().hex
    await store.open_session(session_id, "gateway-test", "stream-1")
    return session_id


async def events_of(bus: Bus, session_id: str) -> AbstractQueue:
    channel = await bus.channel(prefetch=0)
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind(await bus.exchange(channel, Route.EVENTS), routing_key=session_id)
    return queue


async def drain(queue: AbstractQueue, quiet_s: float) -> list[Message]:
    """Everything on ``queue`` until it has been quiet for ``quiet_s``."""
    received: list[Message] = []
    while True:
        incoming = None
        deadline = asyncio.get_running_loop().time() + quiet_s
        while incoming is None and asyncio.get_running_loop().time() < deadline:
            incoming = await queue.get(no_ack=True, fail=False)
            if incoming is None:
                await asyncio.sleep(0.02)
        if incoming is None:
            return received
        received.append(decode_incoming(incoming))


@pytest.fixture(scope="module")
def synthesizer() -> Any:
    return create_synthesizer(Settings())


async def test_tts_skips_a_sentence_of_a_superseded_turn(
    settings: Settings, bus: Bus, store: SessionStore, session: str, synthesizer: Any
) -> None:
    stale_turn = await store.next_turn(session)
    current_turn = await store.next_turn(session)
    events = await events_of(bus, session)
    async with start_runtime(settings, "tts", "tts-test") as runtime:
        worker = TtsWorker(runtime, synthesizer)
        await worker.handle(TtsRequest(session, stale_turn, 0, "This reply is no longer wanted."))
        await worker.handle(TtsRequest(session, current_turn, 0, "This one is."))
    audio = [m for m in await drain(events, 1.0) if isinstance(m, AudioOut)]
    assert {m.turn for m in audio} == {current_turn}
    assert audio[-1].last


async def test_tts_stops_a_sentence_when_the_user_barges_in(
    settings: Settings, bus: Bus, store: SessionStore, session: str, synthesizer: Any
) -> None:
    turn = await store.next_turn(session)
    events = await events_of(bus, session)
    long_text = " ".join(["This sentence goes on and on for quite a while, and then"] * 6) + "."
    async with start_runtime(settings, "tts", "tts-test") as runtime:
        worker = TtsWorker(runtime, synthesizer)
        speaking = asyncio.create_task(worker.handle(TtsRequest(session, turn, 0, long_text)))
        await asyncio.sleep(0.05)
        await store.next_turn(session)  # barge-in
        await asyncio.wait_for(speaking, 60)
    audio = [m for m in await drain(events, 1.0) if isinstance(m, AudioOut)]
    assert not any(m.last for m in audio), "the cancelled sentence must not be played to its end"


class SlowCountingChat:
    """A chat model that streams forever until closed; records whether it was closed."""

    def __init__(self) -> None:
        self.closed = asyncio.Event()

    async def stream(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        max_tokens: int,
        temperature: float,
        **_: Any,
    ) -> AsyncIterator[str]:
        try:
            for number in range(10_000):
                yield f" {number}."
                await asyncio.sleep(0.05)
        finally:
            self.closed.set()


async def test_llm_bridge_closes_the_stream_of_a_cancelled_turn(
    settings: Settings, bus: Bus, store: SessionStore, session: str
) -> None:
    turn = await store.next_turn(session)
    events = await events_of(bus, session)
    chat = SlowCountingChat()
    async with start_runtime(settings, "llm", "llm-test") as runtime:
        bridge = LlmBridge(runtime, chat)  # type: ignore[arg-type]
        streaming = asyncio.create_task(bridge.handle(TurnRequest(session, turn, "Count forever.")))
        await asyncio.sleep(0.5)
        await store.next_turn(session)  # barge-in
        await asyncio.wait_for(chat.closed.wait(), 2)
        await asyncio.wait_for(streaming, 2)
    messages = await drain(events, 0.5)
    assert not any(isinstance(m, TurnDone) for m in messages), "a cancelled turn is not 'done'"


async def test_llm_bridge_skips_a_turn_that_is_already_stale(
    settings: Settings, bus: Bus, store: SessionStore, session: str
) -> None:
    stale = await store.next_turn(session)
    await store.next_turn(session)
    events = await events_of(bus, session)
    chat = SlowCountingChat()
    async with start_runtime(settings, "llm", "llm-test") as runtime:
        await LlmBridge(runtime, chat).handle(TurnRequest(session, stale, "Old question."))  # type: ignore[arg-type]
    assert not chat.closed.is_set(), "the model was never asked"
    assert await drain(events, 0.5) == []
