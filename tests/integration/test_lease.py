"""The session lease on a real RabbitMQ, held by real STT workers (`voicefleet worker stt`).

A worker consumes ``stt.sessions`` with prefetch = the sessions it can hold and keeps each lease
(a ``session.open``) unacked while it holds the session; the broker does the load balancing and
the failover. The test plays the gateway: it records the stream as current in Redis, publishes
the lease, and reads who holds it from the ``session.assigned`` / ``session.released`` events.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import aio_pika
import pytest

from fleet.audio import split_frames
from fleet.contracts import (
    AudioChunk,
    ReplayDone,
    SessionAssigned,
    SessionClose,
    SessionOpen,
    SessionReleased,
    SpeechStarted,
    TranscriptPartial,
)
from fleet.settings import Settings
from fleet.state import SessionStore
from fleet.topology import Bus, Route
from tests.event_tap import EventTap
from tests.fleet_processes import FleetProcess
from tests.role_processes import logged, role_processes, start_role
from tests.speech import FRAME_BYTES, pcm, silence, speech, spoken_words

pytestmark = pytest.mark.timeout(240)

# A worker loads Whisper, Silero VAD and Smart Turn before it takes a lease; slow on 2 busy cores.
START_PATIENCE_S = 120.0


@pytest.fixture
def workers(settings: Settings) -> Iterator[list[FleetProcess]]:
    with role_processes(settings) as started:
        yield started


@pytest.fixture
async def tap(bus: Bus) -> AsyncIterator[EventTap]:
    tap = await EventTap.open(bus)
    yield tap
    await tap.close()


def start_stt(
    workers: list[FleetProcess], settings: Settings, name: str, sessions: int
) -> FleetProcess:
    return start_role(workers, settings, name, "worker", "stt", VF_STT_MAX_SESSIONS=str(sessions))


async def open_session(bus: Bus, store: SessionStore, tap: EventTap) -> SessionOpen:
    """What a gateway does for a new connection: a current stream, and its lease on the queue."""
    session_id = uuid.uuid4().hex
    lease = SessionOpen(session_id, f"stream-{session_id[:8]}", "gw-test")
    await store.open_session(session_id, lease.gateway_id, lease.stream_id, "digest")
    await tap.listen(session_id)
    await bus.publish(lease)
    return lease


async def holder(tap: EventTap, lease: SessionOpen, *, nth: int = 0) -> str:
    """The worker that announces it holds ``lease`` the ``nth`` time (0: first)."""
    await tap.wait_for(
        SessionAssigned, lambda _: len(holders(tap, lease)) > nth, timeout=START_PATIENCE_S
    )
    return holders(tap, lease)[nth]


def holders(tap: EventTap, lease: SessionOpen) -> list[str]:
    return [m.worker_id for m in tap.of(SessionAssigned, lease.session_id)]


async def test_a_full_worker_gets_no_second_lease_and_another_worker_does(
    settings: Settings, bus: Bus, store: SessionStore, tap: EventTap, workers: list[FleetProcess]
) -> None:
    start_stt(workers, settings, "stt-full", sessions=1)
    one = await open_session(bus, store, tap)
    assert await holder(tap, one) == "stt-full"

    two = await open_session(bus, store, tap)
    # The full worker is serving while the lease waits; the spare takes seconds to load its
    # models: ample time for the full one to take the lease if its prefetch let it.
    start_stt(workers, settings, "stt-spare", sessions=1)
    assert await holder(tap, two) == "stt-spare"
    assert holders(tap, one) == ["stt-full"] and holders(tap, two) == ["stt-spare"]


async def test_a_dead_workers_lease_is_redelivered_to_a_worker_with_room(
    settings: Settings, bus: Bus, store: SessionStore, tap: EventTap, workers: list[FleetProcess]
) -> None:
    doomed = start_stt(workers, settings, "stt-doomed", sessions=1)
    one = await open_session(bus, store, tap)
    assert await holder(tap, one) == "stt-doomed"
    survivor = start_stt(workers, settings, "stt-survivor", sessions=2)
    two = await open_session(bus, store, tap)
    assert await holder(tap, two) == "stt-survivor"

    doomed.kill()  # its channel closes with the lease unacked

    assert await holder(tap, one, nth=1) == "stt-survivor"
    held = await logged(survivor, "session_held", patience=10, session_id=one.session_id)
    assert held["redelivered"] is True, held


async def test_a_lease_ended_by_its_gateway_is_gone_for_good(
    settings: Settings, bus: Bus, store: SessionStore, tap: EventTap, workers: list[FleetProcess]
) -> None:
    # The holder acks when the gateway closes the session: a dying worker must not resurrect it.
    worker = start_stt(workers, settings, "stt-first", sessions=1)
    one = await open_session(bus, store, tap)
    assert await holder(tap, one) == "stt-first"
    await bus.publish(SessionClose(one.session_id, one.stream_id))
    await logged(worker, "session_ended", patience=30, session_id=one.session_id, reason="closed")
    worker.kill()

    # The stream is still current in Redis, so a resurrected lease would be taken; a worker
    # with room for one session would take it before a lease published after it.
    start_stt(workers, settings, "stt-next", sessions=1)
    marker = await open_session(bus, store, tap)
    assert await holder(tap, marker) == "stt-next"
    assert holders(tap, one) == ["stt-first"]


async def test_a_draining_worker_hands_its_lease_to_another_worker(
    settings: Settings, bus: Bus, store: SessionStore, tap: EventTap, workers: list[FleetProcess]
) -> None:
    draining = start_stt(workers, settings, "stt-draining", sessions=1)
    one = await open_session(bus, store, tap)
    assert await holder(tap, one) == "stt-draining"
    start_stt(workers, settings, "stt-fresh", sessions=1)

    # SIGTERM: it stops taking leases and hands back what it holds.
    await asyncio.to_thread(draining.stop, 30)
    assert draining.process is not None and draining.process.returncode == 0, draining.tail()

    released = await tap.wait_for(
        SessionReleased, lambda m: m.session_id == one.session_id, timeout=10
    )
    assert (released.worker_id, released.reason) == ("stt-draining", "draining")
    assert await holder(tap, one, nth=1) == "stt-fresh"
    assert holders(tap, one) == ["stt-draining", "stt-fresh"]


async def test_lease_queue_is_the_work_queue_of_the_topology(bus: Bus) -> None:
    channel = await bus.channel(prefetch=1)
    try:
        queue = await bus.work_queue(channel, Route.STT_SESSIONS)
        assert queue.name == bus.names.stt_sessions
        await bus.publish(SessionOpen("sess-one-1111", "stream-of-sess-one-1111", "gw-1"))
        incoming = await queue.get(timeout=5)
        assert incoming.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        await incoming.reject(requeue=True)
    finally:
        await channel.close()


async def test_a_held_streams_partial_is_published_with_no_frame_after_it(
    settings: Settings, bus: Bus, store: SessionStore, tap: EventTap, workers: list[FleetProcess]
) -> None:
    """The first words of speech over a playing reply decide what becomes of it: the worker
    publishes a partial as soon as it is decoded, not when the stream's next frame comes (nor
    after a frame whose turn check or final it is busy with)."""
    start_stt(workers, settings, "stt-partials", sessions=1)
    lease = await open_session(bus, store, tap)
    await holder(tap, lease)
    await bus.publish(ReplayDone(lease.session_id, lease.stream_id), mandatory=True)
    # A second of a longer request, then no frame more reaches the worker (the user goes on
    # speaking). The first partial is asked for 0.3 s into the speech.
    said = speech("Could you please tell me what the weather will be like in Paris tomorrow?")
    audio = pcm(silence(0.3), said[: said.size // 4])
    for seq, frame in enumerate(split_frames(audio, FRAME_BYTES)):
        await bus.publish(AudioChunk(lease.session_id, lease.stream_id, seq, frame))
    await tap.wait_for(SpeechStarted, lambda m: m.session_id == lease.session_id, timeout=60)
    partial = await tap.wait_for(
        TranscriptPartial, lambda m: m.session_id == lease.session_id, timeout=60
    )
    assert spoken_words(partial.text)[:1] == ["could"], partial
