"""Turn-taking of one session, driven event by event: what the gateway decides, with no I/O.

Times are seconds on the gateway's clock; reply audio is 24 kHz PCM16, so 48 000 bytes a second.
"""

from __future__ import annotations

from typing import TypeVar

from fleet.contracts import AudioOut
from fleet.errors import ErrorCode
from fleet.settings import DEFAULT_ACKNOWLEDGEMENTS
from gateway.interruptions import Backchannels
from gateway.protocol import (
    AssistantText,
    AudioCancel,
    AudioEnd,
    AudioPause,
    AudioResume,
    AudioStart,
    Error,
    Transcript,
)
from gateway.turns import (
    CancelTurn,
    Command,
    ExpectDecision,
    FirstAudio,
    Heard,
    SendAudio,
    SpeculationSettled,
    StartTurn,
    TurnMachine,
)

SID = "session-0123456789"
ONCE = "Once upon a time there was a brave knight."  # 8 words
THE_END = "The end."
DECIDE_WITHIN = 0.6
ENGLISH = Backchannels.parse(DEFAULT_ACKNOWLEDGEMENTS["en"], DECIDE_WITHIN)

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
    machine = TurnMachine(ENGLISH)
    assert machine.final_transcript("  What time is it? ", 0.0) == [
        Transcript("  What time is it? ", final=True),
        StartTurn("What time is it?"),
    ]


def test_a_final_transcript_without_words_starts_no_turn() -> None:
    assert TurnMachine(ENGLISH).final_transcript(" ", 0.0) == [Transcript(" ", final=True)]


# --- the reply -------------------------------------------------------------------------------


def test_reply_audio_starts_with_audio_start_and_ends_with_audio_end_once_recorded() -> None:
    machine = TurnMachine(ENGLISH)
    ask(machine, "Tell me a story.", 1.0, number=3)

    first = machine.reply_audio(reply_audio(3, 0, 1.0, ONCE), 1.5)
    assert first == [FirstAudio(0.5), AudioStart(24000, 3), SendAudio(bytes(48000))]

    done = machine.reply_done(3, sentences=1)
    # The history holds the turn before the client learns that it ended.
    assert done == [Heard(3, "Tell me a story.", ONCE, False, False), AudioEnd(3)]


def test_a_reply_without_audio_is_recorded_but_gets_no_audio_end() -> None:
    machine = TurnMachine(ENGLISH)
    ask(machine, "Hello.", 0.0, number=1)
    assert machine.reply_done(1, sentences=0) == [Heard(1, "Hello.", "", False, False)]


def test_reply_text_repeated_by_a_retried_turn_is_sent_once() -> None:
    machine = TurnMachine(ENGLISH)
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
    machine = TurnMachine(ENGLISH)
    ask(machine, "Hello.", 0.0, number=5)
    assert machine.reply_text(4, 0, "old") == []
    assert machine.reply_audio(reply_audio(4, 0, 1.0, ONCE), 0.5) == []
    assert machine.reply_done(4, sentences=1) == []
    assert machine.reply_failed(4, ErrorCode.LLM_FAILED, "old", None, 0.5) == []


def test_a_failed_reply_is_reported_with_its_code() -> None:
    machine = TurnMachine(ENGLISH)
    ask(machine, "Hello.", 0.0, number=1)
    assert machine.reply_failed(1, ErrorCode.LLM_FAILED, "timed out", None, 0.5) == [
        Error(ErrorCode.LLM_FAILED, "timed out")
    ]


def test_a_sentence_given_up_is_skipped_and_the_reply_plays_on_to_its_end() -> None:
    machine = TurnMachine(ENGLISH)
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
    machine = TurnMachine(ENGLISH)
    ask(machine, "Hello.", 0.0, number=1)
    machine.reply_done(1, sentences=1)
    given_up = machine.reply_failed(1, ErrorCode.TTS_FAILED, "no such voice", 0, 0.5)
    assert of_type(given_up, AudioStart) == [AudioStart(24000, 1)]
    assert of_type(given_up, SendAudio) == []
    assert of_type(given_up, AudioEnd) == [AudioEnd(1)]


def test_a_sentence_given_up_before_its_turn_to_play_is_skipped_when_reached() -> None:
    machine = TurnMachine(ENGLISH)
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
    machine = TurnMachine(ENGLISH)
    ask(machine, "Tell me a story.", 0.0, number=1)
    machine.reply_audio(reply_audio(1, 0, 2.0, ONCE), 1.0)

    # Half of the sentence has played when the user talks over it: it pauses there.
    assert machine.speech_started(2.0) == [AudioPause(1), ExpectDecision(2.0, DECIDE_WITHIN)]
    assert machine.partial_transcript("Wait, stop.", 2.5) == [
        CancelTurn(1, unanswered=False),
        Heard(1, "Tell me a story.", "Once upon a time…", True, False),
        AudioCancel(1),
        Transcript("Wait, stop.", final=False),
    ]
    # Nothing of the cancelled turn goes out afterwards.
    assert machine.reply_audio(reply_audio(1, 1, 1.0, THE_END), 2.1) == []
    assert machine.reply_text(1, 0, "Once") == []
    assert machine.reply_done(1, sentences=2) == []


def test_a_partial_with_words_cancels_the_reply_before_it_is_sent() -> None:
    machine = TurnMachine(ENGLISH)
    ask(machine, "Tell me a story.", 0.0, number=1)
    machine.reply_audio(reply_audio(1, 0, 2.0, ONCE), 1.0)

    commands = machine.partial_transcript("wait, stop", 1.5)
    assert commands[0] == CancelTurn(1, unanswered=False)
    assert commands[-2:] == [AudioCancel(1), Transcript("wait, stop", final=False)]


def test_one_word_over_the_reply_pauses_it_until_more_is_heard() -> None:
    machine = TurnMachine(ENGLISH)
    ask(machine, "Tell me a story.", 0.0, number=1)
    machine.reply_audio(reply_audio(1, 0, 2.0, ONCE), 1.0)

    # Its speech start came before the reply's audio: the words are the first sign of it.
    assert machine.partial_transcript("Uh", 1.5) == [
        AudioPause(1),
        ExpectDecision(1.5, DECIDE_WITHIN),
        Transcript("Uh", final=False),
    ]
    assert machine.final_transcript("Uh-huh.", 1.9) == [
        AudioResume(1),
        Transcript("Uh-huh.", final=True),
    ]


def test_a_partial_without_words_is_no_barge_in() -> None:
    machine = TurnMachine(ENGLISH)
    ask(machine, "Tell me a story.", 0.0, number=1)
    machine.reply_audio(reply_audio(1, 0, 2.0, ONCE), 1.0)
    assert machine.partial_transcript(" ", 1.5) == [Transcript(" ", final=False)]


def test_speech_after_the_reply_has_played_is_no_barge_in() -> None:
    machine = TurnMachine(ENGLISH)
    ask(machine, "Tell me a story.", 0.0, number=1)
    machine.reply_audio(reply_audio(1, 0, 2.0, ONCE), 1.0)
    machine.reply_done(1, sentences=1)

    assert machine.speech_started(3.5) == []
    assert ask(machine, "Another one.", 4.0, number=2) == [
        Transcript("Another one.", final=True),
        StartTurn("Another one."),
    ]


def test_speech_while_a_fully_sent_reply_still_plays_corrects_its_history() -> None:
    machine = TurnMachine(ENGLISH)
    ask(machine, "Tell me a story.", 0.0, number=1)
    machine.reply_audio(reply_audio(1, 0, 2.0, ONCE), 1.0)
    machine.reply_audio(reply_audio(1, 1, 1.0, THE_END), 1.1)
    finished = machine.reply_done(1, sentences=2)
    assert of_type(finished, Heard) == [
        Heard(1, "Tell me a story.", f"{ONCE} {THE_END}", interrupted=False, correction=False)
    ]

    # Sent in full, but the client has played only 1.5 of its 3 seconds.
    assert machine.partial_transcript("Hold on", 2.5) == [
        CancelTurn(1, unanswered=False),
        Heard(1, "Tell me a story.", "Once upon a time there was…", True, correction=True),
        AudioCancel(1),
        Transcript("Hold on", final=False),
    ]


def test_a_turn_cut_off_by_the_connection_ending_is_recorded_as_far_as_it_was_sent() -> None:
    machine = TurnMachine(ENGLISH)
    ask(machine, "Tell me a story.", 0.0, number=1)
    machine.reply_audio(reply_audio(1, 0, 2.0, ONCE), 1.0)
    assert machine.closed() == [
        CancelTurn(1, unanswered=False, reason="turn_cancelled_on_close"),
        Heard(1, "Tell me a story.", ONCE, True, False),
    ]


def test_the_connection_ending_before_any_reply_cancels_the_turn() -> None:
    machine = TurnMachine(ENGLISH)
    ask(machine, "Tell me a story.", 0.0, number=1)
    assert machine.closed() == [
        CancelTurn(1, unanswered=True, reason="turn_cancelled_on_close"),
        Heard(1, "Tell me a story.", "", True, False),
    ]


def test_the_connection_ending_after_a_recorded_turn_records_nothing_more() -> None:
    machine = TurnMachine(ENGLISH)
    ask(machine, "Hello.", 0.0, number=1)
    machine.reply_done(1, sentences=0)
    assert machine.closed() == []


# --- a request continued after a pause --------------------------------------------------------


def test_a_request_continued_before_any_reply_played_is_answered_whole() -> None:
    machine = TurnMachine(ENGLISH)
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
    machine = TurnMachine(ENGLISH)
    ask(machine, "Tell me a story.", 0.0, number=1)

    # A cough: the voice detector hears speech, the transcriber no words.
    assert machine.speech_started(0.5) == [CancelTurn(1, unanswered=True), AudioCancel(1)]
    assert machine.final_transcript("", 1.2) == [
        Transcript("", final=True),
        StartTurn("Tell me a story."),
    ]


def test_a_request_answered_together_with_its_continuation_is_not_asked_again() -> None:
    machine = TurnMachine(ENGLISH)
    ask(machine, "Tell me a story.", 0.0, number=1)
    ask(machine, "About a dragon.", 0.5, number=3)
    machine.reply_audio(reply_audio(3, 0, 1.0, ONCE), 1.0)
    machine.reply_done(3, sentences=1)

    assert ask(machine, "Thanks.", 3.0, number=4)[-1] == StartTurn("Thanks.")


# --- speech over the reply: pause, then resume or cancel ----------------------------------------


def playing_story(backchannels: Backchannels = ENGLISH, number: int = 1) -> TurnMachine:
    """A reply whose first sentence (2 s) started playing at 1.0; more of it is on its way."""
    machine = TurnMachine(backchannels)
    ask(machine, "Tell me a story.", 0.0, number=number)
    machine.reply_audio(reply_audio(number, 0, 2.0, ONCE), 1.0)
    return machine


def test_an_acknowledgement_resumes_the_reply_with_the_audio_held_meanwhile_and_no_new_turn() -> (
    None
):
    machine = playing_story()
    assert machine.speech_started(1.5) == [AudioPause(1), ExpectDecision(1.5, DECIDE_WITHIN)]
    # The reply goes on being made; its audio and its end wait for the decision.
    assert machine.reply_audio(reply_audio(1, 1, 1.0, THE_END), 1.6) == []
    assert machine.reply_done(1, sentences=2) == []
    assert machine.partial_transcript("Uh-huh.", 1.9) == [Transcript("Uh-huh.", final=False)]

    assert machine.final_transcript("Uh-huh.", 2.0) == [
        AudioResume(1),
        SendAudio(bytes(48000)),
        Heard(1, "Tell me a story.", f"{ONCE} {THE_END}", False, False),
        AudioEnd(1),
        Transcript("Uh-huh.", final=True),
    ]


def test_the_time_paused_is_not_counted_as_heard() -> None:
    machine = playing_story()
    machine.speech_started(1.5)  # 0.5 s played
    machine.final_transcript("Yeah.", 2.0)  # resumed
    machine.speech_started(2.5)  # 0.5 s more
    assert of_type(machine.partial_transcript("Stop, please.", 2.8), Heard) == [
        Heard(1, "Tell me a story.", "Once upon a time…", True, False)
    ]


def test_a_real_interruption_while_paused_cancels_and_the_held_audio_never_goes_out() -> None:
    machine = playing_story()
    machine.speech_started(1.5)
    assert machine.reply_audio(reply_audio(1, 1, 1.0, THE_END), 1.6) == []

    cancelled = machine.partial_transcript("Wait, what about", 1.9)
    assert cancelled[0] == CancelTurn(1, unanswered=False)
    assert cancelled[-2:] == [AudioCancel(1), Transcript("Wait, what about", final=False)]
    assert not of_type(cancelled, SendAudio)
    assert machine.decision_due(1.5, 2.1) == []
    assert machine.final_transcript("Wait, what about the dragon?", 2.6) == [
        Transcript("Wait, what about the dragon?", final=True),
        StartTurn("Wait, what about the dragon?"),
    ]


def test_a_pause_without_words_resumes_when_the_time_for_a_decision_is_up() -> None:
    machine = playing_story()
    machine.speech_started(1.5)
    machine.reply_audio(reply_audio(1, 1, 1.0, THE_END), 1.6)

    assert machine.decision_due(1.5, 2.1) == [AudioResume(1), SendAudio(bytes(48000))]
    # Once decided, a late reminder changes nothing.
    assert machine.decision_due(1.5, 2.2) == []


def test_the_time_for_a_decision_counts_from_when_the_speech_began_not_when_it_was_detected() -> (
    None
):
    machine = playing_story()
    # The voice detector was sure of the speech 0.25 s into it: the pause comes now, the
    # decision is due DECIDE_WITHIN after the speech began.
    pause, expect = machine.speech_started(1.75, spoken_s=0.25)
    assert pause == AudioPause(1) and isinstance(expect, ExpectDecision)
    assert expect.paused_at == 1.5
    assert abs(expect.within_s - (DECIDE_WITHIN - 0.25)) < 1e-9
    machine.reply_audio(reply_audio(1, 1, 1.0, THE_END), 1.8)
    assert machine.decision_due(1.5, 2.1) == [AudioResume(1), SendAudio(bytes(48000))]


def test_an_acknowledgement_heard_early_keeps_the_pause_until_the_turn_ends_or_time_is_up() -> None:
    machine = playing_story()
    machine.speech_started(1.5)
    assert machine.partial_transcript("Mm-hmm.", 1.8) == [Transcript("Mm-hmm.", final=False)]
    assert machine.decision_due(1.5, 2.1) == [AudioResume(1)]
    assert machine.final_transcript("Mm-hmm.", 2.4) == [Transcript("Mm-hmm.", final=True)]


def test_words_that_come_after_the_reply_resumed_still_interrupt_it() -> None:
    machine = playing_story()
    machine.speech_started(1.5)
    machine.decision_due(1.5, 2.1)

    later = machine.partial_transcript("Tell me instead", 2.4)
    assert [c for c in later if isinstance(c, CancelTurn | AudioCancel)] == [
        CancelTurn(1, unanswered=False),
        AudioCancel(1),
    ]
    assert machine.final_transcript("Tell me instead about dragons.", 3.0)[-1] == StartTurn(
        "Tell me instead about dragons."
    )


def test_a_question_is_an_interruption_even_in_the_words_of_an_acknowledgement() -> None:
    machine = playing_story()
    machine.speech_started(1.5)
    assert machine.final_transcript("Okay?", 2.0) == [
        CancelTurn(1, unanswered=False),
        Heard(1, "Tell me a story.", "Once upon…", True, False),
        AudioCancel(1),
        Transcript("Okay?", final=True),
        StartTurn("Okay?"),
    ]


def test_a_stale_reminder_does_not_decide_a_later_pause() -> None:
    machine = playing_story()
    machine.speech_started(1.5)
    machine.final_transcript("Right.", 1.9)
    machine.speech_started(2.2)
    assert machine.decision_due(1.5, 2.3) == []
    assert machine.decision_due(2.2, 2.8) == [AudioResume(1)]


def test_a_connection_ending_while_paused_records_only_the_audio_sent() -> None:
    machine = playing_story()
    machine.speech_started(1.5)
    machine.reply_audio(reply_audio(1, 1, 1.0, THE_END), 1.6)
    assert of_type(machine.closed(), Heard) == [Heard(1, "Tell me a story.", ONCE, True, False)]


def test_a_few_words_the_recognizer_is_unsure_of_resume_the_reply_and_start_no_turn() -> None:
    machine = playing_story(Backchannels.parse("yeah", DECIDE_WITHIN, least_logprob=-0.5))
    machine.speech_started(1.5)
    assert machine.partial_transcript("Come.", 1.8, logprob=-0.7) == [
        Transcript("Come.", final=False)
    ]
    # The reminder finds the unsure words it was left with: no words, so the reply goes on.
    assert machine.decision_due(1.5, 2.1) == [AudioResume(1)]
    assert machine.final_transcript("Come.", 2.4, logprob=-0.6) == [Transcript("Come.", final=True)]
    # The same words, surely heard, are an interruption.
    machine = playing_story(Backchannels.parse("yeah", DECIDE_WITHIN, least_logprob=-0.5))
    machine.speech_started(1.5)
    assert AudioCancel(1) in machine.final_transcript("Come.", 2.0, logprob=-0.2)


def test_a_partial_that_may_still_become_an_acknowledgement_resumes_by_the_bound() -> None:
    machine = playing_story()
    machine.speech_started(1.5)
    assert machine.partial_transcript("Yeah, but", 1.8) == [Transcript("Yeah, but", final=False)]
    assert machine.decision_due(1.5, 2.1) == [AudioResume(1)]
    # More words that make it no acknowledgement still cancel the reply.
    later = machine.partial_transcript("Yeah, but who was", 2.4)
    assert of_type(later, AudioCancel) == [AudioCancel(1)]


# --- speculation: a reply started at a pause, held back until the final --------------------------


def speculating(machine: TurnMachine, said: str, now: float, number: int) -> TurnMachine:
    """The user paused after ``said``; the speculative turn gets ``number``."""
    commands = machine.tentative_transcript(said, now)
    start = commands[-1]
    assert isinstance(start, StartTurn) and start.speculative, commands
    machine.turn_started(number, start.text, now, speculative=True)
    return machine


def test_a_tentative_transcript_starts_a_speculative_turn_and_tells_the_client_nothing() -> None:
    machine = TurnMachine(ENGLISH)
    assert machine.tentative_transcript("What is the capital of France?", 0.3) == [
        StartTurn("What is the capital of France?", speculative=True)
    ]


def test_the_reply_of_a_speculation_is_held_back_until_the_final_confirms_its_words() -> None:
    machine = speculating(TurnMachine(ENGLISH), "What is the capital of France?", 0.3, number=1)
    assert machine.reply_text(1, 0, "Paris.") == []
    assert machine.reply_audio(reply_audio(1, 0, 1.0, "Paris."), 0.6) == []
    assert machine.reply_done(1, sentences=1) == []

    confirmed = machine.final_transcript("What is the capital of France?", 1.2)
    assert confirmed == [
        Transcript("What is the capital of France?", final=True),
        SpeculationSettled(1, used=True),
        AssistantText("Paris.", 1),
        FirstAudio(0.0),
        AudioStart(24000, 1),
        SendAudio(bytes(48000)),
        Heard(1, "What is the capital of France?", "Paris.", False, False),
        AudioEnd(1),
    ]


def test_a_confirmed_speculation_goes_on_as_a_normal_turn() -> None:
    machine = speculating(TurnMachine(ENGLISH), "Tell me a story.", 0.3, number=1)
    machine.reply_audio(reply_audio(1, 0, 2.0, ONCE), 0.8)
    # Differences of case and punctuation are no other words.
    assert of_type(machine.final_transcript("tell me a story", 1.2), StartTurn) == []
    assert machine.reply_audio(reply_audio(1, 1, 0.5, THE_END), 1.5) == [SendAudio(bytes(24000))]
    assert of_type(machine.reply_done(1, sentences=2), Heard) == [
        Heard(1, "Tell me a story.", f"{ONCE} {THE_END}", False, False)
    ]
    # Speech over it is a barge-in as over any reply.
    assert machine.speech_started(2.0)[0] == AudioPause(1)


def test_a_user_who_goes_on_cancels_the_speculation_and_nothing_of_it_is_heard() -> None:
    machine = speculating(TurnMachine(ENGLISH), "Tell me a story", 0.3, number=1)
    machine.reply_text(1, 0, "Once")
    machine.reply_audio(reply_audio(1, 0, 1.0, ONCE), 0.9)

    went_on = machine.partial_transcript("Tell me a story about a dragon", 1.0)
    assert went_on == [
        CancelTurn(1, unanswered=False, reason="speculation_withdrawn"),
        SpeculationSettled(1, used=False),
        Transcript("Tell me a story about a dragon", final=False),
    ]
    # Late events of the cancelled turn are stale; the whole request is one turn, recorded once.
    assert machine.reply_done(1, sentences=1) == []
    assert ask(machine, "Tell me a story about a dragon.", 2.5, number=3)[-1] == StartTurn(
        "Tell me a story about a dragon."
    )
    assert machine.reply_audio(reply_audio(1, 0, 1.0, ONCE), 2.6) == []
    machine.reply_audio(reply_audio(3, 0, 1.0, ONCE), 3.0)
    assert of_type(machine.reply_done(3, sentences=1), Heard) == [
        Heard(3, "Tell me a story about a dragon.", ONCE, False, False)
    ]


def test_a_final_with_other_words_cancels_the_speculation_and_starts_the_turn() -> None:
    machine = speculating(TurnMachine(ENGLISH), "Tell me a story", 0.3, number=1)
    assert machine.final_transcript("Tell me a story about a dragon.", 2.0) == [
        Transcript("Tell me a story about a dragon.", final=True),
        CancelTurn(1, unanswered=False, reason="speculation_withdrawn"),
        SpeculationSettled(1, used=False),
        StartTurn("Tell me a story about a dragon."),
    ]


def test_a_second_pause_with_more_words_speculates_again() -> None:
    machine = speculating(TurnMachine(ENGLISH), "Tell me a story", 0.3, number=1)
    assert machine.tentative_transcript("Tell me a story about a dragon", 2.0) == [
        CancelTurn(1, unanswered=False, reason="speculation_withdrawn"),
        SpeculationSettled(1, used=False),
        StartTurn("Tell me a story about a dragon", speculative=True),
    ]
    # The same words again (a repeated tentative) start nothing more.
    machine.turn_started(3, "Tell me a story about a dragon", 2.0, speculative=True)
    assert machine.tentative_transcript("Tell me a story about a dragon.", 2.2) == []


def test_no_speculation_over_a_reply_that_may_still_be_playing() -> None:
    machine = playing_story()
    # Speech over the reply paused it; whether it is an acknowledgement is not decided yet.
    machine.speech_started(1.5)
    assert machine.tentative_transcript("Uh-huh", 2.0) == []
    # Nor while nothing was said over it and it plays on.
    assert TurnMachine(ENGLISH).tentative_transcript("", 0.1) == []
    playing = playing_story()
    assert playing.tentative_transcript("What about the dragon", 1.5) == []


def test_a_speculation_answers_a_request_left_unanswered_together_with_its_continuation() -> None:
    machine = TurnMachine(ENGLISH)
    ask(machine, "Tell me a story.", 0.0, number=1)
    machine.speech_started(0.5)  # before any reply played: the request is left unanswered
    speculating(machine, "About a dragon.", 1.0, number=3)
    assert machine.final_transcript("About a dragon.", 2.0)[:2] == [
        Transcript("About a dragon.", final=True),
        SpeculationSettled(3, used=True),
    ]
    machine.reply_audio(reply_audio(3, 0, 1.0, ONCE), 2.5)
    assert of_type(machine.reply_done(3, sentences=1), Heard) == [
        Heard(3, "Tell me a story. About a dragon.", ONCE, False, False)
    ]


def test_the_connection_ending_cancels_a_speculation_unrecorded() -> None:
    machine = speculating(TurnMachine(ENGLISH), "Tell me a story", 0.3, number=1)
    machine.reply_audio(reply_audio(1, 0, 1.0, ONCE), 0.9)
    assert machine.closed() == [
        CancelTurn(1, unanswered=False, reason="turn_cancelled_on_close"),
        SpeculationSettled(1, used=False),
    ]
