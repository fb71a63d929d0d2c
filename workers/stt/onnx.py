"""ONNX Runtime sessions for the small per-chunk models (VAD, end of turn)."""

from __future__ import annotations

import onnxruntime as ort


def small_model_session(path: str) -> ort.InferenceSession:
    """A single-threaded CPU session.

    These models are tiny and called from many sessions at once: more threads would only
    contend with Whisper for the same cores.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
