"""Whether the user's speech over a playing reply interrupts it or only acknowledges it. No I/O.

"Yeah.", "uh-huh", "I see": a listener's backchannel is no request to stop. When speech starts
over a reply, playback pauses at once and the words the recognizer hears decide, within a
bounded time: words that are not an acknowledgement (or a question) interrupt, as barge-in
always did; an acknowledgement, or no words at all (a cough, a noise), resume the reply.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

# "uh-huh" and "uh huh" are one phrase; Whisper writes both.
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")
# More acknowledgements in a row than this are talk, not a backchannel.
_MOST_PHRASES = 3
# A partial is a guess at speech still going on: one word of it that is no acknowledgement may
# be the start of one ("uh" of "uh-huh") or a mishearing ("yeah, pal" of "yep"). Two such words,
# or a question, interrupt at once.
_PARTIAL_WORDS_THAT_INTERRUPT = 2


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
    acknowledgements, or none at all, resume the reply without waiting for the end of the turn.
    """

    phrases: frozenset[tuple[str, ...]]
    decide_within_s: float

    @classmethod
    def parse(cls, listed: str, decide_within_s: float) -> Backchannels:
        """``listed``: comma-separated phrases, e.g. ``"yeah, uh-huh, i see"``."""
        phrases = frozenset(words for p in listed.split(",") if (words := spoken_words(p)))
        return cls(phrases, decide_within_s)

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
        return len(rest) < _PARTIAL_WORDS_THAT_INTERRUPT or any(
            p[: len(rest)] == rest for p in self.phrases
        )

    def judge(self, text: str, *, final: bool, waited_s: float) -> Verdict:
        """What the user said since speech started over the reply (``final``: all of it)."""
        decided = final or waited_s >= self.decide_within_s
        if spoken_words(text) and not self.is_acknowledgement(text):
            if decided or not self._may_become_one(text):
                return Verdict.INTERRUPT
            return Verdict.WAIT
        return Verdict.RESUME if decided else Verdict.WAIT
