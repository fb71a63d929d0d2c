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


async def test_never_more_holders_than_slots() -> None:
    gate = EarliestFirst(2)
    inside = 0
    most = 0
    release = asyncio.Event()

    async def job(n: int) -> None:
        nonlocal inside, most
        async with gate.slot((1, float(n))):
            inside += 1
            most = max(most, inside)
            await release.wait()
            inside -= 1

    jobs = [asyncio.create_task(job(n)) for n in range(5)]
    await step()
    assert gate.waiting == 3
    assert inside == 2
    release.set()
    await asyncio.gather(*jobs)
    assert most == 2


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
