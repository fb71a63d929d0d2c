"""Streaming Silero VAD v6 (ONNX): one shared session, recurrent state per audio stream."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from fleet.audio import FloatArray
from workers.stt.onnx import small_model_session

_CHUNK = 512  # samples at 16 kHz, the size the v6 model was trained on
_CONTEXT = 64  # trailing samples of the previous chunk that the model expects in front of each
_STATE_SHAPE = (1, 1, 128)


class SileroVad:
    chunk_samples = _CHUNK

    def __init__(self, path: str) -> None:
        self._session = small_model_session(path)

    def stream(self) -> SileroVadStream:
        return SileroVadStream(self._session)


class SileroVadStream:
    def __init__(self, session: ort.InferenceSession) -> None:
        self._session = session
        self._h = np.zeros(_STATE_SHAPE, dtype=np.float32)
        self._c = np.zeros(_STATE_SHAPE, dtype=np.float32)
        self._context = np.zeros(_CONTEXT, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)

    def process(self, samples: FloatArray) -> list[float]:
        audio = np.concatenate([self._pending, samples.astype(np.float32, copy=False)])
        count = audio.size // _CHUNK
        self._pending = audio[count * _CHUNK :]
        if count == 0:
            return []
        chunks = audio[: count * _CHUNK].reshape(count, _CHUNK)
        previous_tails = np.concatenate([self._context[None, :], chunks[:-1, -_CONTEXT:]])
        batch = np.concatenate([previous_tails, chunks], axis=1)
        # The model's first axis is time for its LSTM, so a batch of consecutive chunks in one
        # run gives the same probabilities as one run per chunk, with less call overhead.
        probs, self._h, self._c = self._session.run(
            None, {"input": batch, "h": self._h, "c": self._c}
        )
        self._context = chunks[-1, -_CONTEXT:].copy()
        return [float(p) for p in np.asarray(probs).reshape(-1)]
