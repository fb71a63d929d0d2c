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
        # One word of a partial may be the start of an acknowledgement ("uh" of "uh-huh"): by
        # the bound the reply goes on (a later transcript that is none still cancels it).
        ("Uh", False, 0.1, Verdict.WAIT),
        ("Uh", False, 0.6, Verdict.RESUME),
        # A word alone that starts no acknowledgement interrupts at once.
        ("Wait", False, 0.1, Verdict.INTERRUPT),
        ("Stop.", False, 0.1, Verdict.INTERRUPT),
        # Partials that may still become acknowledgements: the start of "Okay, I see.", or
        # "Yep." misheard (the benchmark's two false cancels by partial).
        ("Okay, I", False, 0.3, Verdict.WAIT),
        ("Yeah, pal", False, 0.3, Verdict.WAIT),
        ("Yeah, pal", False, 0.6, Verdict.RESUME),
        ("Yeah, pal", True, 0.7, Verdict.INTERRUPT),
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


UNSURE = Backchannels.parse(DEFAULT_ACKNOWLEDGEMENTS["en"], decide_within_s=0.6, least_logprob=-0.5)


@pytest.mark.parametrize(
    ("text", "final", "logprob", "verdict"),
    [
        # A few words the recognizer is unsure of are no words: the reply goes on.
        ("Come.", True, -0.6, Verdict.RESUME),
        ("Good work.", True, -0.9, Verdict.RESUME),
        ("I still live.", True, -0.54, Verdict.RESUME),
        ("Come.", False, -0.6, Verdict.WAIT),
        # Sure of them, they interrupt as ever.
        ("Come.", True, -0.2, Verdict.INTERRUPT),
        ("Wait", False, -0.5, Verdict.INTERRUPT),
        # More words than a few are talk, however unsure the recognizer is of them.
        ("Tell me more about the castle.", True, -1.1, Verdict.INTERRUPT),
        ("Tell me more about", False, -1.1, Verdict.INTERRUPT),
    ],
)
def test_a_few_words_the_recognizer_is_unsure_of_are_taken_for_none(
    text: str, final: bool, logprob: float, verdict: Verdict
) -> None:
    assert UNSURE.judge(text, final=final, waited_s=0.1, logprob=logprob) is verdict
    # Without the rule every transcript is trusted.
    assert ENGLISH.judge("Come.", final=True, waited_s=0.1, logprob=-0.9) is Verdict.INTERRUPT


def test_the_least_logprob_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VF_BARGE_IN_LEAST_LOGPROB", "-0.3")
    settings = Settings()
    assert settings.barge_in_least_logprob == -0.3
    mine = Backchannels.parse("yeah", 0.6, settings.barge_in_least_logprob)
    assert mine.judge("Come.", final=True, waited_s=0.1, logprob=-0.4) is Verdict.RESUME
    assert mine.judge("Come.", final=True, waited_s=0.1, logprob=-0.2) is Verdict.INTERRUPT
