"""The turns of one session and barge-in, decided without I/O.

The connection feeds in what happens, one event at a time and with the time it happened: the
user's speech (speech started, partial and final transcripts) and the reply (its text, audio,
end and failure). It carries out, in order, the commands that come back: events and audio for the
client, turns to start or cancel in the fleet, and what the user heard for the history.

Speech over a reply that is playing pauses it first (``audio_pause``; the reply's audio is held
here, its making goes on); the words then decide (gateway/interruptions.py): a real interruption
cancels the reply, an acknowledgement or no words resume it (``audio_resume``, then the held
audio) and start no turn.

When the user pauses and may be done (``transcript.tentative``), the reply to what they said so far
starts at once, held back here (a speculation): the final transcript with the same words makes it
the turn, its reply already on the way; more speech, or a final with other words, cancels it
unheard and unrecorded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from fleet.audio import OUTPUT_SAMPLE_RATE
from fleet.contracts import AudioOut
from fleet.errors import ErrorCode
from gateway.interruptions import Backchannels, Verdict, spoken_words
from gateway.playback import ReplyAssembler
from gateway.protocol import (
    AssistantText,
    AudioCancel,
    AudioEnd,
    AudioPause,
    AudioResume,
    AudioStart,
    Error,
    ServerEvent,
    Transcript,
)

_BYTES_PER_SECOND = OUTPUT_SAMPLE_RATE * 2

# --- commands ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendAudio:
    """Reply audio for the client, in playback order."""

    pcm: bytes


@dataclass(frozen=True, slots=True)
class StartTurn:
    """Ask the fleet to answer ``text`` as a new turn, then report its number to
    :meth:`TurnMachine.turn_started` before the next event.

    ``speculative``: the user may not be done; the reply is held back until the final
    transcript confirms the words (see :meth:`TurnMachine.tentative_transcript`).
    """

    text: str
    speculative: bool = False


@dataclass(frozen=True, slots=True)
class CancelTurn:
    """Move the session's turn counter past ``turn``, so that no worker goes on with it.

    ``unanswered``: none of its reply had played, so its request is answered with the next turn.
    ``reason``: why, as the connection logs it (a barge-in, or the client gone mid-reply).
    """

    turn: int
    unanswered: bool
    reason: str = "barge_in"


@dataclass(frozen=True, slots=True)
class Heard:
    """What the user heard of a turn, for the history.

    ``correction``: the turn was recorded before (its reply was fully sent) and this replaces it.
    """

    turn: int
    user_text: str
    reply: str
    interrupted: bool
    correction: bool


@dataclass(frozen=True, slots=True)
class FirstAudio:
    """The first audio of a reply goes out ``waited_s`` after its turn was started."""

    waited_s: float


@dataclass(frozen=True, slots=True)
class ExpectDecision:
    """Call :meth:`TurnMachine.decision_due` with ``paused_at`` once ``within_s`` have passed
    (``paused_at`` names the pause: when the speech that caused it began)."""

    paused_at: float
    within_s: float


@dataclass(frozen=True, slots=True)
class SpeculationSettled:
    """Speculative turn ``turn`` became the turn (``used``), or was cancelled unheard."""

    turn: int
    used: bool


Command = (
    ServerEvent
    | SendAudio
    | StartTurn
    | CancelTurn
    | Heard
    | FirstAudio
    | ExpectDecision
    | SpeculationSettled
)


# --- the machine ---------------------------------------------------------------------------


@dataclass
class _Turn:
    number: int
    user_text: str
    started_at: float
    reply: ReplyAssembler
    first_audio_at: float | None = None
    recorded: bool = False
    next_delta: int = 0
    # While the client is paused: since when, and the reply audio held back meanwhile.
    paused_at: float | None = None
    paused_s: float = 0.0
    held: list[bytes] = field(default_factory=list)

    def _playback_clock(self, now: float) -> float:
        """Seconds the client has been playing this reply: it plays audio as it arrives, so its
        clock starts at the first audio, and stands still while paused."""
        if self.first_audio_at is None:
            return 0.0
        paused = self.paused_s + (0.0 if self.paused_at is None else now - self.paused_at)
        return now - self.first_audio_at - paused

    def seconds_played(self, now: float) -> float:
        return min(self._playback_clock(now), self.reply.seconds_emitted)

    @property
    def seconds_sent(self) -> float:
        return self.reply.seconds_emitted - sum(map(len, self.held)) / _BYTES_PER_SECOND

    def still_playing(self, now: float) -> bool:
        """Whether the user may still be hearing (or waiting for) this reply."""
        if not self.reply.complete:
            return True
        return self.first_audio_at is not None and (
            self._playback_clock(now) < self.reply.seconds_emitted
        )


@dataclass
class _Listening:
    """The user speaks over the playing reply; what they say decides what becomes of it."""

    since: float  # when the speech began
    heard: str = ""
    paused: bool = True
    logprob: float = 0.0  # how sure the recognizer is of ``heard``


@dataclass
class _Speculation:
    """A turn started on a tentative transcript, whose reply events wait here until the final."""

    said: str  # the tentative transcript
    text: str  # the request: ``said``, after a request left unanswered
    number: int | None = None  # known from turn_started, before the next event
    # The reply's events as they came, each to be handled as the turn's own once it is confirmed.
    held: list[Callable[[float], list[Command]]] = field(default_factory=list)


def _same_words(a: str, b: str) -> bool:
    return spoken_words(a) == spoken_words(b)


class TurnMachine:
    def __init__(self, backchannels: Backchannels) -> None:
        self._backchannels = backchannels
        self._turn: _Turn | None = None
        # The request of a turn cut off before any of its reply played: the user paused
        # mid-request and went on. The next turn answers it together with what followed.
        self._unanswered = ""
        # Speech over the current turn's reply, until its final transcript (or another turn).
        self._listening: _Listening | None = None
        self._speculation: _Speculation | None = None

    # --- the user ------------------------------------------------------------------------------

    def speech_started(self, now: float, spoken_s: float = 0.0) -> list[Command]:
        """``spoken_s``: how long the user had spoken when the voice detector was sure of it.
        The decision is due ``decide_within_s`` after the speech began, not after this."""
        # Only a recognizer that took the stream over starts the utterance again before its
        # final: what it will make of it is not known yet.
        withdrawn = self._withdraw("speculation_withdrawn")
        turn = self._turn
        if turn is None or not turn.still_playing(now):
            return withdrawn
        if turn.first_audio_at is None:
            # Nothing has played: the user is still making the request (see _barge_in).
            return withdrawn + self._barge_in(now)
        if self._listening is not None and self._listening.paused:
            return withdrawn
        return withdrawn + self._pause(turn, now, began=now - spoken_s)

    def partial_transcript(self, text: str, now: float, logprob: float = 0.0) -> list[Command]:
        # A partial after the tentative transcript is of speech after the pause: the user went on.
        withdrawn: list[Command] = []
        if self._speculation is not None and not _same_words(self._speculation.said, text):
            withdrawn = self._withdraw("speculation_withdrawn")
        # A decision precedes the transcript that caused it.
        return [
            *withdrawn,
            *self._hear(text, now, final=False, logprob=logprob),
            Transcript(text, final=False),
        ]

    def tentative_transcript(self, text: str, now: float) -> list[Command]:
        """The user paused and may be done saying ``text``: start its reply, held back."""
        said = text.strip()
        if not spoken_words(said) or self._listening is not None:
            return []
        if self._turn is not None and self._turn.still_playing(now):
            # A new turn would cancel the reply the user may still be hearing; whether the
            # speech over it is a request or an acknowledgement is for the final to tell.
            return []
        if self._speculation is not None and _same_words(self._speculation.said, said):
            return []
        withdrawn = self._withdraw("speculation_withdrawn")
        self._speculation = _Speculation(said, f"{self._unanswered} {said}".strip())
        return [*withdrawn, StartTurn(self._speculation.text, speculative=True)]

    def decision_due(self, paused_at: float, now: float) -> list[Command]:
        """The time for a decision on the pause that began at ``paused_at`` is up."""
        listening = self._listening
        if listening is None or not listening.paused or listening.since != paused_at:
            return []
        waited = max(now - listening.since, self._backchannels.decide_within_s)
        return self._decide(
            listening,
            listening.heard,
            final=False,
            waited_s=waited,
            now=now,
            logprob=listening.logprob,
        )

    def final_transcript(self, text: str, now: float, logprob: float = 0.0) -> list[Command]:
        commands = self._hear(text, now, final=True, logprob=logprob)
        if self._listening is not None:
            # An acknowledgement, or no words, over the reply: it goes on; this is no new turn.
            self._listening = None
            return [
                *commands,
                *self._withdraw("speculation_withdrawn"),
                Transcript(text, final=True),
            ]
        said = text.strip()
        commands.append(Transcript(text, final=True))
        speculation = self._speculation
        if (
            speculation is not None
            and speculation.number is not None
            and _same_words(speculation.said, said)
        ):
            return commands + self._confirm(speculation, speculation.number, now)
        commands += self._withdraw("speculation_withdrawn")
        # Speech that had no words (a cough) cut a request off: it is answered still.
        if said or self._unanswered:
            commands.append(StartTurn(f"{self._unanswered} {said}".strip()))
            self._unanswered = ""
        return commands

    def turn_started(
        self, number: int, text: str, now: float, *, speculative: bool = False
    ) -> None:
        if speculative and self._speculation is not None:
            self._speculation.number = number
            return
        self._turn = _Turn(number, text, now, ReplyAssembler(number))
        self._listening = None

    def _confirm(self, speculation: _Speculation, number: int, now: float) -> list[Command]:
        """The final transcript says what the speculation answers: it is the turn from now on,
        and what came of its reply so far is handled as if it were coming now."""
        self._speculation = None
        self._unanswered = ""
        self.turn_started(number, speculation.text, now)
        commands: list[Command] = [SpeculationSettled(number, used=True)]
        for event in speculation.held:
            commands += event(now)
        return commands

    def _withdraw(self, reason: str) -> list[Command]:
        """Cancel the speculation, if any: nothing of it was sent or recorded."""
        speculation, self._speculation = self._speculation, None
        if speculation is None or speculation.number is None:
            return []
        return [
            CancelTurn(speculation.number, unanswered=False, reason=reason),
            SpeculationSettled(speculation.number, used=False),
        ]

    def _held_back(self, turn: int, event: Callable[[float], list[Command]]) -> bool:
        """Keep ``event`` if it is of the speculation's turn (see _confirm)."""
        speculation = self._speculation
        if speculation is None or speculation.number != turn:
            return False
        speculation.held.append(event)
        return True

    # --- the reply -----------------------------------------------------------------------------

    def reply_text(self, turn: int, index: int, text: str) -> list[Command]:
        if self._held_back(turn, lambda now: self.reply_text(turn, index, text)):
            return []
        current = self._current(turn)
        # A retried turn (its LLM worker died) streams from the start again.
        if current is None or index < current.next_delta:
            return []
        current.next_delta = index + 1
        return [AssistantText(text, turn)]

    def reply_audio(self, audio: AudioOut, now: float) -> list[Command]:
        if self._held_back(audio.turn, lambda later: self.reply_audio(audio, later)):
            return []
        current = self._current(audio.turn)
        if current is None:
            return []
        return self._play(current, current.reply.add(audio), now)

    def _play(self, current: _Turn, chunks: list[AudioOut], now: float) -> list[Command]:
        commands: list[Command] = []
        for chunk in chunks:
            if current.first_audio_at is None:
                current.first_audio_at = now
                commands.append(FirstAudio(now - current.started_at))
                commands.append(AudioStart(OUTPUT_SAMPLE_RATE, current.number))
            if not chunk.pcm:
                continue
            if current.paused_at is None:
                commands.append(SendAudio(chunk.pcm))
            else:
                current.held.append(chunk.pcm)
        return commands + self._finish_if_complete(current)

    def reply_done(self, turn: int, sentences: int) -> list[Command]:
        if self._held_back(turn, lambda now: self.reply_done(turn, sentences)):
            return []
        current = self._current(turn)
        if current is None:
            return []
        current.reply.finish(sentences)
        return self._finish_if_complete(current)

    def reply_failed(
        self, turn: int, code: ErrorCode, message: str, sentence: int | None, now: float
    ) -> list[Command]:
        if self._held_back(
            turn, lambda later: self.reply_failed(turn, code, message, sentence, later)
        ):
            return []
        current = self._current(turn)
        if current is None:
            return []
        # The contract admits documented codes only (a TurnFailed with another is malformed and
        # dropped before it gets here), so a client is never sent an undocumented code.
        commands: list[Command] = [Error(ErrorCode(code), message)]
        if sentence is not None:
            commands += self._play(current, current.reply.abandon(sentence), now)
        return commands

    def closed(self) -> list[Command]:
        """The connection ended: a reply not yet recorded is recorded as far as it was sent,
        and a reply still in the making is cancelled: nobody is there to hear it."""
        withdrawn = self._withdraw("turn_cancelled_on_close")
        turn = self._turn
        if turn is None:
            return withdrawn
        commands = withdrawn
        if not turn.reply.complete:
            unanswered = turn.first_audio_at is None
            commands.append(CancelTurn(turn.number, unanswered, reason="turn_cancelled_on_close"))
        if not turn.recorded:
            commands.append(self._heard(turn, interrupted=True, seconds=turn.seconds_sent))
        return commands

    # --- decisions -----------------------------------------------------------------------------

    def _current(self, turn: int) -> _Turn | None:
        """The current turn if it is ``turn``; an event of any other turn is stale."""
        if self._turn is None or self._turn.number != turn:
            return None
        return self._turn

    def _pause(
        self,
        turn: _Turn,
        now: float,
        heard: str = "",
        logprob: float = 0.0,
        began: float | None = None,
    ) -> list[Command]:
        since = now if began is None else min(began, now)
        self._listening = _Listening(since, heard, logprob=logprob)
        turn.paused_at = now
        within = max(0.0, self._backchannels.decide_within_s - (now - since))
        return [AudioPause(turn.number), ExpectDecision(since, within)]

    def _hear(self, text: str, now: float, *, final: bool, logprob: float) -> list[Command]:
        """Words (or none) of the user's speech: over a playing reply they decide its fate."""
        listening = self._listening
        if listening is not None:
            return self._decide(
                listening,
                text,
                final=final,
                waited_s=now - listening.since,
                now=now,
                logprob=logprob,
            )
        turn = self._turn
        if not spoken_words(text) or turn is None or not turn.still_playing(now):
            return []
        verdict = self._backchannels.judge(text, final=final, waited_s=0.0, logprob=logprob)
        if turn.first_audio_at is None or verdict is Verdict.INTERRUPT:
            return self._barge_in(now)
        # Words over the reply whose speech start came before the reply's audio did.
        if final:
            self._listening = _Listening(now, text, paused=False, logprob=logprob)
            return []
        return self._pause(turn, now, heard=text, logprob=logprob)

    def _decide(
        self,
        listening: _Listening,
        text: str,
        *,
        final: bool,
        waited_s: float,
        now: float,
        logprob: float,
    ) -> list[Command]:
        listening.heard = text
        listening.logprob = logprob
        verdict = self._backchannels.judge(text, final=final, waited_s=waited_s, logprob=logprob)
        if verdict is Verdict.INTERRUPT:
            return self._barge_in(now)
        if verdict is Verdict.WAIT or not listening.paused:
            return []
        listening.paused = False
        turn = self._turn
        if turn is None or turn.paused_at is None:
            return []
        turn.paused_s += now - turn.paused_at
        turn.paused_at = None
        held, turn.held = turn.held, []
        resumed: list[Command] = [AudioResume(turn.number), *(SendAudio(pcm) for pcm in held)]
        return resumed + self._finish_if_complete(turn)

    def _barge_in(self, now: float) -> list[Command]:
        """The user spoke: if over the reply, stop it everywhere and keep what was heard."""
        turn = self._turn
        self._listening = None
        if turn is None or not turn.still_playing(now):
            return []
        self._turn = None
        unanswered = turn.first_audio_at is None
        commands: list[Command] = [CancelTurn(turn.number, unanswered)]
        if unanswered:
            self._unanswered = turn.user_text
        else:
            # A reply fully sent may still be playing: what was heard replaces what was recorded.
            commands.append(self._heard(turn, interrupted=True, seconds=turn.seconds_played(now)))
        commands.append(AudioCancel(turn.number))
        return commands

    def _finish_if_complete(self, turn: _Turn) -> list[Command]:
        # While paused, the end waits for the held audio it follows.
        if not turn.reply.complete or turn.recorded or turn.paused_at is not None:
            return []
        # Recorded first: once the client hears the turn ended, its history holds it, even if
        # this gateway dies the next moment and the client resumes elsewhere.
        commands: list[Command] = [
            self._heard(turn, interrupted=False, seconds=turn.reply.seconds_emitted)
        ]
        if turn.first_audio_at is not None:
            commands.append(AudioEnd(turn.number))
        return commands

    def _heard(self, turn: _Turn, *, interrupted: bool, seconds: float) -> Heard:
        correction = turn.recorded
        turn.recorded = True
        spoken = turn.reply.spoken_text(seconds)
        return Heard(turn.number, turn.user_text, spoken, interrupted, correction)
