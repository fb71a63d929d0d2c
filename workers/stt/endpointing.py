"""End-of-utterance logic as a pure state machine over audio positions (in samples).

The transcriber feeds one VAD speech probability per chunk and, when asked, one Smart Turn
probability; this module decides when speech starts, which audio to decode for partials and
commits, and when the turn ends. Time is counted in samples received, never wall-clock time,
so the same audio always yields the same decisions.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleet.audio import INPUT_SAMPLE_RATE
from fleet.settings import Settings

# Silero's own convention: once speaking, only fall back to silence clearly below the
# threshold, so a probability hovering around it does not flap.
_HYSTERESIS = 0.15


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    chunk: int
    vad_threshold: float
    start_chunks: int
    pre_roll: int
    first_partial: int
    partial_interval: int
    window: int
    end_silence: int
    silence_timeout: int
    turn_threshold: float
    tail_pad: int
    turn_context: int
    speculate: bool = False

    @classmethod
    def from_settings(
        cls, settings: Settings, *, sample_rate: int = INPUT_SAMPLE_RATE, chunk: int = 512
    ) -> EndpointConfig:
        def samples(seconds: float) -> int:
            return round(seconds * sample_rate)

        return cls(
            chunk=chunk,
            vad_threshold=settings.stt_vad_threshold,
            # ~96 ms of consecutive speech: a click or a breath does not start an utterance.
            start_chunks=3,
            # Silero fires a little after the onset; decoding from slightly earlier keeps the
            # first phoneme.
            pre_roll=samples(0.3),
            first_partial=samples(settings.stt_first_partial_s),
            partial_interval=samples(settings.stt_partial_interval_s),
            window=samples(settings.stt_window_s),
            end_silence=samples(settings.stt_end_silence_s),
            silence_timeout=samples(settings.stt_silence_timeout_s),
            turn_threshold=settings.stt_turn_threshold,
            tail_pad=samples(0.15),
            turn_context=samples(8.0),
            speculate=settings.speculate_turns,
        )


@dataclass(frozen=True, slots=True)
class StartSpeech:
    """Speech started; decode from ``start`` (the pre-roll included). ``voiced``: how much of it
    the voice detector had heard by then (samples), i.e. how long ago, in the audio, it began."""

    start: int
    voiced: int = 0


@dataclass(frozen=True, slots=True)
class Partial:
    """Decode [start, end) (the uncommitted audio) for a partial transcript."""

    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Commit:
    """Decode [start, end) and append it to the committed text for good."""

    start: int
    end: int


@dataclass(frozen=True, slots=True)
class CheckTurn:
    """Run the turn detector on [start, end) and report back with `turn_result`."""

    start: int
    end: int


@dataclass(frozen=True, slots=True)
class EndTurn:
    """The utterance is over: decode [start, end) (possibly empty) and emit the final."""

    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Speculate:
    """The user paused, and the turn detector thinks they will go on: unless they do, the turn
    ends at the silence timeout with the speech committed so far, so a reply to it may start now.
    Every voiced sample is committed by then (the pause committed them)."""


Action = StartSpeech | Partial | Commit | CheckTurn | EndTurn | Speculate


class Endpointer:
    def __init__(self, config: EndpointConfig) -> None:
        self._cfg = config
        self.position = 0
        self._floor = 0
        self._run = 0
        self._run_start = 0
        self._speaking = False
        self._utt_start = 0
        self._committed = 0
        self._speech_end = 0
        self._last_partial = 0
        self._next_partial = 0
        self._last_dip = 0
        self._silence_since: int | None = None
        self._turn_checked = False
        self._turn_pending = False

    @property
    def speech_end(self) -> int:
        """Sample position just after the last voiced chunk."""
        return self._speech_end

    @property
    def speaking(self) -> bool:
        return self._speaking

    @property
    def keep_from(self) -> int:
        """Earliest sample any future action can refer to; older audio may be dropped."""
        cfg = self._cfg
        if not self._speaking:
            lookback = cfg.pre_roll + cfg.start_chunks * cfg.chunk
            return max(self._floor, self.position - lookback)
        turn_start = max(self._utt_start, self._speech_end - cfg.turn_context)
        return min(self._committed, turn_start)

    def push(self, prob: float) -> list[Action]:
        """Advance by one chunk whose speech probability is `prob`."""
        cfg = self._cfg
        self.position += cfg.chunk
        if not self._speaking:
            return self._push_idle(prob)

        if prob >= cfg.vad_threshold:
            self._speech_end = self.position
            self._silence_since = None
            self._turn_checked = False
        elif prob < cfg.vad_threshold - _HYSTERESIS and self._silence_since is None:
            self._silence_since = self.position - cfg.chunk
        if prob < cfg.vad_threshold:
            self._last_dip = self.position

        silence = 0 if self._silence_since is None else self.position - self._silence_since
        if silence >= cfg.silence_timeout:
            return self._end_turn()
        if silence >= cfg.end_silence:
            return self._pause()
        return self._while_speaking()

    def turn_result(self, prob: float) -> list[Action]:
        """The turn detector's answer to the last CheckTurn."""
        if not (self._speaking and self._turn_pending):
            return []
        self._turn_pending = False
        if prob >= self._cfg.turn_threshold:
            return self._end_turn()
        # When the detector says "done", the final follows at once: a speculation would gain
        # nothing. Here the turn may still end, but only at the silence timeout, up to
        # ``silence_timeout - end_silence`` later.
        return [Speculate()] if self._cfg.speculate else []

    def finish(self) -> list[Action]:
        """The stream is closing: end the utterance in progress, if any."""
        return self._end_turn() if self._speaking else []

    def _push_idle(self, prob: float) -> list[Action]:
        cfg = self._cfg
        if prob < cfg.vad_threshold:
            self._run = 0
            return []
        if self._run == 0:
            self._run_start = self.position - cfg.chunk
        self._run += 1
        if self._run < cfg.start_chunks:
            return []
        self._speaking = True
        self._utt_start = max(self._floor, self._run_start - cfg.pre_roll)
        self._committed = self._utt_start
        self._speech_end = self.position
        self._last_partial = self.position
        # The first partial comes sooner than the rest: the first words of an utterance are what
        # decides whether speech over a playing reply interrupts it (gateway/interruptions.py).
        self._next_partial = self.position + cfg.first_partial
        return [StartSpeech(self._utt_start, self.position - self._run_start)]

    def _while_speaking(self) -> list[Action]:
        cfg = self._cfg
        uncommitted = self.position - self._committed
        # Commit before the next chunk would push the uncommitted audio past the window, so
        # no decode ever sees more than `window` samples.
        if uncommitted + cfg.chunk > cfg.window:
            # Prefer cutting at a recent dip in speech probability (a likely word gap) over
            # cutting mid-word, as long as it keeps the commit reasonably large.
            dip_ok = self._last_dip > self._committed + cfg.window // 2
            cut = self._last_dip if dip_ok else self.position
            return [self._commit(cut)]
        if self.position >= self._next_partial and self._speech_end > self._last_partial:
            self._partial_done()
            return [Partial(self._committed, self.position)]
        return []

    def _pause(self) -> list[Action]:
        if self._turn_checked:
            return []
        self._turn_checked = True
        self._turn_pending = True
        actions: list[Action] = []
        # Commit the speech before the pause right away: if the turn is over this is the
        # final's tail already being decoded, and if not it is a natural place to cut.
        end = self._segment_end()
        if end > self._committed:
            actions.append(self._commit(end))
        turn_start = max(self._utt_start, self._speech_end - self._cfg.turn_context)
        # The detector hears the speech without the trailing silence: measured on Smart Turn
        # v3.2, even 30 ms of digital silence after a cut-off phrase flips it to "complete",
        # and the length of the silence is this state machine's job anyway.
        actions.append(CheckTurn(turn_start, self._speech_end))
        return actions

    def _commit(self, end: int) -> Commit:
        action = Commit(self._committed, end)
        self._committed = end
        self._partial_done()
        return action

    def _partial_done(self) -> None:
        self._last_partial = self.position
        self._next_partial = self.position + self._cfg.partial_interval

    def _segment_end(self) -> int:
        return min(self.position, self._speech_end + self._cfg.tail_pad)

    def _end_turn(self) -> list[Action]:
        end = max(self._committed, self._segment_end())
        action = EndTurn(self._committed, end)
        self._floor = self.position
        self._run = 0
        self._reset_utterance()
        return [action]

    def _reset_utterance(self) -> None:
        self._speaking = False
        self._utt_start = self._floor
        self._committed = self._floor
        self._speech_end = self._floor
        self._last_partial = self._floor
        self._next_partial = self._floor
        self._last_dip = self._floor
        self._silence_since = None
        self._turn_checked = False
        self._turn_pending = False
