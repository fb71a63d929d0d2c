"""The checks the failover and barge-in tests rely on catch what they are there to catch."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from tests.replies import (
    HeardReply,
    SpokenSentence,
    assert_heard_as_without_fault,
    assert_nothing_of_a_cancelled_turn_after_its_cancel,
)
from voicefleet.client import Received


def item(kind: str, **data: Any) -> Received:
    return Received(0.0, kind, {"type": kind, **data})


FRAME = Received(0.0, "audio", b"\x00\x01")


def test_a_barge_in_done_right_passes() -> None:
    assert_nothing_of_a_cancelled_turn_after_its_cancel(
        [
            item("assistant_text", text="Once ", turn=1),
            item("audio_start", turn=1),
            FRAME,
            item("audio_cancel", turn=1),
            item("transcript", text="Stop.", final=True),
            item("assistant_text", text="Sure.", turn=3),
            item("audio_start", turn=3),
            FRAME,
            item("audio_end", turn=3),
        ]
    )


@pytest.mark.parametrize(
    "late",
    [
        [FRAME],
        [item("assistant_text", text="upon a time", turn=1)],
        [item("audio_end", turn=1)],
        [item("audio_start", turn=3), FRAME, item("audio_end", turn=1)],
        [item("transcript", text="Stop", final=False), item("audio_cancel", turn=1)],
    ],
    ids=["frame", "text", "audio_end", "end-of-old-during-new", "cancelled-again"],
)
def test_anything_of_a_cancelled_turn_after_its_cancel_fails(late: list[Received]) -> None:
    received = [item("audio_start", turn=1), FRAME, item("audio_cancel", turn=1), *late]
    with pytest.raises(AssertionError):
        assert_nothing_of_a_cancelled_turn_after_its_cancel(received)


REFERENCE = HeardReply(
    session_id="s",
    question="Tell me a story.",
    turn=1,
    deltas=("Once upon a time.", " The end."),
    frames=(b"a1", b"a2", b"b1"),
    sentences=(
        SpokenSentence(0, "Once upon a time.", (b"a1", b"a2"), 2),
        SpokenSentence(1, "The end.", (b"b1",), 1),
    ),
    redone_deltas=0,
)


def test_the_same_reply_heard_again_passes() -> None:
    assert_heard_as_without_fault(dataclasses.replace(REFERENCE, session_id="t"), REFERENCE)


@pytest.mark.parametrize(
    "heard",
    [
        dataclasses.replace(REFERENCE, frames=(b"a1", b"a2", b"a2", b"b1")),  # a chunk twice
        dataclasses.replace(REFERENCE, frames=(b"a1", b"b1")),  # a chunk missed
        dataclasses.replace(REFERENCE, deltas=("Once upon a time.", " The end.", " The end.")),
        dataclasses.replace(
            REFERENCE,
            frames=(b"a1", b"aX", b"b1"),
            sentences=(
                SpokenSentence(0, "Once upon a time.", (b"a1", b"aX"), 2),
                REFERENCE.sentences[1],
            ),
        ),  # other audio
    ],
    ids=["doubled", "missed", "text-doubled", "other-audio"],
)
def test_a_reply_heard_otherwise_fails(heard: HeardReply) -> None:
    with pytest.raises(AssertionError):
        assert_heard_as_without_fault(heard, REFERENCE)
