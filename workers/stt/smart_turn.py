"""Smart Turn v3 (ONNX): is the speaker done, judged from the last 8 s of their speech."""

from __future__ import annotations

import numpy as np
from faster_whisper.feature_extractor import FeatureExtractor

from fleet.audio import INPUT_SAMPLE_RATE, FloatArray
from workers.stt.onnx import small_model_session

_SECONDS = 8
_SAMPLES = _SECONDS * INPUT_SAMPLE_RATE
_FRAMES = 800  # 10 ms hops over 8 s
_NORM_EPS = 1e-7


class SmartTurn:
    def __init__(self, path: str) -> None:
        self._session = small_model_session(path)
        self._features = FeatureExtractor(feature_size=80, chunk_length=_SECONDS)

    def predict(self, audio: FloatArray) -> float:
        clip = np.asarray(audio, dtype=np.float32)[-_SAMPLES:]
        # The model was trained on the end of the turn aligned with the end of the window, so
        # short turns are padded in front, never behind.
        clip = np.pad(clip, (_SAMPLES - clip.size, 0))
        # Whisper-style zero-mean/unit-variance waveform normalization, as in training.
        clip = ((clip - clip.mean()) / np.sqrt(clip.var() + _NORM_EPS)).astype(np.float32)
        features = self._features(clip, padding=0)[:, :_FRAMES].astype(np.float32)
        (output,) = self._session.run(None, {"input_features": features[None]})
        # The exported graph ends in a sigmoid: the output is already a probability.
        return float(np.asarray(output).reshape(-1)[0])
