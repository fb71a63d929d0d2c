"""Resampling between the fleet's rates keeps what is audible and removes what cannot be kept."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np

from fleet.audio import (
    INPUT_SAMPLE_RATE,
    OUTPUT_SAMPLE_RATE,
    FloatArray,
    resample,
    whole_samples,
)


def tone(freq: float, rate: int, seconds: float = 1.0) -> FloatArray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_a_tone_keeps_its_duration_and_shape_across_rates() -> None:
    for src, dst in [(22050, OUTPUT_SAMPLE_RATE), (OUTPUT_SAMPLE_RATE, INPUT_SAMPLE_RATE)]:
        out = resample(tone(1000.0, src), src, dst)
        assert out.dtype == np.float32
        assert out.size == dst
        expected = tone(1000.0, dst)
        middle = slice(dst // 10, -dst // 10)  # away from the filter's edges
        assert np.corrcoef(out[middle], expected[middle])[0, 1] > 0.9999


def test_a_tone_above_the_new_nyquist_rate_does_not_alias_into_the_output() -> None:
    # 8.8 kHz cannot exist at 16 kHz; without an anti-alias filter it folds back to 7.2 kHz.
    out = resample(tone(8800.0, OUTPUT_SAMPLE_RATE), OUTPUT_SAMPLE_RATE, INPUT_SAMPLE_RATE)
    middle = out[INPUT_SAMPLE_RATE // 10 : -INPUT_SAMPLE_RATE // 10]
    assert float(np.sqrt(np.mean(middle**2))) < 0.5 * 10 ** (-60 / 20)  # 60 dB down


def test_a_byte_stream_cut_anywhere_is_recut_on_sample_boundaries() -> None:
    async def pieces() -> AsyncIterator[bytes]:
        for piece in (b"\x01", b"\x02\x03", b"", b"\x04\x05\x06", b"\x07"):
            yield piece

    async def collect() -> list[bytes]:
        return [piece async for piece in whole_samples(pieces())]

    recut = asyncio.run(collect())
    assert recut == [b"\x01\x02", b"\x03\x04\x05\x06"]  # the odd last byte is dropped
