"""A connection's audio on a real RabbitMQ: it reaches the worker holding its stream in order, and
a new holder is sent again what the user said since the last final transcript."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aio_pika.abc import AbstractIncomingMessage

from fleet.contracts import AudioChunk, ReplayDone
from fleet.settings import Settings
from fleet.topology import Bus, Route, decode_incoming
from gateway.uplink import FRAME_OVERHEAD_BYTES, Uplink

SID = "sess-aaaaaaaa"
STREAM = "stream-1"
REPLAY_BYTES = Settings().replay_max_bytes


class Worker:
    """The STT side of the stream: a queue that holds the stream while it is bound to it."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.received: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()

    async def start(self) -> None:
        self.channel = await self.bus.channel(prefetch=0)
        self.queue = await self.bus.exclusive_queue(self.channel, self.bus.names.stt_queue("w1"))
        self.exchange = await self.bus.exchange(self.channel, Route.AUDIO)
        await self.queue.consume(self.received.put, no_ack=True)

    async def hold(self) -> None:
        await self.queue.bind(self.exchange, routing_key=STREAM)

    async def let_go(self) -> None:
        await self.queue.unbind(self.exchange, routing_key=STREAM)

    async def next(self, count: int) -> list[tuple[int, bool] | str]:
        """The next ``count`` messages: (seq, replayed) for audio, else the message kind."""
        got: list[tuple[int, bool] | str] = []
        for _ in range(count):
            async with asyncio.timeout(10):
                message = decode_incoming(await self.received.get())
            assert message.session_id == SID
            match message:
                case AudioChunk(seq=seq, replayed=replayed):
                    got.append((seq, replayed))
                case _:
                    got.append(message.KIND)
        return got


@pytest.fixture
async def worker(bus: Bus) -> AsyncIterator[Worker]:
    worker = Worker(bus)
    await worker.start()
    try:
        yield worker
    finally:
        await worker.channel.close()


def frame(n: int) -> bytes:
    return bytes([n]) * 3200


async def test_audio_before_a_worker_holds_the_stream_is_replayed_to_it_then_goes_live(
    bus: Bus, worker: Worker
) -> None:
    uplink = Uplink(bus, SID, STREAM, REPLAY_BYTES)
    await worker.hold()  # bound already, so any audio published early would arrive first
    await uplink.send(frame(1))
    await uplink.send(frame(2))

    await uplink.owner_taken()
    await uplink.wait_owned()
    await uplink.send(frame(3))

    assert await worker.next(4) == [(1, True), (2, True), ReplayDone.KIND, (3, False)]


async def test_audio_a_final_transcript_covers_is_not_replayed(bus: Bus, worker: Worker) -> None:
    uplink = Uplink(bus, SID, STREAM, REPLAY_BYTES)
    await worker.hold()
    for n in (1, 2, 3):
        await uplink.send(frame(n))
    uplink.transcribed(upto_seq=2)

    await uplink.owner_taken()

    assert await worker.next(2) == [(3, True), ReplayDone.KIND]


async def test_audio_sent_while_the_stream_has_no_holder_reaches_the_next_one(
    bus: Bus, worker: Worker
) -> None:
    uplink = Uplink(bus, SID, STREAM, REPLAY_BYTES)
    await worker.hold()
    await uplink.owner_taken()
    await uplink.send(frame(1))
    assert await worker.next(2) == [ReplayDone.KIND, (1, False)]

    await worker.let_go()  # the worker died: audio to the stream comes back unroutable
    await uplink.send(frame(2))
    await uplink.send(frame(3))
    await worker.hold()  # a new worker took the lease
    await uplink.owner_taken()

    assert await worker.next(4) == [(1, True), (2, True), (3, True), ReplayDone.KIND]


async def test_the_utterance_kept_for_replay_is_bounded_in_bytes_whatever_the_frame_size(
    bus: Bus, worker: Worker
) -> None:
    """VF_REPLAY_MAX_BYTES bounds memory, not frames: a flood of tiny frames after a large one
    pushes the large one out, and each frame's bookkeeping counts too."""
    tiny = b"\x00\x00"
    bound = 4 * (3200 + FRAME_OVERHEAD_BYTES)
    uplink = Uplink(bus, SID, STREAM, max_replay_bytes=bound)
    await worker.hold()
    await uplink.send(frame(1))
    for _ in range(40):
        await uplink.send(tiny)
    assert uplink.replay_bytes <= bound

    await uplink.owner_taken()

    kept = 40  # 40 * (2 + overhead) fits; the 3200-byte frame before them does not any more
    assert await worker.next(kept + 1) == [(seq, True) for seq in range(2, 42)] + [ReplayDone.KIND]
