"""Session state on a real Redis: resume, turns cancelling stale work, history, stream ownership."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from fleet.settings import Settings
from fleet.state import Exchange, SessionStore, TurnWatch
from workers.llm_bridge.conversation import INTERRUPTED_MARK, build_messages

SID = "sess-0123456789"
PATIENCE_S = 10.0  # a generous bound on a wait for an event (not a speed target)
MARKER = "sess-marker"


async def notices_seen(store: SessionStore, watch: TurnWatch) -> None:
    """Returns once the watch has seen every turn notice published before the call.

    Notices travel in order on one channel, so a marker session's notice, once seen, shows that
    everything published before it was seen too.
    """
    marker = watch.superseded(MARKER, await store.next_turn(MARKER))
    await store.next_turn(MARKER)
    await asyncio.wait_for(marker.wait(), timeout=PATIENCE_S)
    watch.release(MARKER, marker)


@pytest.fixture
async def watch(store: SessionStore) -> AsyncIterator[TurnWatch]:
    turn_watch = TurnWatch(store)
    await turn_watch.start()
    try:
        yield turn_watch
    finally:
        await turn_watch.stop()


async def test_a_new_session_is_created_and_a_second_open_is_a_resume(store: SessionStore) -> None:
    assert not await store.exists(SID)
    assert await store.open_session(SID, "gw-1", "stream-1", "digest") is False
    assert await store.exists(SID)
    assert await store.open_session(SID, "gw-2", "stream-2", "digest") is True
    assert await store.current_stream(SID) == "stream-2"


async def test_a_resume_goes_on_with_the_turns_and_the_history(store: SessionStore) -> None:
    await store.open_session(SID, "gw-1", "stream-1", "digest")
    await store.next_turn(SID)
    await store.record_exchange(SID, Exchange("hi", "hello!"))
    assert await store.open_session(SID, "gw-2", "stream-2", "digest") is True
    # The next turn on the new stream follows the old one, and the model is shown the old one.
    assert await store.next_turn(SID) == 2
    await store.record_exchange(SID, Exchange("and you?", "fine."))
    seen = build_messages("system", await store.history(SID), "bye")
    assert [m["content"] for m in seen[1:]] == ["hi", "hello!", "and you?", "fine.", "bye"]


async def test_session_state_expires_with_the_ttl(settings: Settings, store: SessionStore) -> None:
    await store.open_session(SID, "gw-1", "stream-1", "digest")
    await store.next_turn(SID)
    await store.record_exchange(SID, Exchange("hi", "hello!"))
    for part in ("info", "turn", "history"):
        ttl = await store.redis.ttl(store._key(SID, part))
        assert 0 < ttl <= settings.session_ttl_s


async def test_turns_count_up_from_one(store: SessionStore) -> None:
    assert await store.current_turn(SID) == 0
    assert [await store.next_turn(SID) for _ in range(3)] == [1, 2, 3]
    assert await store.current_turn(SID) == 3


async def test_a_new_turn_supersedes_the_old_one_at_once(
    store: SessionStore, watch: TurnWatch
) -> None:
    old = await store.next_turn(SID)
    old_turn_stale = watch.superseded(SID, old)
    assert not old_turn_stale.is_set()

    current = await store.next_turn(SID)  # the user barged in
    await asyncio.wait_for(old_turn_stale.wait(), timeout=PATIENCE_S)

    current_turn_stale = watch.superseded(SID, current)
    await notices_seen(store, watch)
    assert not current_turn_stale.is_set()
    watch.release(SID, current_turn_stale)


async def test_another_sessions_turn_does_not_cancel_this_one(
    store: SessionStore, watch: TurnWatch
) -> None:
    mine = await store.next_turn(SID)
    stale = watch.superseded(SID, mine)
    for _ in range(3):
        await store.next_turn("sess-someone-else")
    await notices_seen(store, watch)
    assert not stale.is_set()
    watch.release(SID, stale)
    watch.release(SID, stale)


async def test_waiting_on_an_already_superseded_turn_returns_at_once(
    store: SessionStore, watch: TurnWatch
) -> None:
    await store.next_turn(SID)
    await store.next_turn(SID)
    assert await watch.is_stale(SID, 1)
    assert watch.superseded(SID, 1).is_set()


async def test_is_stale_asks_redis(store: SessionStore, watch: TurnWatch) -> None:
    assert not await watch.is_stale(SID, 0)
    turn = await store.next_turn(SID)
    assert not await watch.is_stale(SID, turn)
    assert await watch.is_stale(SID, turn - 1)
    newer = await store.next_turn(SID)
    assert await watch.is_stale(SID, turn)
    assert not await watch.is_stale(SID, newer)


async def test_a_watch_started_in_another_process_learns_of_turns_too(
    settings: Settings, store: SessionStore, watch: TurnWatch
) -> None:
    # The gateway bumps the turn; a worker elsewhere (its own Redis client) learns of it.
    from fleet.state import connect_redis

    client = connect_redis(settings)
    other = TurnWatch(SessionStore(client, settings))
    await other.start()
    try:
        turn = await store.next_turn(SID)
        stale = other.superseded(SID, turn)
        await store.next_turn(SID)
        await asyncio.wait_for(stale.wait(), timeout=PATIENCE_S)
    finally:
        await other.stop()
        await client.aclose()


async def test_history_keeps_only_the_last_turns_in_order(store: SessionStore) -> None:
    keep = store.settings.history_turns
    exchanges = [Exchange(f"question {i}", f"answer {i}") for i in range(keep + 5)]
    for exchange in exchanges:
        await store.record_exchange(SID, exchange)
    history = await store.history(SID)
    assert history == exchanges[-keep:]
    assert await store.redis.llen(store._key(SID, "history")) == keep  # type: ignore[misc]


async def test_the_model_is_told_a_reply_was_interrupted(store: SessionStore) -> None:
    await store.record_exchange(SID, Exchange("long story?", "Once upon a…", interrupted=True))
    await store.record_exchange(SID, Exchange("hi", "hello!"))
    seen = build_messages("system", await store.history(SID), "go on")
    assert seen[2] == {"role": "assistant", "content": f"Once upon a…{INTERRUPTED_MARK}"}
    assert seen[4] == {"role": "assistant", "content": "hello!"}


async def test_a_reply_cut_off_while_still_playing_corrects_its_history(
    store: SessionStore,
) -> None:
    await store.record_exchange(SID, Exchange("hi", "hello!"))
    await store.record_exchange(SID, Exchange("long story?", "Once upon a time. The end."))
    await store.record_exchange(
        SID, Exchange("long story?", "Once upon a time.", interrupted=True), replaces_last=True
    )
    assert await store.history(SID) == [
        Exchange("hi", "hello!"),
        Exchange("long story?", "Once upon a time.", interrupted=True),
    ]


async def test_history_respects_a_smaller_setting(settings: Settings, store: SessionStore) -> None:
    small = SessionStore(store.redis, settings.model_copy(update={"history_turns": 2}))
    for i in range(5):
        await small.record_exchange(SID, Exchange(f"q{i}", f"a{i}"))
    assert await small.history(SID) == [Exchange("q3", "a3"), Exchange("q4", "a4")]


async def test_ending_an_old_stream_leaves_the_newer_stream_untouched(store: SessionStore) -> None:
    # The client reconnected elsewhere; the older stream is superseded.
    await store.open_session(SID, "gw-1", "stream-old", "digest")
    await store.open_session(SID, "gw-2", "stream-new", "digest")
    await store.end_stream(SID, "stream-old")  # the old connection's teardown runs late
    assert await store.current_stream(SID) == "stream-new"
    await store.end_stream(SID, "stream-new")
    assert await store.current_stream(SID) is None
    assert await store.exists(SID)  # the session (turn, history) outlives its stream


async def test_ending_a_stream_of_an_unknown_session_is_harmless(store: SessionStore) -> None:
    await store.end_stream("sess-never-seen", "stream-x")
    assert not await store.exists("sess-never-seen")


async def test_count_delivery_counts_each_start_of_a_job(store: SessionStore) -> None:
    assert [await store.count_delivery("msg-1") for _ in range(3)] == [1, 2, 3]
    assert await store.count_delivery("msg-2") == 1


async def test_delete_session_forgets_everything(store: SessionStore) -> None:
    await store.open_session(SID, "gw-1", "stream-1", "digest")
    await store.next_turn(SID)
    await store.record_exchange(SID, Exchange("hi", "hello"))
    await store.delete_session(SID)
    assert not await store.exists(SID)
    assert await store.current_turn(SID) == 0
    assert await store.history(SID) == []


async def test_namespaces_do_not_see_each_other(settings: Settings, store: SessionStore) -> None:
    await store.open_session(SID, "gw-1", "stream-1", "digest")
    await store.next_turn(SID)
    neighbour = SessionStore(store.redis, settings.model_copy(update={"namespace": "tx-other"}))
    assert not await neighbour.exists(SID)
    assert await neighbour.current_turn(SID) == 0
