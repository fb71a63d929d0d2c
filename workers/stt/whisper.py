"""faster-whisper behind the SpeechRecognizer protocol.

`WhisperModel.transcribe` always pads the log-mel features to Whisper's 30 s window, so the
encoder costs the same for a 1 s partial as for 30 s of speech (~0.65 s of the ~0.7 s a short
decode takes here, with Whisper base int8 on 2 cores). CTranslate2 accepts a shorter input, and
the streaming transcriber never decodes more than `stt_window_s` (6 s) at once, so clips that fit
are padded only to a short window instead (`short_window_s`, 10 s: ~0.08 s of encoder) and
decoded with the same prompt, options and no-speech rule as `transcribe` uses. Longer clips take
the ordinary `transcribe` path.

The window is fixed, not fitted to each clip: measured on Kokoro sentences, windows of 10-20 s
give the same words as the 30 s one for whole sentences (beam 5), while windows fitted to the
clip (3-5 s) made Whisper base drop most of a sentence or loop on one word. A decode that still
looks degenerate (text that compresses too well, as `transcribe`'s own fallback rule) is redone
on the full window.
"""

from __future__ import annotations

from math import ceil

import ctranslate2
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import get_compression_ratio, get_suppressed_tokens

from fleet.audio import FloatArray
from workers.stt.engines import Recognized

# The same thresholds `WhisperModel.transcribe` defaults to: a window is treated as silence
# when the model says "no speech" and is also unsure of the text it produced.
_NO_SPEECH_THRESHOLD = 0.6
_LOG_PROB_THRESHOLD = -1.0
_COMPRESSION_RATIO_THRESHOLD = 2.4
# Seconds of padding the clip always gets inside the short window: a decode whose audio reaches
# the very end of its window tends to drop or invent the last word.
_MIN_TRAILING_PAD_S = 2.0
# Tokens a short-window decode may write, per second of audio and in all: about twice what the
# fastest speech needs. Primed with acknowledgements, a partial cut mid-word sometimes runs
# away in a loop ("Cool. Cool. Cool. ..." for 0.7 s of "Cool."): measured, 224 tokens and 4-9 s
# of the one decode thread every session shares, unless cut short here.
_TOKENS_PER_S = 12
_MOST_TOKENS_EXTRA = 8


class WhisperRecognizer:
    def __init__(
        self,
        location: str,
        *,
        device: str,
        compute_type: str,
        cpu_threads: int,
        short_window_s: float = 10.0,
    ) -> None:
        self._model = WhisperModel(
            location, device=device, compute_type=compute_type, cpu_threads=cpu_threads
        )
        extractor = self._model.feature_extractor
        self._frames_per_s = extractor.sampling_rate // extractor.hop_length  # 100
        self._sample_rate = extractor.sampling_rate
        self._short_frames = round(short_window_s * self._frames_per_s)
        self._tokenizers: dict[str, Tokenizer] = {}
        self._suppress: dict[str, list[int]] = {}

    def transcribe(
        self, audio: FloatArray, *, language: str, beam_size: int, prompt: str
    ) -> Recognized:
        audio = np.asarray(audio, dtype=np.float32)
        needed = audio.size / self._sample_rate + _MIN_TRAILING_PAD_S
        if self._short_frames and needed * self._frames_per_s <= self._short_frames:
            heard = self._transcribe_short(
                audio, language=language, beam_size=beam_size, prompt=prompt
            )
            if heard is not None and (
                get_compression_ratio(heard.text) <= _COMPRESSION_RATIO_THRESHOLD
            ):
                return heard
        return self._transcribe_full(audio, language=language, beam_size=beam_size, prompt=prompt)

    def _transcribe_full(
        self, audio: FloatArray, *, language: str, beam_size: int, prompt: str
    ) -> Recognized:
        segments, _info = self._model.transcribe(
            audio,
            language=language,
            beam_size=beam_size,
            # One pass only: the temperature fallback can re-decode several times, which costs
            # more latency than a rare low-confidence segment is worth in a live conversation.
            temperature=0.0,
            vad_filter=False,
            condition_on_previous_text=False,
            without_timestamps=True,
            initial_prompt=prompt or None,
        )
        # The generator does the actual decoding, so it must be drained here, in the caller's
        # (executor) thread, not lazily on the event loop.
        decoded = list(segments)
        tokens = sum(len(segment.tokens) for segment in decoded)
        logprob = (
            sum(segment.avg_logprob * len(segment.tokens) for segment in decoded) / tokens
            if tokens
            else 0.0
        )
        return Recognized("".join(segment.text for segment in decoded).strip(), logprob, tokens)

    def _transcribe_short(
        self, audio: FloatArray, *, language: str, beam_size: int, prompt: str
    ) -> Recognized | None:
        """None: the decode ran away (wrote as many tokens as it may)."""
        model = self._model
        tokenizer = self._tokenizer(language)
        features = model.feature_extractor(audio)
        frames = self._short_frames
        padded = np.zeros((1, features.shape[0], frames), dtype=np.float32)
        used = min(frames, features.shape[-1])
        padded[0, :, :used] = features[:, :used]
        encoded = model.model.encode(ctranslate2.StorageView.from_array(padded))

        # The prompt `transcribe` builds for one window without timestamps.
        tokens: list[int] = []
        if prompt.strip():
            previous = tokenizer.encode(" " + prompt.strip())
            tokens = [tokenizer.sot_prev, *previous[-(model.max_length // 2 - 1) :]]
        tokens += [*tokenizer.sot_sequence, tokenizer.no_timestamps]
        most = _MOST_TOKENS_EXTRA + ceil(_TOKENS_PER_S * audio.size / self._sample_rate)

        result = model.model.generate(
            encoded,
            [tokens],
            beam_size=beam_size,
            patience=1.0,
            length_penalty=1.0,
            # CTranslate2 counts the prompt in the length (give or take a token).
            max_length=min(model.max_length, len(tokens) + most + 2),
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=self._suppress[language],
        )[0]
        ids = result.sequences_ids[0]
        if len(ids) >= most:
            return None
        avg_logprob = result.scores[0] * len(ids) / (len(ids) + 1)
        if result.no_speech_prob > _NO_SPEECH_THRESHOLD and avg_logprob <= _LOG_PROB_THRESHOLD:
            return Recognized("")
        return Recognized(str(tokenizer.decode(ids)).strip(), avg_logprob, len(ids))

    def _tokenizer(self, language: str) -> Tokenizer:
        tokenizer = self._tokenizers.get(language)
        if tokenizer is None:
            tokenizer = Tokenizer(
                self._model.hf_tokenizer,
                self._model.model.is_multilingual,
                task="transcribe",
                language=language,
            )
            self._tokenizers[language] = tokenizer
            self._suppress[language] = list(get_suppressed_tokens(tokenizer, [-1]) or ())
        return tokenizer
