"""A TTS worker serves the pieces it holds first pieces first, across sessions
(docs/architecture.md, "Deadlines"). Real broker, Redis, Kokoro and worker process.

On a quorum queue (RabbitMQ 3.x: no message priorities) the broker delivers `tts.jobs` strictly in
order, so only the worker's own scheduling can put a new turn's first piece ahead of later pieces
of another reply that were queued before it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from fleet.contracts import AudioOut, TtsRequest
from fleet.settings import Settings
from fleet.state import SessionStore
from fleet.topology import Bus
from tests.event_tap import EventTap
from tests.fleet_processes import FleetProcess
from tests.role_processes import logged, role_processes, start_role

pytestmark = pytest.mark.timeout(300)

LATER_PIECES = [
    "Once upon a time, a small grey cat lived in a quiet village by the sea.",
    "Every morning she walked down to the harbour to watch the fishing boats come in.",
    "The fishermen liked her, and they always saved a little fish for her breakfast.",
]
FIRST_PIECE = "Sure, here is"


@pytest.fixture
def settings() -> Settings:
    return Settings(namespace=f"t{uuid.uuid4().hex[:10]}", log_json=False, work_queue_type="quorum")


def last_chunk_of(session: str, sentence: int) -> Callable[[AudioOut], bool]:
    return lambda m: m.session_id == session and m.sentence == sentence and m.last


@pytest.fixture
def processes(settings: Settings) -> Iterator[list[FleetProcess]]:
    with role_processes(settings) as started:
        yield started


@pytest.mark.parametrize("concurrency", [1, 2])
async def test_a_first_piece_is_served_before_later_pieces_of_another_reply_held_earlier(
    settings: Settings,
    bus: Bus,
    store: SessionStore,
    processes: list[FleetProcess],
    concurrency: int,
) -> None:
    """One synthesis at a time: the first piece goes right after the piece in synthesis. Two:
    it starts at once beside it, and no later piece starts beside it."""
    talking, asking = uuid.uuid4().hex, uuid.uuid4().hex
    for session in (talking, asking):
        await store.open_session(session, "gateway-test", f"stream-{session}", "digest")
    talking_turn = await store.next_turn(talking)
    asking_turn = await store.next_turn(asking)
    tap = await EventTap.open(bus, talking, asking)
    # A reply well under way: its later pieces wait in the queue.
    for sentence, text in enumerate(LATER_PIECES, start=1):
        await bus.publish(TtsRequest(talking, talking_turn, sentence, text, "af_heart"))
    worker = start_role(
        processes,
        settings,
        "tts",
        "worker",
        "tts",
        VF_WORK_QUEUE_TYPE="quorum",
        VF_TTS_CONCURRENCY=str(concurrency),
        VF_TTS_PREFETCH="4",
    )
    await logged(worker, "serving", patience=120)
    # The worker is voicing the first of them; another user's reply begins.
    await logged(worker, "sentence_started", patience=60, sentence=1)
    await bus.publish(TtsRequest(asking, asking_turn, 0, FIRST_PIECE, "af_heart"))

    for session, sentence in ((asking, 0), (talking, len(LATER_PIECES))):
        await tap.wait_for(AudioOut, last_chunk_of(session, sentence), timeout=120)
    served = [
        (m.session_id, m.sentence)
        for m in tap.of(AudioOut)
        if m.chunk == 0 and m.session_id in (talking, asking)
    ]
    later = [(talking, n) for n in range(1, len(LATER_PIECES) + 1)]
    assert [piece for piece in served if piece[0] == talking] == later, served
    # Before any later piece but the one in synthesis when it came.
    assert served.index((asking, 0)) < served.index((talking, 2)), served
    await tap.close()
