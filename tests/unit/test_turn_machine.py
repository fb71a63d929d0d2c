"""Turn-taking of one session, driven event by event: what the gateway decides, with no I/O.

Times are seconds on the gateway's clock; reply audio is 24 kHz PCM16, so 48 000 bytes a second.
"""

from __future__ import annotations

from typing import TypeVar

from fleet.contracts import AudioOut
from fleet.errors import ErrorCode
from gateway.protocol import (
    AssistantText,
    AudioCancel,
    AudioEnd,
    AudioStart,
    Error,
    Transcript,
)
from gateway.turns import (
    CancelTurn,
    Command,
    FirstAudio,
    Heard,
    SendAudio,
    StartTurn,
    TurnMachine,
)

SID = "session-0123456789"
ONCE = "Once upon a time there was a brave knight."  # 8 words
THE_END = "The end."

T = TypeVar("T")


def reply_audio(turn: int, sentence: int, seconds: float, text: str = "") -> AudioOut:
    """One whole sentence of reply audio in a single chunk."""
    return AudioOut(SID, turn, sentence, 0, True, bytes(int(seconds * 48000)), text)


def ask(machine: TurnMachine, said: str, now: float, number: int) -> list[Command]:
    """The user's turn ends with ``said``; the fleet gives the new turn ``number``."""
    commands = machine.final_transcript(said, now)
    start = commands[-1]
    assert isinstance(start, StartTurn), commands
    machine.turn_started(number, start.text, now)
    return commands


def of_type(commands: list[Command], kind: type[T]) -> list[T]:
    return [c for c in commands if isinstance(c, kind)]


# --- starting turns --------------------------------------------------------------------------


def test_a_final_transcript_is_sent_then_answered_as_a_new_turn() -> None:
    machine = TurnMachine()
    assert machine.final_transcript("  What time is it? ", 0.0) == [
        Transcript("  What time is it? ", final=True),
        StartTurn("What time is it?"),
    ]


def test_a_final_transcript_without_words_starts_no_turn() -> None:
    assert TurnMachine().final_transcript(" ", 0.0) == [Transcript(" ", final=True)]


# --- the reply -------------------------------------------------------------------------------


def test_reply_audio_starts_with_audio_start_and_ends_with_audio_end_once_recorded() -> None:
    machine = TurnMachine()
    ask(machine, "Tell me a story.", 1.0, number=3)

    first = machine.reply_audio(reply_audio(3, 0, 1.0, ONCE), 1.5)
    assert first == [FirstAudio(0.5), AudioStart(24000, 3), SendAudio(bytes(48000))]

    done = machine.reply_done(3, sentences=1)
    # The history holds the turn before the client learns that it ended.
    assert done == [Heard(3, "Tell me a story.", ONCE, False, False), AudioEnd(3)]


def test_a_reply_without_audio_is_recorded_but_gets_no_audio_end() -> None:
    machine = TurnMachine()
    ask(machine, "Hello.", 0.0, number=1)
    assert machine.reply_done(1, sentences=0) == [Heard(1, "Hello.", "", False, False)]


def test_reply_text_repeated_by_a_retried_turn_is_sent_once() -> None:
    machine = TurnMachine()
    ask(machine, "Hello.", 0.0, number=1)
    sent = [
        *machine.reply_text(1, 0, "Hi "),
        *machine.reply_text(1, 1, "there."),
        *machine.reply_text(1, 0, "Hi "),  # the LLM worker died; the retry starts over
        *machine.reply_text(1, 1, "there."),
        *machine.reply_text(1, 2, " Bye."),
    ]
    assert sent == [AssistantText("Hi ", 1), AssistantText("there.", 1), AssistantText(" Bye.", 1)]


def test_events_of_another_turn_are_stale() -> None:
    machine = TurnMachine()
    ask(machine, "Hello.", 0.0, number=5)
    assert machine.reply_text(4, 0, "old") == []
    assert machine.reply_audio(reply_audio(4, 0, 1.0, ONCE), 0.5) == []
    assert machine.reply_done(4, sentences=1) == []
    assert machine.reply_failed(4, ErrorCode.LLM_FAILED, "old", None, 0.5) == []


def test_a_failed_reply_is_reported_with_its_code() -> None:
    machine = TurnMachine()
    ask(machine, "Hello.", 0.0, number=1)
    assert machine.reply_failed(1, ErrorCode.LLM_FAILED, "timed out", None, 0.5) == [
        Error(ErrorCode.LLM_FAILED, "timed out")
    ]


def test_a_sentence_given_up_is_skipped_and_the_reply_plays_on_to_its_end() -> None:
    machine = TurnMachine()
    ask(machine, "Tell me a story.", 0.0, number=1)
    # The third sentence arrives first; the second's synthesis is given up after one chunk.
    assert machine.reply_audio(reply_audio(1, 2, 1.0, THE_END), 0.5) == []
    first = machine.reply_audio(reply_audio(1, 0, 1.0, ONCE), 1.0)
    assert of_type(first, SendAudio) == [SendAudio(bytes(48000))]
    cut = AudioOut(SID, 1, 1, 0, False, bytes(24000), "And then")
    assert machine.reply_audio(cut, 1.2) == [SendAudio(bytes(24000))]
    machine.reply_done(1, sentences=3)

    given_up = machine.reply_failed(1, ErrorCode.TTS_FAILED, "gave up", 1, 1.5)
    assert given_up[0] == Error(ErrorCode.TTS_FAILED, "gave up")
    assert of_type(given_up, SendAudio) == [SendAudio(bytes(48000))]  # the third sentence
    assert of_type(given_up, AudioEnd) == [AudioEnd(1)]
    # A late chunk of the given-up sentence (a retry still running) is never played.
    assert machine.reply_audio(AudioOut(SID, 1, 1, 1, True, bytes(9), ""), 1.6) == []


def test_a_reply_whose_every_sentence_was_given_up_still_starts_and_ends() -> None:
    machine = TurnMachine()
    ask(machine, "Hello.", 0.0, number=1)
    machine.reply_done(1, sentences=1)
    given_up = machine.reply_failed(1, ErrorCode.TTS_FAILED, "no such voice", 0, 0.5)
    assert of_type(given_up, AudioStart) == [AudioStart(24000, 1)]
    assert of_type(given_up, SendAudio) == []
    assert of_type(given_up, AudioEnd) == [AudioEnd(1)]


def test_a_sentence_given_up_before_its_turn_to_play_is_skipped_when_reached() -> None:
    machine = TurnMachine()
    ask(machine, "Tell me a story.", 0.0, number=1)
    assert (
        of_type(machine.reply_failed(1, ErrorCode.TTS_FAILED, "gave up", 1, 0.5), SendAudio) == []
    )
    machine.reply_audio(reply_audio(1, 2, 1.0, THE_END), 0.6)
    machine.reply_done(1, sentences=3)
    played = machine.reply_audio(reply_audio(1, 0, 1.0, ONCE), 1.0)
    assert of_type(played, SendAudio) == [SendAudio(bytes(48000))] * 2
    assert of_type(played, AudioEnd) == [AudioEnd(1)]


# --- barge-in --------------------------------------------------------------------------------


def test_speech_over_the_reply_cancels_it_and_records_what_was_heard() -> None:
    machine = TurnMachine()
    ask(machine, "Tell me a story.", 0.0, number=1)
    machine.reply_audio(reply_audio(1, 0, 2.0, ONCE), 1.0)

    # Half of the sentence has played when the user talks over it.
    assert machine.speech_started(2.0) == [
        CancelTurn(1, unanswered=False),
        Heard(1, "Tell me a story.", "Once upon a time…", True, False),
        AudioCancel(1),
    ]
    # Nothing of the cancelled turn goes out afterwards.
    assert machine.reply_audio(reply_audio(1, 1, 1.0, THE_END), 2.1) == []
    assert machine.reply_text(1, 0, "Once") == []
    assert machine.reply_done(1, sentences=2) == []


def test_a_partial_with_words_cancels_the_reply_before_it_is_sent() -> None:
    machine = TurnMachine()
    ask(machine, "Tell me a story.", 0.0, number=1)
    machine.reply_audio(reply_audio(1, 0, 2.0, ONCE), 1.0)

    commands = machine.partial_transcript("wait", 1.5)
    assert commands[0] == CancelTurn(1, unanswered=False)
    assert commands[-2:] == [AudioCancel(1), Transcript("wait", final=False)]


def test_a_partial_without_words_is_no_barge_in() -> None:
    machine = TurnMachine()
    ask(machine, "Tell me a story.", 0.0, number=1)
    machine.reply_audio(reply_audio(1, 0, 2.0, ONCE), 1.0)
    assert machine.partial_transcript(" ", 1.5) == [Transcript(" ", final=False)]


def test_speech_after_the_reply_has_played_is_no_barge_in() -> None:
    machine = TurnMachine()
    ask(machine, "Tell me a story.", 0.0, number=1)
    machine.reply_audio(reply_audio(1, 0, 2.0, ONCE), 1.0)
    machine.reply_done(1, sentences=1)

    assert machine.speech_started(3.5) == []
    assert ask(machine, "Another one.", 4.0, number=2) == [
        Transcript("Another one.", final=True),
        StartTurn("Another one."),
    ]


def test_speech_while_a_fully_sent_reply_still_plays_corrects_its_history() -> None:
    machine = TurnMachine()
    ask(machine, "Tell me a story.", 0.0, number=1)
    machine.reply_audio(reply_audio(1, 0, 2.0, ONCE), 1.0)
    machine.reply_audio(reply_audio(1, 1, 1.0, THE_END), 1.1)
    finished = machine.reply_done(1, sentences=2)
    assert of_type(finished, Heard) == [
        Heard(1, "Tell me a story.", f"{ONCE} {THE_END}", interrupted=False, correction=False)
    ]

    # Sent in full, but the client has played only 1.5 of its 3 seconds.
    assert machine.speech_started(2.5) == [
        CancelTurn(1, unanswered=False),
        Heard(1, "Tell me a story.", "Once upon a time there was…", True, correction=True),
        AudioCancel(1),
    ]


def test_a_turn_cut_off_by_the_connection_ending_is_recorded_as_far_as_it_was_sent() -> None:
    machine = TurnMachine()
    ask(machine, "Tell me a story.", 0.0, number=1)
    machine.reply_audio(reply_audio(1, 0, 2.0, ONCE), 1.0)
    assert machine.closed() == [
        CancelTurn(1, unanswered=False, reason="turn_cancelled_on_close"),
        Heard(1, "Tell me a story.", ONCE, True, False),
    ]


def test_the_connection_ending_before_any_reply_cancels_the_turn() -> None:
    machine = TurnMachine()
    ask(machine, "Tell me a story.", 0.0, number=1)
    assert machine.closed() == [
        CancelTurn(1, unanswered=True, reason="turn_cancelled_on_close"),
        Heard(1, "Tell me a story.", "", True, False),
    ]


def test_the_connection_ending_after_a_recorded_turn_records_nothing_more() -> None:
    machine = TurnMachine()
    ask(machine, "Hello.", 0.0, number=1)
    machine.reply_done(1, sentences=0)
    assert machine.closed() == []


# --- a request continued after a pause --------------------------------------------------------


def test_a_request_continued_before_any_reply_played_is_answered_whole() -> None:
    machine = TurnMachine()
    ask(machine, "Tell me a story about a knight.", 0.0, number=1)
    machine.reply_text(1, 0, "Once")  # text may precede the audio; nothing has played

    continued = machine.final_transcript("And put a dragon in it.", 0.8)
    assert continued == [
        CancelTurn(1, unanswered=True),
        AudioCancel(1),
        Transcript("And put a dragon in it.", final=True),
        StartTurn("Tell me a story about a knight. And put a dragon in it."),
    ]
    # Only the whole request is recorded, once it is answered.
    machine.turn_started(2, "Tell me a story about a knight. And put a dragon in it.", 0.8)
    machine.reply_audio(reply_audio(2, 0, 1.0, ONCE), 1.5)
    assert of_type(machine.reply_done(2, sentences=1), Heard) == [
        Heard(2, "Tell me a story about a knight. And put a dragon in it.", ONCE, False, False)
    ]


def test_a_request_cut_off_by_speech_without_words_is_answered_still() -> None:
    machine = TurnMachine()
    ask(machine, "Tell me a story.", 0.0, number=1)

    # A cough: the voice detector hears speech, the transcriber no words.
    assert machine.speech_started(0.5) == [CancelTurn(1, unanswered=True), AudioCancel(1)]
    assert machine.final_transcript("", 1.2) == [
        Transcript("", final=True),
        StartTurn("Tell me a story."),
    ]


def test_a_request_answered_together_with_its_continuation_is_not_asked_again() -> None:
    machine = TurnMachine()
    ask(machine, "Tell me a story.", 0.0, number=1)
    ask(machine, "About a dragon.", 0.5, number=3)
    machine.reply_audio(reply_audio(3, 0, 1.0, ONCE), 1.0)
    machine.reply_done(3, sentences=1)

    assert ask(machine, "Thanks.", 3.0, number=4)[-1] == StartTurn("Thanks.")
