"""Puts one turn's reply audio in order and knows what of it the user has heard. No I/O.

Sentences of a turn are synthesized by any TTS replica, in parallel, and a redelivered job may
send chunks twice; the client must hear them once, strictly by (sentence, chunk).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fleet.audio import OUTPUT_SAMPLE_RATE
from fleet.contracts import AudioOut

_BYTES_PER_SECOND = OUTPUT_SAMPLE_RATE * 2
# Played time is a sum of floats; well under one sample, so a fully played sentence counts as heard.
_EPSILON_S = 1e-6


@dataclass
class _Sentence:
    text: str = ""
    seconds: float = 0.0
    complete: bool = False


@dataclass
class ReplyAssembler:
    turn: int
    total_sentences: int | None = None
    _next_sentence: int = 0
    _next_chunk: int = 0
    _pending: dict[tuple[int, int], AudioOut] = field(default_factory=dict)
    _abandoned: set[int] = field(default_factory=set)  # sentences whose rest will never come
    _emitted: list[_Sentence] = field(default_factory=list)

    def add(self, audio: AudioOut) -> list[AudioOut]:
        """Accept one chunk; return the chunks that can now be sent, in order (maybe none)."""
        key = (audio.sentence, audio.chunk)
        if audio.turn != self.turn or key < (self._next_sentence, self._next_chunk):
            return []
        self._pending.setdefault(key, audio)
        return self._ready()

    def abandon(self, sentence: int) -> list[AudioOut]:
        """Sentence ``sentence`` ends with what has arrived of it (maybe nothing): its synthesis
        was given up. Returns the chunks that can now be sent, in order, its end included as an
        empty last chunk (so that a reply of given-up sentences still starts and ends)."""
        if sentence >= self._next_sentence:
            self._abandoned.add(sentence)
        return self._ready()

    def _ready(self) -> list[AudioOut]:
        ready: list[AudioOut] = []
        while True:
            key = (self._next_sentence, self._next_chunk)
            if key in self._pending:
                chunk = self._pending.pop(key)
                ready.append(chunk)
                self._record(chunk)
                ends_sentence = chunk.last
            elif self._next_sentence in self._abandoned:
                self._abandoned.discard(self._next_sentence)
                end = AudioOut("", self.turn, self._next_sentence, self._next_chunk, True, b"")
                ready.append(end)
                self._record(end)
                ends_sentence = True
            else:
                return ready
            if ends_sentence:
                self._next_sentence += 1
                self._next_chunk = 0
            else:
                self._next_chunk += 1

    def _record(self, chunk: AudioOut) -> None:
        if chunk.chunk == 0:
            self._emitted.append(_Sentence(text=chunk.text))
        sentence = self._emitted[-1]
        sentence.seconds += len(chunk.pcm) / _BYTES_PER_SECOND
        sentence.complete = chunk.last

    def finish(self, total_sentences: int) -> None:
        self.total_sentences = total_sentences

    @property
    def complete(self) -> bool:
        """Every sentence of the reply has been handed out."""
        return self.total_sentences is not None and self._next_sentence >= self.total_sentences

    @property
    def seconds_emitted(self) -> float:
        return sum(s.seconds for s in self._emitted)

    def spoken_text(self, seconds_played: float) -> str:
        """The reply as far as the user heard it after ``seconds_played`` of playback.

        A sentence cut off midway keeps the share of its words that were played, marked with an
        ellipsis, so the model's history shows where it was interrupted.
        """
        heard: list[str] = []
        remaining = seconds_played
        for sentence in self._emitted:
            if remaining <= 0:
                break
            if remaining + _EPSILON_S >= sentence.seconds and sentence.complete:
                heard.append(sentence.text)
            else:
                words = sentence.text.split()
                share = (remaining + _EPSILON_S) / sentence.seconds if sentence.seconds else 0.0
                kept = words[: int(len(words) * min(share, 1.0))]
                if kept:
                    heard.append(" ".join(kept) + "…")
                break
            remaining -= sentence.seconds
        return " ".join(heard)
