"""Routing on a real RabbitMQ: events find their session's gateway, audio its stream's owner."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from aio_pika.exceptions import DeliveryError

from fleet.contracts import (
    AudioChunk,
    AudioOut,
    SessionClose,
    TranscriptPartial,
    TtsRequest,
)
from fleet.topology import Bus, Route, decode_incoming

PCM = bytes(range(256)) * 12  # 3072 bytes, every byte value


@pytest.fixture
async def channel(bus: Bus) -> AsyncIterator[AbstractChannel]:
    channel = await bus.channel(prefetch=0)
    try:
        yield channel
    finally:
        await channel.close()


async def bound_queue(
    bus: Bus, channel: AbstractChannel, route: Route, name: str, *keys: str
) -> AbstractQueue:
    queue = await bus.exclusive_queue(channel, name)
    exchange = await bus.exchange(channel, route)
    for key in keys:
        await queue.bind(exchange, routing_key=key)
    return queue


async def receive(queue: AbstractQueue, wait_s: float = 5.0) -> AbstractIncomingMessage:
    async with asyncio.timeout(wait_s):
        while True:
            incoming = await queue.get(no_ack=True, fail=False)
            if incoming is not None:
                return incoming
            await asyncio.sleep(0.01)


QUIET_WINDOW_S = 0.3  # "nothing arrives": no event can mark it, so it is watched this long


async def nothing_arrives(queue: AbstractQueue, wait: float = QUIET_WINDOW_S) -> bool:
    await asyncio.sleep(wait)
    return await queue.get(no_ack=True, fail=False) is None


async def nothing_delivered(deliveries: asyncio.Queue[AbstractIncomingMessage]) -> bool:
    await asyncio.sleep(QUIET_WINDOW_S)
    return deliveries.empty()


async def test_events_reach_only_the_sessions_gateway(bus: Bus, channel: AbstractChannel) -> None:
    names = bus.names
    gw_a = await bound_queue(bus, channel, Route.EVENTS, names.gateway_queue("a"), "sess-aaaaaaaa")
    gw_b = await bound_queue(
        bus, channel, Route.EVENTS, names.gateway_queue("b"), "sess-bbbbbbbb", "sess-cccccccc"
    )

    await bus.publish(TranscriptPartial("sess-aaaaaaaa", "hello from a"))
    await bus.publish(TranscriptPartial("sess-cccccccc", "hello from c"))

    got_a = decode_incoming(await receive(gw_a))
    got_b = decode_incoming(await receive(gw_b))
    assert got_a == TranscriptPartial("sess-aaaaaaaa", "hello from a")
    assert got_b == TranscriptPartial("sess-cccccccc", "hello from c")
    assert await nothing_arrives(gw_a)
    assert await nothing_arrives(gw_b, wait=0)


async def test_events_of_a_session_nobody_serves_are_dropped_silently(
    bus: Bus, channel: AbstractChannel
) -> None:
    # A late event of a session whose gateway is gone must not fail the worker's publish (an
    # unroutable event returned by the broker would raise here), must reach no other session's
    # gateway, and must leave the publisher able to go on.
    served = await bound_queue(
        bus, channel, Route.EVENTS, bus.names.gateway_queue("a"), "sess-aaaaaaaa"
    )
    await bus.publish(TranscriptPartial("sess-nobody-home", "late"))
    await bus.publish(TranscriptPartial("sess-aaaaaaaa", "next"))
    assert decode_incoming(await receive(served)) == TranscriptPartial("sess-aaaaaaaa", "next")


async def test_reply_audio_arrives_byte_exact_with_its_headers(
    bus: Bus, channel: AbstractChannel
) -> None:
    gateway = await bound_queue(
        bus, channel, Route.EVENTS, bus.names.gateway_queue("a"), "sess-aaaaaaaa"
    )
    sent = AudioOut("sess-aaaaaaaa", 4, 2, 0, False, PCM, text="Ça va — très bien…")
    await bus.publish(sent)

    incoming = await receive(gateway)
    assert incoming.body == PCM  # raw bytes, no base64
    assert incoming.type == "audio.out"
    assert incoming.correlation_id == "sess-aaaaaaaa"
    assert incoming.content_type == "application/octet-stream"
    assert incoming.headers["turn"] == 4
    assert incoming.headers["sentence"] == 2
    assert decode_incoming(incoming) == sent


async def test_audio_for_a_stream_nobody_holds_is_returned_to_the_publisher(bus: Bus) -> None:
    with pytest.raises(DeliveryError):
        await bus.publish(AudioChunk("sess-aaaaaaaa", "stream-nobody", 1, PCM), mandatory=True)
    with pytest.raises(DeliveryError):
        await bus.publish(SessionClose("sess-aaaaaaaa", "stream-nobody"), mandatory=True)
    # The publishing channel survives the return: the gateway can keep publishing.
    await bus.publish(TranscriptPartial("sess-aaaaaaaa", "still publishing"))


async def test_audio_reaches_the_worker_holding_its_stream(
    bus: Bus, channel: AbstractChannel
) -> None:
    names = bus.names
    owner = await bound_queue(bus, channel, Route.AUDIO, names.stt_queue("w1"), "stream-1")
    other = await bound_queue(bus, channel, Route.AUDIO, names.stt_queue("w2"), "stream-2")

    chunk = AudioChunk("sess-aaaaaaaa", "stream-1", 7, PCM)
    await bus.publish(chunk, mandatory=True)  # routable: no DeliveryError

    incoming = await receive(owner)
    assert incoming.body == PCM
    assert incoming.type == "audio.chunk"
    assert incoming.correlation_id == "sess-aaaaaaaa"
    assert incoming.headers == {"stream_id": "stream-1", "seq": 7, "replayed": False}
    assert decode_incoming(incoming) == chunk
    assert await nothing_arrives(other)


async def test_a_reconnected_streams_audio_goes_to_its_new_owner_only(
    bus: Bus, channel: AbstractChannel
) -> None:
    # The same session with a new stream (client reconnected): the old owner hears nothing of it.
    names = bus.names
    old = await bound_queue(bus, channel, Route.AUDIO, names.stt_queue("old"), "stream-old")
    new = await bound_queue(bus, channel, Route.AUDIO, names.stt_queue("new"), "stream-new")
    await bus.publish(AudioChunk("sess-aaaaaaaa", "stream-new", 1, PCM), mandatory=True)
    heard = decode_incoming(await receive(new))
    assert isinstance(heard, AudioChunk)
    assert heard.stream_id == "stream-new"
    assert await nothing_arrives(old)


async def test_first_sentence_of_a_turn_jumps_the_tts_queue(bus: Bus) -> None:
    # A TTS worker busy with one job (prefetch 1, unacked) while later sentences pile up.
    channel = await bus.channel(prefetch=1)
    try:
        queue = await bus.work_queue(channel, Route.TTS_JOBS)
        deliveries: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        await queue.consume(deliveries.put)

        await bus.publish(TtsRequest("sess-aaaaaaaa", 1, 1, "Busy with this one."))
        busy = await asyncio.wait_for(deliveries.get(), 5)

        for sentence in (3, 4, 5):
            await bus.publish(TtsRequest("sess-bbbbbbbb", 1, sentence, f"Later {sentence}."))
        await bus.publish(TtsRequest("sess-cccccccc", 1, 0, "First words of a new turn."))
        assert await nothing_delivered(deliveries)  # paused: prefetch is full

        order = []
        await busy.ack()
        for _ in range(4):
            incoming = await asyncio.wait_for(deliveries.get(), 5)
            job = decode_incoming(incoming)
            assert isinstance(job, TtsRequest)
            order.append((job.session_id, job.sentence))
            await incoming.ack()
        assert order[0] == ("sess-cccccccc", 0)
        assert sorted(order[1:]) == [("sess-bbbbbbbb", s) for s in (3, 4, 5)]
    finally:
        await channel.close()


async def test_tts_jobs_are_persistent_and_prioritised(bus: Bus) -> None:
    channel = await bus.channel(prefetch=0)
    try:
        queue = await bus.work_queue(channel, Route.TTS_JOBS)
        await bus.publish(TtsRequest("sess-aaaaaaaa", 2, 0, "Hi."))
        incoming = await receive(queue)
        assert incoming.priority == 9
        assert incoming.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    finally:
        await channel.close()
