"""Cut a streamed chat reply into pieces that TTS can start speaking.

The text arrives a few characters at a time. A piece leaves as soon as its end is certain,
so the first audio of a reply does not wait for more of the reply than it needs. The first
piece may end at a clause boundary instead of a sentence end, or, when no clause ends soon,
after a few words: synthesis of a piece must finish before its first byte plays, so a short
first piece is heard sooner, and the rest of the reply catches up behind it. Later pieces are
sentences; a long one is cut at its clauses, so that TTS workers can share it.

Being unsure only ever costs a little latency (a piece waits for the next delta) or an extra
cut; it never drops text, because every character that is not markup noise ends up in some
piece.
"""

from __future__ import annotations

import re
from enum import Enum, auto

_SENTENCE_MARKS = frozenset(".!?…")
_CLAUSE_MARKS = frozenset(",;:—")
# Closers stay with the sentence they close: `"Stop!" she said` cuts after the quote.
_CLOSERS = frozenset("\"'\u201d\u2019)]")  # straight and curly quotes
_OPENERS = "\"'\u201c\u2018(["
# Markup a chat model emits although asked not to; TTS would read it out or stumble over it.
_NOISE = re.compile(r"[*#`]")

# A period after these is never a sentence end: a name or an example always follows.
_NEVER_FINAL = frozenset(
    {"mr", "mrs", "ms", "dr", "prof", "st", "mt", "sr", "jr", "vs", "e.g", "i.e"}
)
# These may end a sentence ("... apples, pears, etc. Then ..."), so a period after them is
# taken as an end only when the next word is capitalized.
_MAYBE_FINAL = frozenset({"etc", "inc", "ltd", "co", "corp", "approx"})
# A first piece cut between words never ends on one of these: they lean on the next word, and
# a pause after them sounds broken ("Once upon a | time").
_LEANING_WORDS = frozenset(
    """
    a an the of to and or but nor in on at by for with from into onto as than that which who
    whose is are was were be been am has have had do does did will would can could shall should
    may might must not no my your his her its our their this these those very so if because
    while when where about over under between i
    """.split()  # noqa: SIM905 (a paragraph of words reads better than 70 quoted ones)
)
# Later sentences longer than this are cut at a clause mark (about 7 s of speech).
_LONG_PIECE_CHARS = 100


class _Verdict(Enum):
    CUT = auto()  # a piece ends here
    NO = auto()  # not a boundary: scan on
    WAIT = auto()  # undecidable until more text arrives


class SentenceBuffer:
    """Accumulates the deltas of one reply and releases speakable pieces.

    Use one buffer per reply: `push` every delta, then `flush` once at the end of the stream.
    Pieces have markup noise removed and whitespace collapsed; pieces with nothing to say
    (punctuation only) are dropped.
    """

    def __init__(
        self, first_clause_chars: int, *, first_piece_words: int = 0, max_chars: int = 400
    ) -> None:
        """``first_piece_words``: with no clause or sentence end by then, the first piece ends
        at the first word boundary from this many words on (0: it waits for one)."""
        if first_clause_chars < 1:
            raise ValueError("first_clause_chars must be at least 1")
        if first_piece_words < 0:
            raise ValueError("first_piece_words must not be negative")
        if max_chars <= first_clause_chars:
            raise ValueError("max_chars must be larger than first_clause_chars")
        self._first_clause_chars = first_clause_chars
        self._first_piece_words = first_piece_words
        # A run-on reply without punctuation would otherwise reach TTS as one huge piece
        # (slow first byte, and beyond what Kokoro synthesizes in one pass).
        self._max_chars = max_chars
        self._pending = ""
        self._started = False  # whether a piece of this reply has gone out

    def push(self, delta: str) -> list[str]:
        """Add a delta of the reply; return the pieces it completed, in order."""
        self._pending += _NOISE.sub("", delta)
        pieces: list[str] = []
        while (cut := self._find_cut()) is not None:
            self._emit(self._pending[:cut], pieces)
            self._pending = self._pending[cut:]
        return pieces

    def flush(self) -> list[str]:
        """End of the reply: return whatever is left, as at most one piece."""
        pieces: list[str] = []
        self._emit(self._pending, pieces)
        self._pending = ""
        return pieces

    def _emit(self, raw: str, pieces: list[str]) -> None:
        piece = " ".join(raw.split())
        if any(ch.isalnum() for ch in piece):
            pieces.append(piece)
            self._started = True

    def _find_cut(self) -> int | None:
        """Index just past the end of the first complete piece in the buffer, if there is one."""
        text = self._pending
        n = len(text)
        # Whichever comes first: a sentence or clause end, or the first piece's word boundary.
        word_cut = self._word_cut(text) if not self._started else None
        i = 0
        while i < n:
            if word_cut is not None and i >= word_cut:
                return word_cut
            ch = text[i]
            if ch == "\n":
                return i + 1
            if ch in _SENTENCE_MARKS:
                run_end = i
                while run_end < n and text[run_end] in _SENTENCE_MARKS:
                    run_end += 1
                end = run_end
                while end < n and text[end] in _CLOSERS:
                    end += 1
                verdict = self._sentence_end(text, i, run_end, end)
                if verdict is _Verdict.WAIT:
                    return None
                if verdict is _Verdict.CUT:
                    return end
                i = run_end
                continue
            if ch in _CLAUSE_MARKS:
                verdict = self._clause_end(text, i)
                if verdict is _Verdict.WAIT:
                    return None
                if verdict is _Verdict.CUT:
                    return i + 1
            i += 1
        if n > self._max_chars:
            return self._forced_cut(text)
        return word_cut

    def _sentence_end(self, text: str, start: int, run_end: int, end: int) -> _Verdict:
        """Decide whether the marks text[start:run_end] (closers up to `end`) end a sentence."""
        marks = text[start:run_end]
        ellipsis = "…" in marks or ".." in marks
        if end == len(text):
            # Nothing follows yet. `!` and `?` end a sentence whatever comes next. A period
            # waits for the next delta, which costs one inter-token gap (~12 ms at 80 tokens/s)
            # but is the only way to tell "blue." from "3." + "5", "U." + "S.", "example." +
            # "com", and "Hmm." + "..".
            return _Verdict.WAIT if "." in marks or ellipsis else _Verdict.CUT
        if not text[end].isspace():
            return _Verdict.NO  # inside a token: 3.5, e.g, U.S, example.com
        if ellipsis:
            return _next_word_capitalized(text, end)
        if marks != ".":
            return _Verdict.CUT
        word = _word_before(text, start).lower()
        if word in _NEVER_FINAL or _is_initial(word):
            return _Verdict.NO
        if word in _MAYBE_FINAL or "." in word:
            return _next_word_capitalized(text, end)
        return _Verdict.CUT

    def _clause_end(self, text: str, at: int) -> _Verdict:
        enough = self._first_clause_chars if not self._started else _LONG_PIECE_CHARS
        if len(" ".join(text[: at + 1].split())) < enough:
            return _Verdict.NO
        if text[at] == "—":
            return _Verdict.CUT
        if at + 1 == len(text):
            # "1," may become "1,000" and "10:" "10:30"; after a word the clause is over.
            return _Verdict.WAIT if at > 0 and text[at - 1].isdigit() else _Verdict.CUT
        return _Verdict.CUT if text[at + 1].isspace() else _Verdict.NO

    def _word_cut(self, text: str) -> int | None:
        """Just past the first whole word, from the ``first_piece_words``-th on, that does not
        lean on the next one; None while there is none yet (or no word cuts are made)."""
        if not self._first_piece_words:
            return None
        for words, word in enumerate(re.finditer(r"\S+(?=\s)", text), start=1):
            bare = word.group().strip(_OPENERS + "".join(_CLOSERS)).lower()
            if words >= self._first_piece_words and bare not in _LEANING_WORDS:
                return word.end()
        return None

    def _forced_cut(self, text: str) -> int:
        window = text[: self._max_chars]
        clause = max((k for k, ch in enumerate(window) if ch in _CLAUSE_MARKS), default=-1)
        # A clause mark near the start would leave nearly as long a remainder.
        if clause >= self._max_chars // 2:
            return clause + 1
        space = window.rfind(" ")
        return space + 1 if space > 0 else self._max_chars


def _word_before(text: str, at: int) -> str:
    start = at
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    return text[start:at].lstrip(_OPENERS)


def _is_initial(word: str) -> bool:
    return len(word) == 1 and word.isalpha()


def _next_word_capitalized(text: str, after: int) -> _Verdict:
    rest = text[after:].lstrip()
    if not rest:
        return _Verdict.WAIT
    first = rest.lstrip(_OPENERS)[:1]
    if not first:
        return _Verdict.WAIT
    return _Verdict.CUT if first.isupper() or first.isdigit() else _Verdict.NO
