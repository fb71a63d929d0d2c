"""Deadlines of reply pieces and the earliest-first order a TTS worker serves held pieces in."""

from __future__ import annotations

import asyncio
import json

import pytest

from fleet import contracts
from fleet.contracts import TtsRequest
from fleet.deadlines import (
    CHARS_PER_S,
    Closed,
    EarliestFirst,
    Rank,
    ReplyClock,
    speech_seconds,
    tts_rank,
)


def test_a_first_piece_is_due_when_sent_and_a_later_one_when_the_audio_before_it_ends() -> None:
    now = [1000.0]
    clock = ReplyClock(now=lambda: now[0])
    first, second, third = "Sure, here is", "a story about a cat.", "It lived by the sea."
    assert clock.deadline(first) == 1000.0
    now[0] = 1000.4  # the LLM took a while to write the next piece: the clock counts from the first
    assert clock.deadline(second) == pytest.approx(1000.0 + len(first) / CHARS_PER_S)
    assert clock.deadline(third) == pytest.approx(1000.0 + len(first + second) / CHARS_PER_S)


def test_faster_speech_brings_later_pieces_forward() -> None:
    assert speech_seconds("a story about a cat.", speed=2.0) == pytest.approx(
        speech_seconds("a story about a cat.") / 2
    )
    clock = ReplyClock(speed=2.0, now=lambda: 0.0)
    clock.deadline("Sure, here is")
    assert clock.deadline("x") == pytest.approx(len("Sure, here is") / CHARS_PER_S / 2)


def test_a_first_piece_goes_before_any_later_piece_whatever_their_deadlines() -> None:
    overdue_later = tts_rank(sentence=3, deadline=100.0, received=90.0)
    new_first = tts_rank(sentence=0, deadline=200.0, received=200.0)
    assert new_first < overdue_later


def test_later_pieces_go_earliest_deadline_first() -> None:
    far = tts_rank(sentence=6, deadline=130.0, received=100.0)
    near = tts_rank(sentence=1, deadline=110.0, received=105.0)
    assert near < far


@pytest.mark.parametrize("deadline", [0.0, -5.0, float("nan"), float("inf")])
def test_a_piece_without_a_usable_deadline_is_due_when_received(deadline: float) -> None:
    assert tts_rank(sentence=2, deadline=deadline, received=123.0) == (1, 123.0)


def test_a_request_from_before_deadlines_decodes_with_none() -> None:
    old = contracts.Envelope(
        "tts.request",
        "sess-1",
        json.dumps({"turn": 1, "sentence": 0, "text": "Hi.", "voice": ""}).encode(),
        {},
    )
    message = contracts.decode(old.kind, old.session_id, old.body, old.headers)
    assert message == TtsRequest("sess-1", 1, 0, "Hi.")
    assert message.deadline == 0.0


async def step() -> None:
    """One turn of the event loop: every task just created runs until it waits (at the gate)."""
    await asyncio.sleep(0)


async def served_order(gate: EarliestFirst, ranks: list[Rank]) -> list[Rank]:
    """Hold the gate's only slot while ``ranks`` line up, then let them through one by one."""
    order: list[Rank] = []
    release = asyncio.Event()
    entered = asyncio.Event()

    async def holder() -> None:
        async with gate.slot((0, 0.0)):
            entered.set()
            await release.wait()

    async def job(rank: Rank) -> None:
        async with gate.slot(rank):
            order.append(rank)

    holding = asyncio.create_task(holder())
    await entered.wait()
    jobs = [asyncio.create_task(job(rank)) for rank in ranks]
    await step()
    assert gate.waiting == len(ranks)
    release.set()
    await asyncio.gather(holding, *jobs)
    return order


async def test_a_freed_slot_goes_to_the_smallest_rank_then_in_arrival_order() -> None:
    ranks: list[Rank] = [(1, 50.0), (1, 20.0), (0, 100.0), (1, 20.0), (0, 90.0)]
    order = await served_order(EarliestFirst(1), ranks)
    assert order == [(0, 90.0), (0, 100.0), (1, 20.0), (1, 20.0), (1, 50.0)]


class Holders:
    """Jobs that hold their slot until released one by one; records who started."""

    def __init__(self, gate: EarliestFirst) -> None:
        self.gate = gate
        self.started: list[str] = []
        self._done: dict[str, asyncio.Event] = {}
        self.tasks: list[asyncio.Task[None]] = []

    def add(self, name: str, rank: Rank) -> None:
        self._done[name] = asyncio.Event()
        self.tasks.append(asyncio.create_task(self._job(name, rank)))

    async def _job(self, name: str, rank: Rank) -> None:
        async with self.gate.slot(rank):
            self.started.append(name)
            await self._done[name].wait()

    async def finish(self, name: str) -> None:
        self._done[name].set()
        await step()
        await step()  # the job leaves; the gate starts the next, which runs to its wait

    async def finish_all(self) -> None:
        for done in self._done.values():
            done.set()
        await asyncio.gather(*self.tasks)


async def test_never_more_holders_than_slots() -> None:
    jobs = Holders(EarliestFirst(2))
    for n in range(5):
        jobs.add(f"first {n}", (0, float(n)))
    await step()
    assert jobs.started == ["first 0", "first 1"]
    assert jobs.gate.waiting == 3
    await jobs.finish("first 0")
    assert jobs.started == ["first 0", "first 1", "first 2"]
    await jobs.finish_all()


async def test_two_slots_run_later_pieces_one_at_a_time_and_a_first_piece_beside_one() -> None:
    jobs = Holders(EarliestFirst(2))
    jobs.add("later 1", (1, 10.0))
    jobs.add("later 2", (1, 11.0))
    await step()
    assert jobs.started == ["later 1"]  # the second slot is kept for a first piece
    jobs.add("first", (0, 12.0))
    await step()
    assert jobs.started == ["later 1", "first"]  # at once, not after "later 1"
    assert jobs.gate.running == 2
    await jobs.finish("later 1")
    assert jobs.started == ["later 1", "first"]  # nothing beside a first piece
    await jobs.finish("first")
    assert jobs.started == ["later 1", "first", "later 2"]
    await jobs.finish_all()


async def test_with_one_slot_a_first_piece_waits_only_for_the_piece_in_synthesis() -> None:
    jobs = Holders(EarliestFirst(1))
    jobs.add("later 1", (1, 10.0))
    jobs.add("later 2", (1, 11.0))
    jobs.add("first", (0, 12.0))
    await step()
    assert jobs.started == ["later 1"]
    await jobs.finish("later 1")
    assert jobs.started == ["later 1", "first"]
    await jobs.finish_all()
    assert jobs.started == ["later 1", "first", "later 2"]


async def test_a_cancelled_waiter_leaves_the_line_and_the_slot_passes_on() -> None:
    gate = EarliestFirst(1)
    release = asyncio.Event()
    served: list[str] = []

    async def job(name: str, rank: Rank, hold: bool = False) -> None:
        async with gate.slot(rank):
            served.append(name)
            if hold:
                await release.wait()

    holder = asyncio.create_task(job("holder", (0, 0.0), hold=True))
    await step()
    assert served == ["holder"]
    gone = asyncio.create_task(job("gone", (0, 1.0)))
    kept = asyncio.create_task(job("kept", (1, 1.0)))
    await step()
    assert gate.waiting == 2
    gone.cancel()
    release.set()
    await asyncio.gather(holder, kept)
    assert gone.cancelled()
    assert served == ["holder", "kept"]


async def test_closing_hands_back_the_waiters_and_refuses_newcomers() -> None:
    gate = EarliestFirst(1)
    release = asyncio.Event()
    entered = asyncio.Event()

    async def holder() -> str:
        async with gate.slot((0, 0.0)):
            entered.set()
            await release.wait()
        return "done"

    async def waiter() -> None:
        async with gate.slot((1, 1.0)):
            pass

    holding = asyncio.create_task(holder())
    await entered.wait()
    waiting = asyncio.create_task(waiter())
    await step()
    assert gate.waiting == 1
    gate.close()
    with pytest.raises(Closed):
        await waiting
    with pytest.raises(Closed):
        await waiter()
    release.set()
    assert await holding == "done"  # what was started finishes


async def test_no_later_piece_starts_beside_a_first_piece_even_with_slots_to_spare() -> None:
    jobs = Holders(EarliestFirst(3))
    jobs.add("first", (0, 10.0))
    jobs.add("later 1", (1, 11.0))
    jobs.add("later 2", (1, 12.0))
    await step()
    assert jobs.started == ["first"]
    await jobs.finish("first")
    assert jobs.started == ["first", "later 1", "later 2"]  # two of three slots, one kept
    await jobs.finish_all()
