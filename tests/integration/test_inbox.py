"""A keyed inbox on a real RabbitMQ: each key's messages reach the sink it was added with."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from aio_pika.exceptions import DeliveryError

from fleet.contracts import AudioChunk, Message
from fleet.inbox import KeyedInbox
from fleet.topology import Bus, Route

Sink = Callable[[Message], None]


@pytest.fixture
async def inbox(bus: Bus) -> AsyncIterator[KeyedInbox[Sink]]:
    inbox: KeyedInbox[Sink] = KeyedInbox(
        bus, Route.AUDIO, bus.names.stt_queue("w1"), role="test", malformed="malformed_audio"
    )
    await inbox.start()
    try:
        yield inbox
    finally:
        await inbox.close()


async def sink_of(inbox: KeyedInbox[Sink], key: str) -> asyncio.Queue[Message]:
    """A fresh sink added for ``key``: what the inbox hands it queues up here."""
    received: asyncio.Queue[Message] = asyncio.Queue()
    await inbox.add(key, received.put_nowait)
    return received


def frame(stream: str, seq: int) -> AudioChunk:
    return AudioChunk("session", stream, seq, b"\x00\x00")


async def seqs(received: asyncio.Queue[Message], count: int) -> list[int]:
    out = []
    for _ in range(count):
        message = await asyncio.wait_for(received.get(), 5.0)
        assert isinstance(message, AudioChunk)
        out.append(message.seq)
    return out


async def test_each_keys_messages_reach_its_sink_in_order(
    bus: Bus, inbox: KeyedInbox[Sink]
) -> None:
    one = await sink_of(inbox, "stream-1")
    two = await sink_of(inbox, "stream-2")
    for seq in range(5):
        await bus.publish(frame("stream-1", seq), mandatory=True)
        await bus.publish(frame("stream-2", 100 + seq), mandatory=True)
    assert await seqs(one, 5) == [0, 1, 2, 3, 4]
    assert await seqs(two, 5) == [100, 101, 102, 103, 104]


async def test_a_removed_key_is_no_longer_routed_here(bus: Bus, inbox: KeyedInbox[Sink]) -> None:
    received = await sink_of(inbox, "stream-1")
    assert await inbox.remove("stream-1", received.put_nowait)
    with pytest.raises(DeliveryError):
        await bus.publish(frame("stream-1", 0), mandatory=True)
    assert len(inbox) == 0


async def test_a_newer_sink_keeps_the_key_when_the_older_one_is_removed(
    bus: Bus, inbox: KeyedInbox[Sink]
) -> None:
    older = await sink_of(inbox, "stream-1")
    newer = await sink_of(inbox, "stream-1")
    assert not await inbox.remove("stream-1", older.put_nowait)
    await bus.publish(frame("stream-1", 7), mandatory=True)
    assert await seqs(newer, 1) == [7]
    assert older.empty()
