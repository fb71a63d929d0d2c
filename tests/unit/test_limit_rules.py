"""The gateway's per-connection limits as pure decisions (gateway/limits.py)."""

from __future__ import annotations

from fleet.settings import Settings
from gateway.limits import AudioRate, ConnectionsPerAddress

FRAME = 3200  # 100 ms of 16 kHz PCM16
DEFAULTS = Settings()


def frames_accepted(rate: AudioRate, count: int, every_s: float, size: int = FRAME) -> int:
    accepted = 0
    for index in range(count):
        if not rate.spend(size, index * every_s):
            break
        accepted += 1
    return accepted


def test_real_time_audio_is_never_refused() -> None:
    rate = AudioRate(DEFAULTS.audio_rate, DEFAULTS.audio_burst_s, 0.0)
    assert frames_accepted(rate, 36_000, 0.1) == 36_000  # an hour


def test_audio_a_little_under_the_rate_is_accepted_sustained() -> None:
    rate = AudioRate(1.5, 10.0, 0.0)
    assert frames_accepted(rate, 10_000, 0.1 / 1.45) == 10_000


def test_sixty_seconds_in_one_second_is_refused_after_the_burst() -> None:
    rate = AudioRate(DEFAULTS.audio_rate, DEFAULTS.audio_burst_s, 0.0)
    accepted = frames_accepted(rate, 600, 1 / 600)
    # The burst, and what the rate adds in the second it took.
    assert 100 <= accepted <= 100 + 15


def test_tiny_frames_count_at_least_ten_milliseconds() -> None:
    rate = AudioRate(1.5, 1.0, 0.0)
    assert 99 <= frames_accepted(rate, 1000, 0.0, size=2) <= 100  # 1 s / 10 ms, to rounding


def test_connections_per_address_are_counted_and_released() -> None:
    per_address = ConnectionsPerAddress(2)
    assert per_address.admit("10.0.0.1") and per_address.admit("10.0.0.1")
    assert not per_address.admit("10.0.0.1")
    assert per_address.admit("10.0.0.2")
    per_address.release("10.0.0.1")
    assert per_address.admit("10.0.0.1")
    for _ in range(2):
        per_address.release("10.0.0.1")
    per_address.release("10.0.0.2")
    assert len(per_address) == 0
