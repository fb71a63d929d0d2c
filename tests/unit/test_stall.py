"""The load generator's playback stall: how long a listener would have waited mid-reply."""

from __future__ import annotations

import pytest

from benchmarks.loadgen import playback_stall


def test_audio_arriving_faster_than_it_plays_never_stalls() -> None:
    assert playback_stall([(0.0, 1.0), (0.2, 1.0), (0.4, 1.0)]) == 0.0


def test_a_chunk_arriving_after_the_buffer_ran_dry_stalls_for_the_gap() -> None:
    # 1 s plays from t=0; the next chunk comes at t=1.5: the listener hears 0.5 s of nothing.
    assert playback_stall([(0.0, 1.0), (1.5, 1.0)]) == pytest.approx(0.5)


def test_stalls_add_up_and_playback_resumes_from_the_late_chunk() -> None:
    # Plays 0-0.5, waits to 1.0, plays 1.0-1.5, then the chunk at 1.2 is already buffered,
    # plays 1.5-2.0; the chunk at 3.0 stalls 1.0 more.
    arrivals = [(0.0, 0.5), (1.0, 0.5), (1.2, 0.5), (3.0, 0.5)]
    assert playback_stall(arrivals) == pytest.approx(1.5)


def test_the_wait_for_the_first_chunk_is_not_a_stall() -> None:
    assert playback_stall([(5.0, 0.5)]) == 0.0
    assert playback_stall([]) == 0.0
