"""The audio formats of the fleet, and PCM helpers shared by the gateway and the workers.

The wire format everywhere is PCM16 little-endian mono; models want float32 in [-1, 1].
"""

from __future__ import annotations

from functools import lru_cache
from math import gcd

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]

INPUT_SAMPLE_RATE = 16000
"""What clients send and STT consumes."""

OUTPUT_SAMPLE_RATE = 24000
"""What TTS produces and clients play."""

_INT16_SCALE = 32768.0


def pcm16_to_float32(pcm: bytes) -> FloatArray:
    """Decode PCM16 LE bytes; a trailing odd byte (a torn frame) is dropped, not an error."""
    usable = len(pcm) - (len(pcm) % 2)
    samples = np.frombuffer(pcm[:usable], dtype="<i2")
    return (samples.astype(np.float32) / _INT16_SCALE).astype(np.float32)


def float32_to_pcm16(samples: npt.NDArray[np.floating]) -> bytes:
    """Encode float audio as PCM16 LE, clipping instead of wrapping around on overload."""
    scaled = np.clip(np.asarray(samples, dtype=np.float32) * _INT16_SCALE, -32768.0, 32767.0)
    encoded: bytes = np.round(scaled).astype("<i2").tobytes()
    return encoded


@lru_cache(maxsize=16)
def _lowpass_taps(up: int, down: int, zero_crossings: int = 16) -> FloatArray:
    # Windowed-sinc anti-alias/anti-image filter at the lower of the two Nyquist rates, designed
    # at the upsampled rate; the gain of `up` restores the energy lost by zero-stuffing.
    cutoff = 0.5 / max(up, down)
    half = zero_crossings * max(up, down)
    n = np.arange(-half, half + 1, dtype=np.float64)
    taps = 2.0 * cutoff * np.sinc(2.0 * cutoff * n) * np.kaiser(n.size, 8.6)
    taps *= up / taps.sum()
    return taps.astype(np.float32)


def resample(samples: npt.NDArray[np.floating], src_rate: int, dst_rate: int) -> FloatArray:
    """Rational-ratio polyphase resampling (e.g. 24 kHz TTS output to 16 kHz, 16 kHz to 48 kHz)."""
    x = np.asarray(samples, dtype=np.float32)
    if src_rate == dst_rate or x.size == 0:
        return x.copy()
    g = gcd(src_rate, dst_rate)
    up, down = dst_rate // g, src_rate // g
    taps = _lowpass_taps(up, down)
    delay = (taps.size - 1) // 2
    out_len = (x.size * up + down - 1) // down
    # Polyphase: each output sample only needs the taps that land on real (non-stuffed) input
    # samples, so we never materialize the zero-stuffed signal.
    positions = np.arange(out_len, dtype=np.int64) * down + delay
    phases = positions % up
    padded = np.concatenate([np.zeros(taps.size, np.float32), x, np.zeros(taps.size, np.float32)])
    out = np.empty(out_len, dtype=np.float32)
    taps_per_phase = (taps.size + up - 1) // up
    for phase in range(up):
        sel = np.nonzero(phases == phase)[0]
        if sel.size == 0:
            continue
        sub = taps[phase::up]
        # Input index contributing through tap phase + k*up is (position - phase)/up - k.
        base = (positions[sel] - phase) // up + taps.size
        idx = base[:, None] - np.arange(taps_per_phase)[None, : sub.size]
        out[sel] = padded[idx] @ sub
    return out


def silence(seconds: float, sample_rate: int) -> bytes:
    """PCM16 silence of about ``seconds`` (whole samples)."""
    return bytes(int(seconds * sample_rate) * 2)


def split_frames(pcm: bytes, frame_bytes: int) -> list[bytes]:
    """Cut a PCM buffer into frames of `frame_bytes` (the last one may be shorter)."""
    if frame_bytes <= 0 or frame_bytes % 2:
        raise ValueError("frame_bytes must be a positive, even number of bytes")
    return [pcm[i : i + frame_bytes] for i in range(0, len(pcm), frame_bytes)]


def resample_pcm16(pcm: bytes, src_rate: int, dst_rate: int) -> bytes:
    return float32_to_pcm16(resample(pcm16_to_float32(pcm), src_rate, dst_rate))
