"""`VF_TTS_PROVIDERS`: an ordered list of providers, a circuit breaker each, and failover.

A sentence goes to the first provider that is usable: not refused for its version, not in its
breaker's cool-down, and (for one that was away or failed) healthy on a fresh check. When it fails
(unreachable, timed out, broken off mid-way), its breaker opens for ``VF_TTS_BREAKER_COOLDOWN_S``
and the sentence is spoken again, from its start, by the next provider.

No half sentence is sent twice, and none is lost: a provider that has another behind it is
*buffered*; its audio for the sentence is passed on only once it has all arrived, so a failure
mid-way discards what came and the next provider speaks the whole sentence. The last usable
provider streams straight through, since nothing could take over from it anyway. Buffering costs
little first-byte time with the engines we ship: Kokoro synthesizes a sentence as one part and
Piper one part per sentence, so their first byte is the end of the sentence's synthesis in any
case; what buffering adds is the transfer of the rest of the sentence (docs/tts-providers.md).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import structlog
from prometheus_client import Counter, Gauge, Histogram

from fleet.audio import OUTPUT_SAMPLE_RATE, PcmStreamResampler
from workers.tts.providers.base import ProviderUnavailable, SpeechSynthesizer
from workers.tts.providers.versions import IncompatibleProvider

log = structlog.get_logger(__name__)

ACTIVE = Gauge(
    "vf_tts_provider_active", "1 for the provider that spoke the last sentence.", ["provider"]
)
FAILOVERS = Counter(
    "vf_tts_failovers_total", "Sentences a provider failed and the next one spoke.", ["provider"]
)
REFUSED = Gauge(
    "vf_tts_provider_refused",
    "1 while a provider is refused for a version outside VF_TTS_PROVIDER_VERSION_MIN/_MAX.",
    ["provider"],
)
FIRST_BYTE = Histogram(
    "vf_tts_provider_first_byte_seconds",
    "A provider's time from request to its first audio.",
    ["provider"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0),
)


@dataclass
class Candidate:
    """One entry of the list: its synthesizer, its health check (None: nothing to check, as
    for an in-process engine) and its breaker."""

    label: str
    synthesizer: SpeechSynthesizer
    check: Callable[[], Awaitable[None]] | None = None
    closed_until: float = 0.0
    needs_check: bool = True
    refused: str = ""
    down: str = ""
    cooldown_s: float = 10.0

    async def usable(self) -> bool:
        if time.monotonic() < self.closed_until:
            return False
        if self.needs_check and self.check is not None:
            try:
                await self.check()
            except IncompatibleProvider as exc:
                self.refused, self.down = str(exc), ""
                REFUSED.labels(self.label).set(1)
                self.closed_until = time.monotonic() + self.cooldown_s
                log.error("tts_provider_refused", provider=self.label, reason=self.refused)
                return False
            except ProviderUnavailable as exc:
                self.trip(str(exc))
                return False
        self.needs_check, self.refused, self.down = False, "", ""
        REFUSED.labels(self.label).set(0)
        return True

    @property
    def healthy(self) -> bool:
        """As of its last check: not refused, not down, and not awaiting a check."""
        return not (self.refused or self.down or (self.needs_check and self.check is not None))

    def trip(self, reason: str) -> None:
        """Open the breaker: skip this provider for the cool-down, then check it again."""
        self.down, self.needs_check = reason, True
        self.closed_until = time.monotonic() + self.cooldown_s
        log.warning("tts_provider_down", provider=self.label, reason=reason)


class ProviderChain:
    """`SpeechSynthesizer` over the candidates, in order; audio comes out at the wire's rate."""

    name = "chain"
    sample_rate = OUTPUT_SAMPLE_RATE

    def __init__(self, candidates: list[Candidate]) -> None:
        if not candidates:
            raise ValueError("VF_TTS_PROVIDERS names no provider")
        self.candidates = candidates
        self.active = candidates[0]

    @property
    def version(self) -> str:
        return ", ".join(f"{c.label} {c.synthesizer.version}" for c in self.candidates)

    async def ready(self) -> bool:
        """Whether some provider can speak now (checking those due for a check)."""
        return any([await candidate.usable() for candidate in self.candidates])

    def problems(self) -> list[str]:
        """Why no provider can speak, for /readyz; empty while one can."""
        if any(c.healthy for c in self.candidates):
            return []
        return [
            f"tts provider {c.label}: {c.refused or c.down or 'not checked yet'}"
            for c in self.candidates
        ]

    async def stream(self, text: str, voice: str) -> AsyncIterator[bytes]:
        failures: list[str] = []
        for index, candidate in enumerate(self.candidates):
            if not await candidate.usable():
                continue
            fallback = any(not c.refused for c in self.candidates[index + 1 :])
            started = time.perf_counter()
            first = True
            held: list[bytes] = []
            try:
                async for pcm in self._wire_rate(candidate.synthesizer, text, voice):
                    if first:
                        FIRST_BYTE.labels(candidate.label).observe(time.perf_counter() - started)
                        first = False
                    if fallback:
                        held.append(pcm)
                    else:
                        self._activate(candidate)
                        yield pcm
            except ProviderUnavailable as exc:
                candidate.trip(str(exc))
                FAILOVERS.labels(candidate.label).inc()
                failures.append(f"{candidate.label}: {exc}")
                log.warning(
                    "tts_failover",
                    provider=candidate.label,
                    discarded_bytes=sum(map(len, held)),
                    error=str(exc),
                )
                if not fallback:
                    raise
                continue
            self._activate(candidate)
            for pcm in held:
                yield pcm
            return
        raise ProviderUnavailable(
            "no TTS provider could speak: " + ("; ".join(failures) or "; ".join(self.problems()))
        )

    def _activate(self, candidate: Candidate) -> None:
        if candidate is not self.active:
            ACTIVE.labels(self.active.label).set(0)
            log.info("tts_provider_active", provider=candidate.label, previous=self.active.label)
            self.active = candidate
        ACTIVE.labels(candidate.label).set(1)

    @staticmethod
    async def _wire_rate(
        synthesizer: SpeechSynthesizer, text: str, voice: str
    ) -> AsyncIterator[bytes]:
        rate = synthesizer.sample_rate
        if rate == OUTPUT_SAMPLE_RATE:
            async for pcm in synthesizer.stream(text, voice):
                yield pcm
            return
        resampler = PcmStreamResampler(rate, OUTPUT_SAMPLE_RATE)
        async for pcm in synthesizer.stream(text, voice):
            if converted := resampler.feed(pcm):
                yield converted
        if tail := resampler.finish():
            yield tail
