"""ReplyAssembler: a reply is heard once, in order, and history keeps what was heard of it."""

from __future__ import annotations

import itertools
import random

from fleet.audio import OUTPUT_SAMPLE_RATE
from fleet.contracts import AudioOut
from gateway.playback import ReplyAssembler

SID = "session-0123456789"
SECOND = OUTPUT_SAMPLE_RATE * 2  # bytes of one second of PCM16 mono


def chunk(
    sentence: int,
    index: int,
    *,
    last: bool = False,
    turn: int = 1,
    seconds: float = 0.1,
    text: str = "",
) -> AudioOut:
    size = round(seconds * SECOND) // 2 * 2
    pcm = bytes([sentence, index]) * (size // 2)
    return AudioOut(SID, turn, sentence, index, last, pcm, text=text)


def reply(
    sentences: list[str], chunks_per_sentence: int = 3, seconds: float = 0.1
) -> list[AudioOut]:
    out = []
    for s, text in enumerate(sentences):
        for c in range(chunks_per_sentence):
            out.append(
                chunk(
                    s,
                    c,
                    last=c == chunks_per_sentence - 1,
                    seconds=seconds,
                    text=text if c == 0 else "",
                )
            )
    return out


def order(chunks: list[AudioOut]) -> list[tuple[int, int]]:
    return [(c.sentence, c.chunk) for c in chunks]


def feed(assembler: ReplyAssembler, chunks: list[AudioOut]) -> list[AudioOut]:
    emitted: list[AudioOut] = []
    for c in chunks:
        emitted.extend(assembler.add(c))
    return emitted


def test_in_order_chunks_come_out_at_once() -> None:
    assembler = ReplyAssembler(turn=1)
    assert order(assembler.add(chunk(0, 0))) == [(0, 0)]
    assert order(assembler.add(chunk(0, 1, last=True))) == [(0, 1)]
    assert order(assembler.add(chunk(1, 0))) == [(1, 0)]


def test_a_later_sentence_waits_for_the_earlier_one() -> None:
    # Sentence 1 was synthesized by a faster TTS replica: it must not play before sentence 0.
    assembler = ReplyAssembler(turn=1)
    assert assembler.add(chunk(1, 0)) == []
    assert assembler.add(chunk(1, 1, last=True)) == []
    assert order(assembler.add(chunk(0, 0))) == [(0, 0)]
    assert order(assembler.add(chunk(0, 1, last=True))) == [(0, 1), (1, 0), (1, 1)]


def test_out_of_order_chunks_across_sentences_come_out_strictly_in_order() -> None:
    chunks = reply(["One.", "Two.", "Three.", "Four."], chunks_per_sentence=4)
    expected = order(chunks)
    rng = random.Random(7)
    for _ in range(200):
        shuffled = chunks[:]
        rng.shuffle(shuffled)
        assembler = ReplyAssembler(turn=1)
        assert order(feed(assembler, shuffled)) == expected


def test_redelivered_chunks_are_emitted_once() -> None:
    chunks = reply(["One.", "Two."], chunks_per_sentence=3)
    # A TTS job redelivered after a worker died sends its chunks again, before and after.
    doubled = chunks[:4] + chunks[3:5] + chunks[:2] + chunks[4:] + chunks
    rng = random.Random(3)
    for _ in range(50):
        rng.shuffle(doubled)
        assembler = ReplyAssembler(turn=1)
        emitted = feed(assembler, doubled)
        assert order(emitted) == order(chunks)


def test_a_duplicate_while_waiting_is_emitted_once() -> None:
    assembler = ReplyAssembler(turn=1)
    assembler.add(chunk(0, 1, last=True))
    assembler.add(chunk(0, 1, last=True))
    assert order(assembler.add(chunk(0, 0))) == [(0, 0), (0, 1)]


def test_chunks_of_another_turn_are_ignored() -> None:
    assembler = ReplyAssembler(turn=2)
    assert assembler.add(chunk(0, 0, turn=1)) == []
    assert assembler.add(chunk(0, 0, turn=3)) == []
    assert order(assembler.add(chunk(0, 0, turn=2))) == [(0, 0)]
    assert assembler.add(chunk(0, 1, turn=1, last=True)) == []
    assert assembler.seconds_emitted == 0.1


def test_complete_only_after_finish_and_every_sentence_ended() -> None:
    assembler = ReplyAssembler(turn=1)
    chunks = reply(["One.", "Two."], chunks_per_sentence=2)
    feed(assembler, chunks[:3])
    assert not assembler.complete
    assembler.finish(2)
    assert not assembler.complete  # sentence 1's last chunk is still missing
    feed(assembler, chunks[3:])
    assert assembler.complete


def test_not_complete_without_finish_even_when_all_audio_is_out() -> None:
    assembler = ReplyAssembler(turn=1)
    feed(assembler, reply(["One.", "Two."]))
    assert not assembler.complete  # the model may still be writing sentence 2
    assembler.finish(3)
    assert not assembler.complete
    feed(assembler, [chunk(2, 0, last=True, text="Three.")])
    assert assembler.complete


def test_not_complete_while_a_last_chunk_waits_for_an_earlier_one() -> None:
    assembler = ReplyAssembler(turn=1)
    assembler.finish(1)
    assembler.add(chunk(0, 1, last=True))
    assert not assembler.complete
    assembler.add(chunk(0, 0))
    assert assembler.complete


def test_a_reply_with_no_sentences_is_complete_when_finished() -> None:
    assembler = ReplyAssembler(turn=1)
    assert not assembler.complete
    assembler.finish(0)
    assert assembler.complete


def test_seconds_emitted_counts_the_audio_handed_out() -> None:
    assembler = ReplyAssembler(turn=1)
    feed(assembler, reply(["One.", "Two."], chunks_per_sentence=3, seconds=0.25))
    assert abs(assembler.seconds_emitted - 1.5) < 1e-9


def test_spoken_text_of_a_reply_played_in_full_is_the_whole_reply() -> None:
    sentences = ["Hello there.", "The weather is sunny today.", "Anything else?"]
    assembler = ReplyAssembler(turn=1)
    feed(assembler, reply(sentences))
    assembler.finish(3)
    assert assembler.spoken_text(assembler.seconds_emitted) == " ".join(sentences)
    assert assembler.spoken_text(assembler.seconds_emitted + 5) == " ".join(sentences)


def test_spoken_text_of_a_full_reply_has_no_ellipsis_whatever_the_chunk_lengths() -> None:
    # Played time is a float sum; a fully played reply must not look cut off in the history.
    rng = random.Random(11)
    for _ in range(300):
        n = rng.randint(1, 6)
        texts = [f"Sentence number {s} is here." for s in range(n)]
        assembler = ReplyAssembler(turn=1)
        for s, text in enumerate(texts):
            pieces = rng.randint(1, 4)
            for c in range(pieces):
                size = 2 * rng.randint(1, 9000)
                pcm = b"\x00" * size
                assembler.add(AudioOut(SID, 1, s, c, c == pieces - 1, pcm, text if c == 0 else ""))
        assembler.finish(n)
        assert assembler.spoken_text(assembler.seconds_emitted) == " ".join(texts)


def test_spoken_text_of_a_reply_cut_midway() -> None:
    # Two whole sentences heard, then half of the third (one second of audio per sentence).
    sentences = ["Hello there.", "It is sunny.", "Tomorrow it will rain in the whole city."]
    assembler = ReplyAssembler(turn=1)
    feed(assembler, reply(sentences, chunks_per_sentence=4, seconds=0.25))
    heard = assembler.spoken_text(2.5)
    assert heard == "Hello there. It is sunny. Tomorrow it will rain…"


def test_spoken_text_when_cut_during_the_first_sentence() -> None:
    assembler = ReplyAssembler(turn=1)
    feed(assembler, reply(["one two three four five six seven eight.", "Next."], seconds=0.25))
    assert assembler.spoken_text(0.375) == "one two three four…"  # half of 0.75 s


def test_spoken_text_is_empty_before_anything_played() -> None:
    assembler = ReplyAssembler(turn=1)
    assert assembler.spoken_text(0.0) == ""
    feed(assembler, reply(["Hello there."]))
    assert assembler.spoken_text(0.0) == ""
    assert assembler.spoken_text(0.01) == ""  # not even one word's share


def test_spoken_text_of_a_sentence_still_arriving_is_marked_cut() -> None:
    # The user barged in while sentence 1 was still streaming: all its audio so far was heard.
    assembler = ReplyAssembler(turn=1)
    feed(assembler, reply(["Hello there."]))
    feed(assembler, [chunk(1, 0, text="It is sunny and warm.")])
    heard = assembler.spoken_text(assembler.seconds_emitted)
    assert heard == "Hello there. It is sunny and warm.…"


def test_spoken_text_only_counts_emitted_audio() -> None:
    assembler = ReplyAssembler(turn=1)
    # Sentence 1 arrived but sentence 0 did not: nothing was played, nothing was heard.
    feed(assembler, reply(["Hello there.", "It is sunny."])[3:])
    assert assembler.seconds_emitted == 0
    assert assembler.spoken_text(10.0) == ""


def test_every_permutation_of_a_small_reply_plays_in_order() -> None:
    chunks = reply(["A.", "B."], chunks_per_sentence=2)
    for permutation in itertools.permutations(chunks):
        assembler = ReplyAssembler(turn=1)
        assembler.finish(2)
        assert order(feed(assembler, list(permutation))) == order(chunks)
        assert assembler.complete
