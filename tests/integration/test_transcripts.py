"""The conversation log (RabbitMQ stream ``vf.transcripts``): replayable by offset, kept for
VF_TRANSCRIPTS_MAX_AGE."""

from __future__ import annotations

import asyncio

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage

from fleet.contracts import ConversationEntry
from fleet.settings import Settings
from fleet.topology import Bus, decode_incoming
from voicefleet.namespaces import delete_namespace

SID = "sess-0123456789"
ENTRIES = [
    ConversationEntry(SID, turn, role, f"{role} line {turn}")
    for turn in (1, 2, 3)
    for role in ("user", "assistant")
]


async def read_log(bus: Bus, offset: int | str, count: int) -> list[ConversationEntry]:
    """``count`` entries of the log from ``offset`` on, as a log consumer reads them."""
    channel = await bus.channel(prefetch=count)
    received: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
    try:
        queue = await channel.get_queue(bus.names.transcripts_stream)
        await queue.consume(received.put, arguments={"x-stream-offset": offset})
        entries: list[ConversationEntry] = []
        async with asyncio.timeout(10):
            while len(entries) < count:
                incoming = await received.get()
                await incoming.ack()
                message = decode_incoming(incoming)
                assert isinstance(message, ConversationEntry)
                entries.append(message)
        return entries
    finally:
        await channel.close()


async def test_the_log_replays_from_any_offset(bus: Bus) -> None:
    for entry in ENTRIES:
        await bus.publish(entry)
    assert await read_log(bus, "first", len(ENTRIES)) == ENTRIES
    assert await read_log(bus, 3, 3) == ENTRIES[3:]
    # Reading does not consume: a second reader from the start sees everything again.
    assert await read_log(bus, 0, len(ENTRIES)) == ENTRIES


async def test_the_log_is_kept_for_the_configured_age(settings: Settings) -> None:
    """The stream is declared with VF_TRANSCRIPTS_MAX_AGE as its retention: the broker holds it
    to that age and refuses to see the same stream declared with another."""
    short = settings.model_copy(update={"transcripts_max_age": "90s"})
    bus = await Bus.connect(short, "test-retention")
    try:
        for age, accepted in (("90s", True), ("7D", False)):
            channel = await bus.connection.channel()
            declare = channel.declare_queue(
                bus.names.transcripts_stream,
                durable=True,
                arguments={"x-queue-type": "stream", "x-max-age": age},
            )
            if accepted:
                await declare
                await channel.close()
            else:
                with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed):
                    await declare
    finally:
        await bus.close()
        await delete_namespace(short)
