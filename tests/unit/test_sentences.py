from __future__ import annotations

import re

import pytest

from workers.llm_bridge.sentences import SentenceBuffer

# Long enough that the first-clause rule stays out of the way unless a test wants it.
NO_CLAUSE = 300


def llm_tokens(text: str) -> list[str]:
    """Split text roughly the way a BPE chat model streams it: a word with its leading space,
    punctuation runs on their own, newlines on their own."""
    return re.findall(r" ?\w+|\n+| ?[^\w\s]+| +", text)


def feed(buffer: SentenceBuffer, deltas: list[str]) -> list[str]:
    pieces: list[str] = []
    for delta in deltas:
        pieces += buffer.push(delta)
    return pieces + buffer.flush()


def chunkings(text: str) -> dict[str, list[str]]:
    return {
        "whole": [text],
        "chars": list(text),
        "tokens": llm_tokens(text),
        "threes": [text[i : i + 3] for i in range(0, len(text), 3)],
    }


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text)


REPLIES = [
    "Sure! The price is $3.50 today. Would you like anything else?",
    "Mr. Smith met Dr. Jones in the U.S. embassy. They talked for hours.",
    "Fruits, e.g. apples and pears, are healthy. Vegetables, i.e. greens, too.",
    "J. R. R. Tolkien wrote The Hobbit. It came out in 1937.",
    "It is about 1,000 km away, and the train leaves at 10:30 sharp. Pack light!",
    'She said "hello." Then she left. Did you hear "goodbye?" I did not.',
    "Hmm... let me think about that. Okay, I have it.",
    "**Paris** is the capital of France.\n\n## Fun fact\nIt has `many` museums.",
    "You can try Python 3.11 or later — it is faster. Version 3 is old.",
    "I love apples, pears, etc. They are tasty.",
]


@pytest.mark.parametrize("reply", REPLIES)
@pytest.mark.parametrize("how", ["whole", "chars", "tokens", "threes"])
def test_no_words_lost(reply: str, how: str) -> None:
    pieces = feed(SentenceBuffer(24), chunkings(reply)[how])
    assert words(" ".join(pieces)) == words(reply)
    assert all(piece == " ".join(piece.split()) and piece for piece in pieces)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello there. How are you?", ["Hello there.", "How are you?"]),
        ("Wow! Really? Yes.", ["Wow!", "Really?", "Yes."]),
        ("Wait…  What now?", ["Wait…", "What now?"]),
        ("Really?! No way.", ["Really?!", "No way."]),
        ('He said "stop." Then he left.', ['He said "stop."', "Then he left."]),
        ("(It was late.) We slept.", ["(It was late.)", "We slept."]),
        ("First line\nsecond line", ["First line", "second line"]),
        ("Pi is 3.14159 roughly. Yes.", ["Pi is 3.14159 roughly.", "Yes."]),
        ("It costs 5. Then it rose.", ["It costs 5.", "Then it rose."]),
        ("Ask Mr. Brown or Mrs. Green. Fine.", ["Ask Mr. Brown or Mrs. Green.", "Fine."]),
        ("See Dr. Who and Prof. X now.", ["See Dr. Who and Prof. X now."]),
        ("Use e.g. salt or i.e. pepper.", ["Use e.g. salt or i.e. pepper."]),
        ("The U.S. economy grew fast.", ["The U.S. economy grew fast."]),
        ("I live in the U.S. It is big.", ["I live in the U.S.", "It is big."]),
        ("Apples, pears, etc. and more.", ["Apples, pears, etc. and more."]),
        ("Apples, pears, etc. Then more.", ["Apples, pears, etc.", "Then more."]),
        ("George W. Bush spoke.", ["George W. Bush spoke."]),
        ("J. K. Rowling wrote it.", ["J. K. Rowling wrote it."]),
        ("Well... maybe not. Okay.", ["Well... maybe not.", "Okay."]),
        ("Well… maybe not.", ["Well… maybe not."]),
        ("Go to example.com today.", ["Go to example.com today."]),
        ("It ends with an ellipsis...", ["It ends with an ellipsis..."]),
        ("No end mark", ["No end mark"]),
    ],
)
def test_sentence_boundaries(text: str, expected: list[str]) -> None:
    assert feed(SentenceBuffer(NO_CLAUSE), [text]) == expected
    assert feed(SentenceBuffer(NO_CLAUSE), llm_tokens(text)) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("**Bold** and *italic* text.", ["Bold and italic text."]),
        ("# Title\nBody here.", ["Title", "Body here."]),
        ("Run `ls -la` now.", ["Run ls -la now."]),
        ("Too    many \t spaces.", ["Too many spaces."]),
        ("Hi.\n\n\n   \nBye.", ["Hi.", "Bye."]),
        ("***\n---\nText.", ["Text."]),
        ('Done." "', ['Done."']),
        ("", []),
        ("   \n ", []),
    ],
)
def test_noise_is_stripped_and_empty_pieces_skipped(text: str, expected: list[str]) -> None:
    assert feed(SentenceBuffer(NO_CLAUSE), list(text)) == expected


@pytest.mark.parametrize(
    ("text", "first_clause_chars", "expected"),
    [
        (
            "Well, I think the weather is lovely today, sunny and warm. Go out.",
            24,
            ["Well, I think the weather is lovely today,", "sunny and warm.", "Go out."],
        ),
        # Only the first piece is cut at a clause: later commas wait for the sentence end.
        (
            "The weather is lovely today, sunny and warm, so go out, now.",
            24,
            ["The weather is lovely today,", "sunny and warm, so go out, now."],
        ),
        ("Paris is the capital; it is large.", 10, ["Paris is the capital;", "it is large."]),
        ("Here is the short answer: yes.", 20, ["Here is the short answer:", "yes."]),
        ("The answer is simple—it is yes.", 10, ["The answer is simple—", "it is yes."]),
        # A first sentence that ends before any long-enough clause goes out whole.
        (
            "Hi, there. Yes, this is long enough, really.",
            24,
            ["Hi, there.", "Yes, this is long enough, really."],
        ),
        # Numbers with separators are not clause boundaries.
        (
            "There are 1,000,000 people at 10:30 here, roughly.",
            10,
            ["There are 1,000,000 people at 10:30 here,", "roughly."],
        ),
    ],
)
def test_first_clause_released_early(
    text: str, first_clause_chars: int, expected: list[str]
) -> None:
    for deltas in chunkings(text).values():
        assert feed(SentenceBuffer(first_clause_chars), deltas) == expected


def released_at(deltas: list[str], first_clause_chars: int = NO_CLAUSE) -> list[tuple[int, str]]:
    """(index of the delta whose push released the piece, piece); flush counts as len(deltas)."""
    buffer = SentenceBuffer(first_clause_chars)
    out = [(i, piece) for i, delta in enumerate(deltas) for piece in buffer.push(delta)]
    return out + [(len(deltas), piece) for piece in buffer.flush()]


def test_pieces_are_released_as_soon_as_they_are_certain() -> None:
    deltas = [" Sure", "!", " The", " sky", " is", " blue", ".", " Want", " more", "?", " Ok", "."]
    assert released_at(deltas) == [
        (1, "Sure!"),  # `!` and `?` cannot be anything but an end
        (7, "The sky is blue."),  # a period waits one delta: "blue." + "com" is possible
        (9, "Want more?"),
        (12, "Ok."),  # the end of the stream settles the last period
    ]


def test_first_clause_is_released_with_its_comma() -> None:
    deltas = [" Well", ",", " the", " weather", " today", " is", " lovely", ",", " and", " warm"]
    assert released_at(deltas, first_clause_chars=24) == [
        (7, "Well, the weather today is lovely,"),
        (10, "and warm"),
    ]


@pytest.mark.parametrize(
    ("deltas", "expected"),
    [
        ([" It", " costs", " 3", ".", "5", " euros", "!"], [(6, "It costs 3.5 euros!")]),
        ([" Ask", " Mr", ".", " Smith", "!"], [(4, "Ask Mr. Smith!")]),
        (
            [" In", " the", " U", ".", "S", ".", " Then", " go", "!"],
            [(6, "In the U.S."), (8, "Then go!")],
        ),
        ([" Go", " to", " example", ".", "com", " now", "!"], [(6, "Go to example.com now!")]),
        ([" Hmm", "...", " Right", "!"], [(2, "Hmm..."), (3, "Right!")]),
        ([" Hmm", "...", " right", "!"], [(3, "Hmm... right!")]),
        (
            [" It", " is", " 1", ",", "000", " m", ",", " ok", "?"],
            [(6, "It is 1,000 m,"), (8, "ok?")],
        ),
    ],
)
def test_ambiguous_marks_wait_for_the_next_delta(
    deltas: list[str], expected: list[tuple[int, str]]
) -> None:
    assert released_at(deltas, first_clause_chars=5) == expected


def test_realistic_reply_token_by_token() -> None:
    reply = (
        "Sure! Here's a quick overview of the solar system. It has eight planets, "
        "and Jupiter is the largest — about 11 times wider than Earth. Dr. Carl Sagan "
        "called Earth a pale blue dot... isn't that lovely? Mercury orbits the Sun every "
        "88 days, i.e. about 0.24 Earth years.\n\nLet me know if you want more!"
    )
    pieces = feed(SentenceBuffer(24), llm_tokens(reply))
    assert pieces == [
        "Sure!",
        "Here's a quick overview of the solar system.",
        "It has eight planets, and Jupiter is the largest — about 11 times wider than Earth.",
        "Dr. Carl Sagan called Earth a pale blue dot... isn't that lovely?",
        "Mercury orbits the Sun every 88 days, i.e. about 0.24 Earth years.",
        "Let me know if you want more!",
    ]


def test_run_on_reply_is_cut_before_max_chars() -> None:
    reply = " ".join(["word"] * 300)
    pieces = feed(SentenceBuffer(24, max_chars=100), llm_tokens(reply))
    assert all(len(piece) <= 100 for piece in pieces)
    assert words(" ".join(pieces)) == words(reply)


def test_run_on_reply_prefers_a_clause_mark() -> None:
    reply = "a" * 10 + " " + "b" * 60 + ", " + "c" * 20 + " " + "d" * 30
    pieces = feed(SentenceBuffer(24, max_chars=100), [reply])
    assert pieces[0].endswith(",")


def test_flush_empties_the_buffer() -> None:
    buffer = SentenceBuffer(24)
    assert buffer.push("No end") == []
    assert buffer.flush() == ["No end"]
    assert buffer.flush() == []


@pytest.mark.parametrize(("first", "max_chars"), [(0, 400), (50, 50)])
def test_invalid_limits(first: int, max_chars: int) -> None:
    with pytest.raises(ValueError):
        SentenceBuffer(first, max_chars=max_chars)


def released_with_words(deltas: list[str], first_piece_words: int) -> list[tuple[int, str]]:
    buffer = SentenceBuffer(NO_CLAUSE, first_piece_words=first_piece_words)
    out = [(i, piece) for i, delta in enumerate(deltas) for piece in buffer.push(delta)]
    return out + [(len(deltas), piece) for piece in buffer.flush()]


def test_a_first_sentence_without_an_early_clause_goes_out_after_a_few_words() -> None:
    deltas = [" Once", " upon", " a", " time", " there", " lived", " a", " knight", "."]
    assert released_with_words(deltas, first_piece_words=4) == [
        # "time" is the fourth word; it is whole once the next delta starts with a space.
        (4, "Once upon a time"),
        (9, "there lived a knight."),
    ]


def test_the_first_piece_never_ends_on_a_word_that_leans_on_the_next() -> None:
    deltas = [" I", " think", " that", " the", " answer", " is", " yes", " and", " no", "."]
    assert released_with_words(deltas, first_piece_words=3) == [
        (5, "I think that the answer"),  # not after "that" or "the"
        (10, "is yes and no."),
    ]


def test_a_sentence_shorter_than_the_word_count_goes_out_whole() -> None:
    deltas = [" Hi", " there", "!", " How", " are", " you", " doing", " today", "?"]
    assert released_with_words(deltas, first_piece_words=5) == [
        (2, "Hi there!"),
        (8, "How are you doing today?"),  # only the first piece is cut between words
    ]


def test_no_word_is_ever_split_and_no_text_lost_by_word_cuts() -> None:
    reply = (
        "Once upon a time in a quiet village by the sea there lived a brave knight who "
        "loved dragons. He rode out every morning at dawn; the dragon waited, patient and "
        "kind, on the cliffs above the harbour where the fishing boats came and went all day "
        "long, and the two of them talked until the sun went down. The end."
    )
    for deltas in chunkings(reply).values():
        buffer = SentenceBuffer(24, first_piece_words=5)
        pieces = [p for d in deltas for p in buffer.push(d)] + buffer.flush()
        assert " ".join(pieces) == reply
        # Five words, and the two after that lean on the next: "in a".
        assert pieces[0] == "Once upon a time in a quiet", deltas


def test_a_long_later_sentence_is_cut_at_its_clauses() -> None:
    long_sentence = (
        "The dragon waited on the cliffs above the harbour where the fishing boats came and "
        "went all day long, and the two friends talked until the sun went down."
    )
    pieces = feed(SentenceBuffer(NO_CLAUSE), list("First. " + long_sentence))
    assert pieces == [
        "First.",
        "The dragon waited on the cliffs above the harbour where the fishing boats came and "
        "went all day long,",
        "and the two friends talked until the sun went down.",
    ]
