"""Per-connection limits of the gateway, decided without I/O (docs/security.md, "Limits")."""

from __future__ import annotations

from collections import Counter

from fleet.audio import INPUT_SAMPLE_RATE

_BYTES_PER_SECOND = INPUT_SAMPLE_RATE * 2
# A frame counts at least this long, so that a flood of tiny frames (each one a broker message)
# is held to the same rate as audio.
MIN_FRAME_CHARGE_S = 0.010


class AudioRate:
    """A token bucket over seconds of audio: ``rate`` seconds of audio per second sustained,
    ``burst`` seconds at once. Starts full."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._at = now

    def spend(self, frame_bytes: int, now: float) -> bool:
        """Take one frame's audio from the bucket; False when there is not enough."""
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        cost = max(frame_bytes / _BYTES_PER_SECOND, MIN_FRAME_CHARGE_S)
        if cost > self._tokens:
            return False
        self._tokens -= cost
        return True


class ConnectionsPerAddress:
    """Counts the open connections of each client address against a cap."""

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._open: Counter[str] = Counter()

    def admit(self, address: str) -> bool:
        if self._open[address] >= self._cap:
            return False
        self._open[address] += 1
        return True

    def release(self, address: str) -> None:
        self._open[address] -= 1
        if self._open[address] <= 0:
            del self._open[address]

    def __len__(self) -> int:
        return len(self._open)
