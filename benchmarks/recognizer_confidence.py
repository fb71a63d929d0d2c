"""How sure Whisper is of what it hears in short cues: the data behind VF_BARGE_IN_LEAST_LOGPROB.

Held out from benchmarks/backchannels.py on purpose (other voices, mostly other phrases), so that
a threshold chosen here is not fitted to the cues it is then measured on. Each cue (Kokoro, after
0.3 s of silence) is decoded as the STT worker decodes it: primed with the acknowledgements, beam 1
for partials of its first 0.3, 0.45 and 0.6 s after the onset, beam 5 for the whole cue (the
final). Prints, per cue, the text and the mean token log-probability of each, then how many of
each kind a threshold would take for no words, at a few thresholds.

Run (loads Whisper): flock /tmp/vf/heavy.lock python -m benchmarks.recognizer_confidence
"""

from __future__ import annotations

import numpy as np

from benchmarks.backchannels import onset_s
from fleet.audio import FloatArray
from fleet.settings import get_settings
from gateway.interruptions import Backchannels
from tests.speech import RATE, silence, speech, wordless
from workers.stt.engines import Recognized
from workers.stt.transcriber import FINAL_BEAM, PARTIAL_BEAM, SttEngines, acknowledgement_prompt

ACKNOWLEDGEMENTS = (
    ("Uh huh.", "af_sarah"),
    ("Sure, sure.", "bm_lewis"),
    ("Nice.", "bf_isabella"),
    ("Great.", "am_echo"),
    ("True.", "af_nicole"),
    ("Go on.", "am_michael"),
    ("Ah.", "af_sarah"),
    ("Aha.", "bm_lewis"),
    ("Oh.", "bf_isabella"),
    ("Hm.", "am_echo"),
    ("Mm.", "af_nicole"),
    ("Mm-hmm.", "am_michael"),
    ("Uh-huh.", "bf_isabella"),
    ("Yeah.", "bm_lewis"),
    ("Okay.", "am_echo"),
    ("Right.", "af_nicole"),
    ("Hmm.", "af_sarah"),
    ("Yes, yes.", "am_michael"),
    ("I see, okay.", "af_sarah"),
    ("Oh wow.", "bm_lewis"),
    ("Indeed.", "bf_isabella"),
    ("Fine.", "am_echo"),
    ("Yup.", "af_nicole"),
)
WORDLESS = (
    ("Wow.", "am_michael"),
    ("Sure.", "af_sarah"),
    ("Oh no.", "bm_lewis"),
    ("Really.", "bf_isabella"),
    ("Mm-hmm.", "am_echo"),
    ("Yeah.", "af_nicole"),
    ("Okay.", "am_michael"),
    ("Aha.", "af_sarah"),
)
INTERRUPTIONS = (
    ("What?", "am_michael"),
    ("No.", "af_sarah"),
    ("Stop please.", "bm_lewis"),
    ("Tell me more about the castle.", "bf_isabella"),
    ("Who?", "am_echo"),
    ("Huh?", "af_nicole"),
    ("Go back.", "am_michael"),
    ("Skip that.", "af_sarah"),
    ("Louder, please.", "bm_lewis"),
    ("What do you mean?", "bf_isabella"),
    ("Hold on a second.", "am_echo"),
    ("Enough.", "af_nicole"),
    ("Yes, but why?", "am_michael"),
    ("Okay, stop there.", "af_sarah"),
    ("Right, and then what?", "bm_lewis"),
    ("Pause.", "bf_isabella"),
    ("Quiet.", "am_echo"),
    ("Wait a minute.", "af_nicole"),
    ("Speak slower.", "am_michael"),
    ("I have a question.", "af_sarah"),
)
PARTIALS_S = (0.3, 0.45, 0.6)
THRESHOLDS = (float("-inf"), -1.0, -0.7, -0.6, -0.5, -0.4, -0.3)


def decode(
    engines: SttEngines,
    clip: FloatArray,
    onset: float,
    upto_s: float | None,
    beam: int,
    prompt: str,
) -> Recognized:
    """``clip`` from the STT worker's pre-roll before the onset (0.3 s) to ``upto_s`` after it."""
    end = None if upto_s is None else round((0.3 + onset + upto_s) * RATE)
    return engines.recognizer.transcribe(
        clip[round(onset * RATE) : end], language="en", beam_size=beam, prompt=prompt
    )


def main() -> None:
    settings = get_settings()
    engines = SttEngines.load(settings)
    listed = settings.barge_in_acknowledgements["en"]
    prompt = acknowledgement_prompt(listed)
    judge = Backchannels.parse(listed, 1.0)
    cues = [("ack", t, v, speech(t, v)) for t, v in ACKNOWLEDGEMENTS]
    cues += [("wordless", f"{t} backwards", v, wordless(t, v)) for t, v in WORDLESS]
    cues += [("int", t, v, speech(t, v)) for t, v in INTERRUPTIONS]
    finals: list[tuple[str, Recognized]] = []
    for kind, text, voice, audio in cues:
        onset = onset_s(audio)  # the pre-roll the STT worker decodes from: 0.3 s
        clip = np.concatenate([silence(0.3), audio, silence(0.15)])

        heard = [decode(engines, clip, onset, s, PARTIAL_BEAM, prompt) for s in PARTIALS_S]
        final = decode(engines, clip, onset, None, FINAL_BEAM, prompt)
        finals.append((kind, final))
        shown = " | ".join(f"{h.text!r} {h.logprob:.2f}" for h in (*heard, final))
        print(f"{kind:8} {text[:24]:24} {voice:11} {shown}", flush=True)
    engines.close()

    print("\nfinals taken for no words (up to 3 words, mean token log-probability below):")
    for threshold in THRESHOLDS:
        strict = Backchannels(judge.phrases, 1.0, threshold)
        counts = []
        for kind in ("ack", "wordless", "int"):
            of_kind = [h for k, h in finals if k == kind]
            cancel = sum(
                1
                for h in of_kind
                if strict.heard_surely(h.text, h.logprob) and not strict.is_acknowledgement(h.text)
            )
            counts.append(f"{kind} cancelling {cancel}/{len(of_kind)}")
        print(f"  {threshold:5.2f}: " + ", ".join(counts))


if __name__ == "__main__":
    main()
