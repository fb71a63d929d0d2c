"""A new STT owner hears the utterance in order, even when live frames beat the replay."""

from __future__ import annotations

from typing import Any

from fleet.contracts import AudioChunk
from workers.stt.main import HeldSession


def chunk(seq: int) -> AudioChunk:
    return AudioChunk("session", "stream", seq, b"\x00\x00")


def inbox_seqs(held: HeldSession) -> list[int]:
    seqs = []
    while not held.inbox.empty():
        item = held.inbox.get_nowait()
        assert isinstance(item, AudioChunk)
        seqs.append(item.seq)
    return seqs


def test_live_frames_that_arrive_before_the_replay_are_fed_after_it_in_order() -> None:
    unused: Any = None
    held = HeldSession("session", "stream", unused, unused)
    held.early += [chunk(12), chunk(11)]  # sent live before the gateway saw the new owner
    for seq in range(1, 11):
        held.inbox.put_nowait(chunk(seq))  # the replay
    held.end_replay()
    assert inbox_seqs(held) == list(range(1, 13))
    assert held.replay_done and not held.early
