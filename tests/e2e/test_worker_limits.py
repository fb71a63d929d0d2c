"""What one LLM bridge or TTS worker takes on at once, and a retried turn saying the same thing.

Each test starts one worker of its own, in a namespace of its own (so no fleet worker competes
for its jobs), on the e2e fleet's chat server; it is driven through the bus, as the gateway and
the LLM bridge drive it, and watched through the events it publishes.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aio_pika.abc import AbstractIncomingMessage

from fleet.contracts import AssistantDelta, AudioOut, Message, TtsRequest, TurnDone, TurnRequest
from fleet.settings import Settings
from fleet.topology import Bus, Route, decode_incoming
from tests.fleet_processes import Fleet
from voicefleet.namespaces import delete_namespace

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

STORY = "Tell me a long story about a lighthouse keeper and a storm."
LONG_SENTENCE = (
    "Far out on the cold grey sea, beyond the last of the fishing boats and the lonely rocks "
    "where the seals sleep in the afternoon sun, an old lighthouse keeper climbed the long "
    "winding stair every evening to light the great lamp, and he watched the dark water until "
    "morning came again over the hills, the harbour and the sleeping town."
)
SHORT_SENTENCE = "Hello there."


@asynccontextmanager
async def own_worker(
    fleet: Fleet, kind: str, sessions: tuple[str, ...], **env: str
) -> AsyncIterator[tuple[Bus, asyncio.Queue[Message]]]:
    """A ``kind`` worker of the fleet's build in a fresh namespace; yields a bus on that
    namespace and a queue that receives the events of ``sessions`` published there."""
    settings = Settings(namespace=f"t{uuid.uuid4().hex[:10]}", log_json=False)
    bus = await Bus.connect(settings, "test-limits")
    try:
        channel = await bus.channel(prefetch=0)
        events = await bus.exclusive_queue(channel, bus.names.gateway_queue("test"))
        exchange = await bus.exchange(channel, Route.EVENTS)
        for session_id in sessions:
            await events.bind(exchange, routing_key=session_id)
        received: asyncio.Queue[Message] = asyncio.Queue()

        async def on_event(incoming: AbstractIncomingMessage) -> None:
            received.put_nowait(decode_incoming(incoming))

        await events.consume(on_event, no_ack=True)
        own = {"VF_NAMESPACE": settings.namespace, "VF_WORKER_ID": f"{kind}-own"}
        with fleet.extra(f"{kind}-own", "worker", kind, VF_LLM_URL=fleet.llm_url, **own, **env):
            yield bus, received
    finally:
        await bus.close()
        await delete_namespace(settings)


async def next_event(events: asyncio.Queue[Message]) -> Message:
    return await asyncio.wait_for(events.get(), timeout=120)


async def waiting_jobs(bus: Bus, route: Route) -> int:
    channel = await bus.connection.channel()
    try:
        queue = await channel.declare_queue(bus.names.work_queue(route), passive=True)
        return int(queue.declaration_result.message_count or 0)
    finally:
        await channel.close()


async def test_an_llm_bridge_streams_one_turn_at_a_time_and_a_retry_says_the_same(
    fleet: Fleet,
) -> None:
    """VF_LLM_CONCURRENCY=1: while one turn streams, the next waits in ``llm.turns``. The same
    turn delivered twice (as after a crash) is answered with the same text, even at temperature
    1.0, because replies are seeded per turn."""
    request = TurnRequest("sess-retried", 1, STORY)
    limits = {"VF_LLM_CONCURRENCY": "1", "VF_LLM_TEMPERATURE": "1.0"}
    async with own_worker(fleet, "llm", ("sess-retried",), **limits) as (bus, events):
        await bus.publish(request)
        await bus.publish(request)
        replies: list[str] = []
        deltas: list[str] = []
        while len(replies) < 2:
            message = await next_event(events)
            if isinstance(message, AssistantDelta):
                if not deltas and not replies:
                    # The first turn is streaming: the second is still queued for this bridge.
                    assert await waiting_jobs(bus, Route.LLM_TURNS) == 1
                deltas.append(message.text)
            elif isinstance(message, TurnDone):
                replies.append("".join(deltas))
                deltas = []
    assert replies[0].strip(), replies
    assert replies[0] == replies[1], replies


async def test_a_tts_worker_synthesizes_one_sentence_at_a_time(fleet: Fleet) -> None:
    """VF_TTS_CONCURRENCY=1: a short sentence queued behind a long one is voiced after it, not
    beside it (with two at a time the short one would be done first). VF_TTS_CHUNK_MS sets the
    size of every chunk but a sentence's last."""
    sessions = ("sess-long", "sess-short")
    limits = {"VF_TTS_CONCURRENCY": "1", "VF_TTS_CHUNK_MS": "100"}
    async with own_worker(fleet, "tts", sessions, **limits) as (bus, events):
        await bus.publish(TtsRequest("sess-long", 1, 0, LONG_SENTENCE))
        await bus.publish(TtsRequest("sess-short", 1, 0, SHORT_SENTENCE))
        order: list[tuple[str, bool]] = []
        sizes: set[int] = set()
        while ("sess-short", True) not in order or ("sess-long", True) not in order:
            message = await next_event(events)
            if isinstance(message, AudioOut):
                order.append((message.session_id, message.last))
                if not message.last:
                    sizes.add(len(message.pcm))
    assert sizes == {24000 * 2 // 10}, sizes  # 100 ms of 24 kHz PCM16
    last_long = order.index(("sess-long", True))
    first_short = next(i for i, (sid, _) in enumerate(order) if sid == "sess-short")
    assert first_short > last_long, order
