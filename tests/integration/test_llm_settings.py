"""The LLM bridge's own settings, against the real local chat server (`voicefleet llm-server`).

The bridge runs in this process on the real broker and Redis; what it asks TTS to say is read
from the TTS work queue, as a TTS worker would receive it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import aclosing

import pytest

from fleet.contracts import AssistantDelta, TtsRequest, TurnDone, TurnRequest
from fleet.settings import Settings
from fleet.state import SessionStore
from fleet.topology import Bus, Route, decode_incoming
from fleet.worker import start_runtime
from tests.event_tap import EventTap
from tests.fleet_processes import FleetProcess
from tests.role_processes import local_chat_server
from workers.llm_bridge.chat import ChatError
from workers.llm_bridge.main import LlmBridge, chat_model

pytestmark = pytest.mark.timeout(300)

STORYTELLER = "You are a storyteller. Your stories are long and detailed."
STORY = "Tell me a long story about a brave knight and a dragon."
CLAUSE_MARKS = ",;:—"


@pytest.fixture(scope="module")
def chat_server() -> Iterator[tuple[FleetProcess, str]]:
    # One slot: a server that generates one reply at a time can be made busy by one request.
    with local_chat_server(VF_LLM_SERVER_SLOTS="1") as running:
        yield running


async def tts_requests(bus: Bus, session: str, count: int) -> list[TtsRequest]:
    """The ``count`` TTS jobs of ``session``, taken off the TTS work queue.

    The bridge publishes them (with publisher confirms) before its TurnDone: once that has been
    seen, they are in the queue.
    """
    channel = await bus.channel(prefetch=0)
    queue = await bus.work_queue(channel, Route.TTS_JOBS)
    found: list[TtsRequest] = []
    try:
        while len(found) < count:
            incoming = await queue.get(no_ack=True, fail=False)
            assert incoming is not None, f"{len(found)} of {count} TTS jobs in the queue"
            message = decode_incoming(incoming)
            assert isinstance(message, TtsRequest) and message.session_id == session, message
            found.append(message)
    finally:
        await channel.close()
    return sorted(found, key=lambda m: m.sentence)


async def spoken_pieces(
    settings: Settings,
    bus: Bus,
    store: SessionStore,
    url: str,
    first_clause_chars: int,
    first_piece_words: int = 0,
) -> tuple[list[str], list[str]]:
    """The reply to STORY as deltas from the model and as the pieces sent to TTS."""
    session = uuid.uuid4().hex
    await store.open_session(session, "gateway-test", "stream-1", "digest")
    turn = await store.next_turn(session)
    tap = await EventTap.open(bus, session)
    configured = settings.model_copy(
        update={
            "llm_url": url,
            "llm_first_clause_chars": first_clause_chars,
            "llm_first_piece_words": first_piece_words,
            "llm_temperature": 0.0,  # the same reply in both runs
            "llm_max_tokens": 60,
            "llm_system_prompt": STORYTELLER,
        }
    )
    async with start_runtime(configured, "llm", "llm-test") as runtime:
        chat = chat_model(configured)
        try:
            await LlmBridge(runtime, chat).handle(TurnRequest(session, turn, STORY))
        finally:
            await chat.aclose()
    done = await tap.wait_for(TurnDone, timeout=60)
    await tap.caught_up(bus, session)
    deltas = [d.text for d in sorted(tap.of(AssistantDelta), key=lambda d: d.index)]
    pieces = [r.text for r in await tts_requests(bus, session, done.sentences)]
    return deltas, pieces


async def test_first_clause_chars_setting_is_where_the_first_piece_may_end(
    settings: Settings, bus: Bus, store: SessionStore, chat_server: tuple[FleetProcess, str]
) -> None:
    _, url = chat_server
    early_deltas, early = await spoken_pieces(settings, bus, store, url, first_clause_chars=1)
    late_deltas, late = await spoken_pieces(settings, bus, store, url, first_clause_chars=300)
    assert early_deltas == late_deltas, "temperature 0: the model said the same both times"
    assert " ".join(early) == " ".join(late), "the same words reach TTS either way"
    # Allowed to leave at the first clause boundary, the first piece does; made to wait for 300
    # characters, it waits for the end of the first sentence (shorter than that).
    assert early[0][-1] in CLAUSE_MARKS, early
    assert late[0][-1] in ".!?…", late
    assert late[0].startswith(early[0]) and len(early[0]) < len(late[0]), (early, late)


async def test_first_piece_words_setting_cuts_a_first_piece_without_a_clause_between_words(
    settings: Settings, bus: Bus, store: SessionStore, chat_server: tuple[FleetProcess, str]
) -> None:
    _, url = chat_server
    cut_deltas, cut = await spoken_pieces(settings, bus, store, url, 300, first_piece_words=3)
    whole_deltas, whole = await spoken_pieces(settings, bus, store, url, 300, first_piece_words=0)
    assert cut_deltas == whole_deltas, "temperature 0: the model said the same both times"
    assert " ".join(cut) == " ".join(whole), "the same words reach TTS either way"
    # Made to wait for a sentence end, the first piece is a whole sentence; allowed to leave
    # after three words, it leaves at a word boundary within that sentence.
    assert whole[0][-1] in ".!?…", whole
    assert len(cut[0].split()) >= 3 and cut[0][-1] not in ".!?…", cut
    assert whole[0].startswith(cut[0] + " "), (cut, whole)


async def test_timeout_setting_bounds_the_wait_for_a_busy_chat_server(
    chat_server: tuple[FleetProcess, str],
) -> None:
    _, url = chat_server
    story = [{"role": "system", "content": STORYTELLER}, {"role": "user", "content": STORY}]
    hello = [{"role": "user", "content": "Say hello."}]
    # The server has one slot: while it tells a long story, a second request gets nothing at
    # all until the story is over.
    patient = chat_model(Settings(llm_url=url, llm_timeout_s=600.0))
    hasty = chat_model(Settings(llm_url=url, llm_timeout_s=1.0))
    try:
        async with aclosing(patient.stream(story, max_tokens=1500, temperature=0.0)) as busy:
            await anext(busy)  # the story is being generated
            with pytest.raises(ChatError, match=r"sent nothing for 1 s"):
                # Far longer than the setting, far shorter than the story.
                async with asyncio.timeout(30):
                    async for _ in hasty.stream(hello, max_tokens=5, temperature=0.0):
                        pass
    finally:
        await patient.aclose()
        await hasty.aclose()
