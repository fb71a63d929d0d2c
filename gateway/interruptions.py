"""Whether the user's speech over a playing reply interrupts it or only acknowledges it. No I/O.

"Yeah.", "uh-huh", "I see": a listener's backchannel is no request to stop. When speech starts
over a reply, playback pauses at once and the words the recognizer hears decide, within a
bounded time: words that are not an acknowledgement (or a question) interrupt, as barge-in
always did; an acknowledgement, or no words at all (a cough, a noise), resume the reply.

A few words the recognizer is unsure of count as no words: Whisper hears words in wordless
sounds and mishears short acknowledgements ("Come." for "Hmm."), and does so with a low mean
token log-probability, whereas the short requests it hears right it is mostly sure of
(measured: docs/benchmarks.md, "Acknowledgements and interruptions").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

# "uh-huh" and "uh huh" are one phrase; Whisper writes both.
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")
# More acknowledgements in a row than this are talk, not a backchannel.
_MOST_PHRASES = 3
# A partial is a guess at speech still going on: after acknowledgements, one word more may be a
# mishearing of their end ("yeah, pal" of "yep"), and the start of an acknowledgement ("uh" of
# "uh-huh") may become one. Two words more, a word alone that starts no acknowledgement ("wait"),
# or a question, interrupt at once.
_PARTIAL_WORDS_THAT_INTERRUPT = 2
# Up to this many words, what the recognizer is unsure of is taken for no words; more is talk,
# misheard or not.
_MOST_UNSURE_WORDS = 3


class Verdict(Enum):
    WAIT = "wait"  # not known yet: keep the reply paused
    INTERRUPT = "interrupt"  # a real interruption: cancel the reply
    RESUME = "resume"  # an acknowledgement or no words: the reply goes on


def spoken_words(text: str) -> tuple[str, ...]:
    return tuple(w.lower() for w in _WORD.findall(text.replace("-", " ")))


@dataclass(frozen=True, slots=True)
class Backchannels:
    """The acknowledgements of one language, and how long a decision may take.

    ``decide_within_s``: from speech start, after which words heard so far that are all
    acknowledgements (or may still become one), or none at all, resume the reply without
    waiting for the end of the turn; words heard later that are not one still cancel it.
    ``least_logprob``: a transcript of a few words whose mean token log-probability is lower
    counts as no words.
    """

    phrases: frozenset[tuple[str, ...]]
    decide_within_s: float
    least_logprob: float = float("-inf")

    @classmethod
    def parse(
        cls, listed: str, decide_within_s: float, least_logprob: float = float("-inf")
    ) -> Backchannels:
        """``listed``: comma-separated phrases, e.g. ``"yeah, uh-huh, i see"``."""
        phrases = frozenset(words for p in listed.split(",") if (words := spoken_words(p)))
        return cls(phrases, decide_within_s, least_logprob)

    def is_acknowledgement(self, text: str) -> bool:
        """Words that are one to a few acknowledgements in a row, and no question."""
        phrases, rest = self._acknowledgements_in(spoken_words(text))
        return "?" not in text and not rest and 0 < phrases <= _MOST_PHRASES

    def _acknowledgements_in(self, words: tuple[str, ...]) -> tuple[int, tuple[str, ...]]:
        """How many acknowledgements ``words`` begin with, and the words after them."""
        longest = max((len(p) for p in self.phrases), default=0)
        phrases = 0
        while words:
            match = next(
                (n for n in range(min(longest, len(words)), 0, -1) if words[:n] in self.phrases),
                0,
            )
            if not match:
                break
            words = words[match:]
            phrases += 1
        return phrases, words

    def _may_become_one(self, text: str) -> bool:
        """A partial that may still end as an acknowledgement: acknowledgements, then at most one
        word more, or the start of an acknowledgement ("okay, i" of "okay, i see")."""
        phrases, rest = self._acknowledgements_in(spoken_words(text))
        if "?" in text or phrases > _MOST_PHRASES:
            return False
        if any(p[: len(rest)] == rest for p in self.phrases):
            return True
        return phrases > 0 and len(rest) < _PARTIAL_WORDS_THAT_INTERRUPT

    def heard_surely(self, text: str, logprob: float) -> bool:
        """Words, and sure enough of them to act on (see ``least_logprob``)."""
        words = spoken_words(text)
        return bool(words) and (len(words) > _MOST_UNSURE_WORDS or logprob >= self.least_logprob)

    def judge(self, text: str, *, final: bool, waited_s: float, logprob: float = 0.0) -> Verdict:
        """What the user said since speech started over the reply (``final``: all of it), as
        sure of it as ``logprob`` (the recognizer's mean token log-probability)."""
        decided = final or waited_s >= self.decide_within_s
        if (
            self.heard_surely(text, logprob)
            and not self.is_acknowledgement(text)
            and (final or not self._may_become_one(text))
        ):
            return Verdict.INTERRUPT
        return Verdict.RESUME if decided else Verdict.WAIT
