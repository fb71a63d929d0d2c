"""The turns of one session and barge-in, decided without I/O.

The connection feeds in what happens, one event at a time and with the time it happened: the
user's speech (speech started, partial and final transcripts) and the reply (its text, audio,
end and failure). It carries out, in order, the commands that come back: events and audio for the
client, turns to start or cancel in the fleet, and what the user heard for the history.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleet.audio import OUTPUT_SAMPLE_RATE
from fleet.contracts import AudioOut
from fleet.errors import ErrorCode
from gateway.playback import ReplyAssembler
from gateway.protocol import (
    AssistantText,
    AudioCancel,
    AudioEnd,
    AudioStart,
    Error,
    ServerEvent,
    Transcript,
)

# --- commands ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendAudio:
    """Reply audio for the client, in playback order."""

    pcm: bytes


@dataclass(frozen=True, slots=True)
class StartTurn:
    """Ask the fleet to answer ``text`` as a new turn, then report its number to
    :meth:`TurnMachine.turn_started` before the next event."""

    text: str


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


Command = ServerEvent | SendAudio | StartTurn | CancelTurn | Heard | FirstAudio


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

    def seconds_played(self, now: float) -> float:
        if self.first_audio_at is None:
            return 0.0
        return min(now - self.first_audio_at, self.reply.seconds_emitted)

    def still_playing(self, now: float) -> bool:
        """Whether the user may still be hearing (or waiting for) this reply.

        The client plays audio as it arrives, so its playback clock starts at the first audio.
        """
        if not self.reply.complete:
            return True
        return self.first_audio_at is not None and now < self.first_audio_at + (
            self.reply.seconds_emitted
        )


class TurnMachine:
    def __init__(self) -> None:
        self._turn: _Turn | None = None
        # The request of a turn cut off before any of its reply played: the user paused
        # mid-request and went on. The next turn answers it together with what followed.
        self._unanswered = ""

    # --- the user ------------------------------------------------------------------------------

    def speech_started(self, now: float) -> list[Command]:
        return self._barge_in(now)

    def partial_transcript(self, text: str, now: float) -> list[Command]:
        commands = self._barge_in(now) if text.strip() else []
        return [*commands, Transcript(text, final=False)]

    def final_transcript(self, text: str, now: float) -> list[Command]:
        said = text.strip()
        # A cancel precedes the transcript that caused it, as it does for partials.
        commands = self._barge_in(now) if said else []
        commands.append(Transcript(text, final=True))
        # Speech that had no words (a cough) cut a request off: it is answered still.
        if said or self._unanswered:
            commands.append(StartTurn(f"{self._unanswered} {said}".strip()))
            self._unanswered = ""
        return commands

    def turn_started(self, number: int, text: str, now: float) -> None:
        self._turn = _Turn(number, text, now, ReplyAssembler(number))

    # --- the reply -----------------------------------------------------------------------------

    def reply_text(self, turn: int, index: int, text: str) -> list[Command]:
        current = self._current(turn)
        # A retried turn (its LLM worker died) streams from the start again.
        if current is None or index < current.next_delta:
            return []
        current.next_delta = index + 1
        return [AssistantText(text, turn)]

    def reply_audio(self, audio: AudioOut, now: float) -> list[Command]:
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
            if chunk.pcm:
                commands.append(SendAudio(chunk.pcm))
        return commands + self._finish_if_complete(current)

    def reply_done(self, turn: int, sentences: int) -> list[Command]:
        current = self._current(turn)
        if current is None:
            return []
        current.reply.finish(sentences)
        return self._finish_if_complete(current)

    def reply_failed(
        self, turn: int, code: ErrorCode, message: str, sentence: int | None, now: float
    ) -> list[Command]:
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
        turn = self._turn
        if turn is None:
            return []
        commands: list[Command] = []
        if not turn.reply.complete:
            unanswered = turn.first_audio_at is None
            commands.append(CancelTurn(turn.number, unanswered, reason="turn_cancelled_on_close"))
        if not turn.recorded:
            commands.append(self._heard(turn, interrupted=True, seconds=turn.reply.seconds_emitted))
        return commands

    # --- decisions -----------------------------------------------------------------------------

    def _current(self, turn: int) -> _Turn | None:
        """The current turn if it is ``turn``; an event of any other turn is stale."""
        if self._turn is None or self._turn.number != turn:
            return None
        return self._turn

    def _barge_in(self, now: float) -> list[Command]:
        """The user spoke: if over the reply, stop it everywhere and keep what was heard."""
        turn = self._turn
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
        if not turn.reply.complete or turn.recorded:
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
