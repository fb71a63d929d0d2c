"""Which words over a playing reply are an acknowledgement, and what they decide. No I/O."""

from __future__ import annotations

import pytest

from fleet.settings import DEFAULT_ACKNOWLEDGEMENTS, Settings
from gateway.interruptions import Backchannels, Verdict

ENGLISH = Backchannels.parse(DEFAULT_ACKNOWLEDGEMENTS["en"], decide_within_s=0.6)


@pytest.mark.parametrize(
    "heard",
    [
        "Yeah.",
        "Uh-huh.",
        "uh huh",
        "Mm-hmm.",
        "Mhm.",
        "Okay.",
        "I see.",
        "Yeah, yeah.",
        "Right, okay.",
    ],
)
def test_acknowledgements_as_whisper_writes_them_are_recognized(heard: str) -> None:
    assert ENGLISH.is_acknowledgement(heard)


@pytest.mark.parametrize(
    "heard",
    [
        "Wait.",
        "Yeah, but what about the dragon",
        "I see the problem",
        "Okay?",
        "Really?",
        "Yeah, yeah, yeah, yeah.",
        "",
        " . ",
    ],
)
def test_requests_questions_and_long_runs_are_not_acknowledgements(heard: str) -> None:
    assert not ENGLISH.is_acknowledgement(heard)


@pytest.mark.parametrize(
    ("text", "final", "waited_s", "verdict"),
    [
        ("Wait, stop", False, 0.1, Verdict.INTERRUPT),
        ("Yeah, but", False, 0.1, Verdict.WAIT),
        ("Why?", False, 0.1, Verdict.INTERRUPT),
        # One word of a partial may be the start of an acknowledgement ("uh" of "uh-huh").
        ("Uh", False, 0.1, Verdict.WAIT),
        ("Uh", False, 0.6, Verdict.INTERRUPT),
        # Partials that may still become acknowledgements: the start of "Okay, I see.", or
        # "Yep." misheard (the benchmark's two false cancels by partial).
        ("Okay, I", False, 0.3, Verdict.WAIT),
        ("Yeah, pal", False, 0.3, Verdict.WAIT),
        ("Yeah, but who", False, 0.3, Verdict.INTERRUPT),
        ("Wait.", True, 0.3, Verdict.INTERRUPT),
        ("What about it?", True, 1.0, Verdict.INTERRUPT),
        ("Yeah.", False, 0.3, Verdict.WAIT),
        ("Yeah.", False, 0.6, Verdict.RESUME),
        ("", False, 0.3, Verdict.WAIT),
        ("", False, 0.7, Verdict.RESUME),
        ("Mm-hmm.", True, 0.2, Verdict.RESUME),
        ("", True, 0.2, Verdict.RESUME),
    ],
)
def test_words_decide_at_once_one_word_acknowledgements_and_silence_by_the_end_or_the_bound(
    text: str, final: bool, waited_s: float, verdict: Verdict
) -> None:
    assert ENGLISH.judge(text, final=final, waited_s=waited_s) is verdict


def test_each_language_has_its_own_acknowledgements() -> None:
    german = Backchannels.parse(DEFAULT_ACKNOWLEDGEMENTS["de"], 0.6)
    assert german.is_acknowledgement("Ja, genau.")
    assert not ENGLISH.is_acknowledgement("Ja, genau.")
    # A language without a list has no acknowledgements: any words interrupt.
    assert not Backchannels.parse("", 0.6).is_acknowledgement("Yeah.")


def test_the_acknowledgements_and_the_bound_are_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VF_BARGE_IN_ACKNOWLEDGEMENTS", '{"en": "roger, copy that"}')
    monkeypatch.setenv("VF_BARGE_IN_DECISION_S", "0.4")
    settings = Settings()
    assert settings.barge_in_acknowledgements == {"en": "roger, copy that"}
    mine = Backchannels.parse(
        settings.barge_in_acknowledgements["en"], settings.barge_in_decision_s
    )
    assert mine.is_acknowledgement("Copy that.")
    assert not mine.is_acknowledgement("Yeah.")
    assert mine.judge("", final=False, waited_s=0.4) is Verdict.RESUME
