"""The endpointing state machine, driven by synthetic speech and turn probabilities."""

from __future__ import annotations

from dataclasses import replace

from fleet.settings import Settings
from workers.stt.endpointing import (
    Action,
    CheckTurn,
    Commit,
    EndpointConfig,
    Endpointer,
    EndTurn,
    Partial,
    Speculate,
    StartSpeech,
)
from workers.stt.scheduler import BACKGROUND, URGENT, JobQueue, PriorityExecutor

CHUNK = 100
CFG = EndpointConfig(
    chunk=CHUNK,
    vad_threshold=0.5,
    start_chunks=3,
    pre_roll=200,
    first_partial=500,
    partial_interval=500,
    window=2000,
    end_silence=300,
    silence_timeout=1000,
    turn_threshold=0.5,
    tail_pad=100,
    turn_context=8000,
)


def drive(ep: Endpointer, probs: list[float], turn: float = 0.0) -> list[tuple[int, Action]]:
    """Push chunks; answer every CheckTurn with `turn`. Returns (position, action) pairs."""
    out: list[tuple[int, Action]] = []
    for p in probs:
        for action in ep.push(p):
            out.append((ep.position, action))
            if isinstance(action, CheckTurn):
                out += [(ep.position, a) for a in ep.turn_result(turn)]
    return out


def kinds(actions: list[tuple[int, Action]]) -> list[type]:
    return [type(a) for _, a in actions]


def test_short_blips_do_not_start_speech() -> None:
    ep = Endpointer(CFG)
    assert drive(ep, [0.9, 0.9, 0.1, 0.9, 0.1] * 5) == []
    assert not ep.speaking


def test_speech_start_includes_pre_roll_once() -> None:
    ep = Endpointer(CFG)
    actions = drive(ep, [0.0] * 10 + [0.9] * 3)
    assert actions == [(1300, StartSpeech(1000 - 200, voiced=300))]
    assert ep.speaking
    assert drive(ep, [0.9] * 3) == []


def test_pre_roll_is_clamped_to_stream_start() -> None:
    ep = Endpointer(CFG)
    assert drive(ep, [0.9] * 3) == [(300, StartSpeech(0, voiced=300))]


def test_partials_are_spaced_and_cover_uncommitted_audio() -> None:
    ep = Endpointer(CFG)
    actions = drive(ep, [0.0] * 5 + [0.9] * 18)
    partials = [(pos, a) for pos, a in actions if isinstance(a, Partial)]
    assert partials == [(1300, Partial(300, 1300)), (1800, Partial(300, 1800))]


def test_the_first_partial_comes_sooner_than_the_rest() -> None:
    ep = Endpointer(replace(CFG, first_partial=200))
    actions = drive(ep, [0.0] * 5 + [0.9] * 18)
    partials = [(pos, a) for pos, a in actions if isinstance(a, Partial)]
    # Speech starts at 800: the first partial 200 after it, the next ones 500 apart.
    assert partials == [
        (1000, Partial(300, 1000)),
        (1500, Partial(300, 1500)),
        (2000, Partial(300, 2000)),
    ]
    # And so again in the next utterance, which starts at 3800.
    drive(ep, [0.0] * 12)
    actions = drive(ep, [0.9] * 6)
    assert actions[0] == (3800, StartSpeech(3300, voiced=300))
    assert actions[1:] == [(4000, Partial(3300, 4000))]


def test_the_first_partial_is_a_setting() -> None:
    settings = Settings(stt_first_partial_s=0.2, stt_partial_interval_s=0.6)
    config = EndpointConfig.from_settings(settings, sample_rate=1000, chunk=CHUNK)
    assert (config.first_partial, config.partial_interval) == (200, 600)


def test_no_partials_during_a_pause_without_new_speech() -> None:
    ep = Endpointer(CFG)
    drive(ep, [0.9] * 8)
    # Probability between the thresholds: not new speech, not yet silence.
    assert [a for _, a in drive(ep, [0.4] * 8) if isinstance(a, Partial)] == []


def test_window_forces_commit_and_no_segment_exceeds_it() -> None:
    ep = Endpointer(CFG)
    actions = drive(ep, [0.9] * 60)
    commits = [a for _, a in actions if isinstance(a, Commit)]
    assert commits
    for a in actions:
        if isinstance(a[1], Partial | Commit):
            assert a[1].end - a[1].start <= CFG.window
    assert commits[0] == Commit(0, 2000)
    assert commits[1].start == 2000


def test_window_commit_prefers_a_recent_dip() -> None:
    ep = Endpointer(CFG)
    probs = [0.9] * 15 + [0.3] + [0.9] * 10
    commits = [a for _, a in drive(ep, probs) if isinstance(a, Commit)]
    assert commits[0] == Commit(0, 1600)


def test_complete_turn_ends_after_end_silence() -> None:
    ep = Endpointer(CFG)
    actions = drive(ep, [0.9] * 10 + [0.05] * 5, turn=0.9)
    assert kinds(actions) == [StartSpeech, Partial, Commit, CheckTurn, EndTurn]
    _, commit = actions[2]
    _, check = actions[3]
    pos, end = actions[4]
    # The pause commit is the final's tail: speech end plus padding, trailing silence excluded.
    assert commit == Commit(0, 1100)
    assert check == CheckTurn(0, 1000)
    assert (pos, end) == (1300, EndTurn(1100, 1100))
    assert not ep.speaking


def test_incomplete_turn_commits_and_waits_for_timeout() -> None:
    ep = Endpointer(CFG)
    actions = drive(ep, [0.9] * 10 + [0.05] * 12, turn=0.1)
    assert kinds(actions) == [StartSpeech, Partial, Commit, CheckTurn, EndTurn]
    pos, end = actions[-1]
    assert pos == 1000 + CFG.silence_timeout
    assert end == EndTurn(1100, 1100)


def test_a_pause_the_turn_detector_doubts_is_speculated_on_once_its_speech_is_committed() -> None:
    ep = Endpointer(replace(CFG, speculate=True))
    actions = drive(ep, [0.9] * 10 + [0.05] * 12, turn=0.1)
    assert kinds(actions) == [StartSpeech, Partial, Commit, CheckTurn, Speculate, EndTurn]
    # Everything the final will hold is committed by then: the final adds nothing to it.
    assert [a for _, a in actions if isinstance(a, Commit)] == [Commit(0, 1100)]
    assert actions[-1][1] == EndTurn(1100, 1100)


def test_no_speculation_when_the_turn_ends_at_the_pause_or_speculation_is_off() -> None:
    done = drive(Endpointer(replace(CFG, speculate=True)), [0.9] * 10 + [0.05] * 5, turn=0.9)
    assert Speculate not in kinds(done)
    off = drive(Endpointer(replace(CFG, speculate=False)), [0.9] * 10 + [0.05] * 12, turn=0.1)
    assert Speculate not in kinds(off)


def test_each_doubted_pause_is_speculated_on_anew() -> None:
    ep = Endpointer(replace(CFG, speculate=True))
    actions = drive(ep, [0.9] * 10 + [0.05] * 5 + [0.9] * 10 + [0.05] * 5, turn=0.1)
    assert kinds(actions).count(Speculate) == 2
    assert ep.speaking


def test_speculation_follows_the_setting() -> None:
    assert EndpointConfig.from_settings(Settings(speculate_turns=True)).speculate
    assert not EndpointConfig.from_settings(Settings(speculate_turns=False)).speculate


def test_speech_resuming_after_a_pause_continues_the_utterance() -> None:
    ep = Endpointer(CFG)
    actions = drive(ep, [0.9] * 10 + [0.05] * 5 + [0.9] * 10 + [0.05] * 5, turn=0.1)
    assert kinds(actions).count(StartSpeech) == 1
    assert kinds(actions).count(CheckTurn) == 2
    commits = [a for _, a in actions if isinstance(a, Commit)]
    assert commits[0] == Commit(0, 1100)
    assert commits[-1].start >= 1100
    assert ep.speaking


def test_only_one_turn_check_per_pause() -> None:
    ep = Endpointer(CFG)
    actions = drive(ep, [0.9] * 10 + [0.05] * 9, turn=0.1)
    assert kinds(actions).count(CheckTurn) == 1


def test_stale_or_unasked_turn_results_are_ignored() -> None:
    ep = Endpointer(CFG)
    assert ep.turn_result(0.99) == []
    drive(ep, [0.9] * 10)
    assert ep.turn_result(0.99) == []
    assert ep.speaking


def test_next_utterance_starts_after_the_previous_final() -> None:
    ep = Endpointer(CFG)
    drive(ep, [0.9] * 10 + [0.05] * 5, turn=0.9)
    actions = drive(ep, [0.9] * 3)
    # Clamped at the final: its audio is consumed, the pre-roll may not reach back into it.
    assert actions == [(1800, StartSpeech(1300, voiced=300))]


def test_finish_ends_an_utterance_in_progress() -> None:
    ep = Endpointer(CFG)
    assert ep.finish() == []
    drive(ep, [0.9] * 7)
    assert ep.finish() == [EndTurn(0, 700)]
    assert not ep.speaking
    assert ep.finish() == []


def test_keep_from_retains_pre_roll_when_idle_and_uncommitted_audio_when_speaking() -> None:
    ep = Endpointer(CFG)
    drive(ep, [0.0] * 20)
    assert ep.keep_from == 2000 - CFG.pre_roll - CFG.start_chunks * CHUNK
    drive(ep, [0.9] * 3)
    assert ep.keep_from == 2000 - CFG.pre_roll
    drive(ep, [0.9] * 40)
    assert ep.keep_from == 2000 - CFG.pre_roll


def test_hysteresis_keeps_mid_probabilities_from_counting_as_silence() -> None:
    ep = Endpointer(CFG)
    actions = drive(ep, [0.9] * 5 + [0.4] * 30, turn=0.9)
    assert EndTurn not in kinds(actions)


# --- Whisper job ordering (workers/stt/scheduler.py) ---------------------------------------------


def test_urgent_jobs_overtake_queued_partials_in_submission_order() -> None:
    queue = JobQueue()
    queue.push(lambda: "partial A", BACKGROUND)
    queue.push(lambda: "partial B", BACKGROUND)
    queue.push(lambda: "final A", URGENT)
    queue.push(lambda: "commit B", URGENT)
    order = []
    while (job := queue.pop()) is not None:
        order.append(job.fn())
    assert order == ["final A", "commit B", "partial A", "partial B"]


def test_stale_jobs_are_dropped_unrun_and_resolve_to_none() -> None:
    queue = JobQueue()
    ran: list[str] = []
    stale = queue.push(lambda: ran.append("stale"), BACKGROUND, lambda: True)
    fresh = queue.push(lambda: ran.append("fresh"), BACKGROUND, lambda: False)
    cancelled = queue.push(lambda: ran.append("cancelled"), URGENT)
    assert cancelled.future.cancel()
    job = queue.pop()
    assert job is fresh
    assert queue.pop() is None
    assert stale.future.result() is None
    assert ran == []


def test_priority_executor_runs_jobs_and_reports_errors() -> None:
    def boom() -> str:
        raise ValueError("boom")

    executor = PriorityExecutor("test-whisper")
    try:
        assert executor.submit(lambda: "ok", URGENT).result(timeout=5) == "ok"
        error = executor.submit(boom, URGENT).exception(timeout=5)
        assert isinstance(error, ValueError)
    finally:
        executor.shutdown()
