"""TTS worker: tts.request (one sentence) -> speech, streamed to the gateway in chunks."""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog

from fleet import telemetry
from fleet.contracts import AudioOut, TtsRequest, TurnFailed
from fleet.deadlines import Rank, tts_rank
from fleet.errors import ErrorCode
from fleet.state import TtsOffers
from fleet.topology import Route
from fleet.worker import Runtime, run_worker
from workers.tts.chunks import speech_chunks
from workers.tts.offer import publish_offers
from workers.tts.providers import SpeechSynthesizer, speaking_synthesizer
from workers.tts.providers.chain import ProviderChain

log = structlog.get_logger(__name__)


class TtsWorker:
    def __init__(self, runtime: Runtime, synthesizer: SpeechSynthesizer) -> None:
        self.runtime = runtime
        self.synthesizer = synthesizer
        self.settings = runtime.settings

    async def handle(self, request: TtsRequest) -> None:
        turns = self.runtime.turns
        bus = self.runtime.bus
        if await turns.is_stale(request.session_id, request.turn):
            telemetry.STALE_SKIPPED.labels("tts").inc()
            return
        superseded = turns.superseded(request.session_id, request.turn)
        # How late synthesis starts against the piece's deadline (a first piece: the time since it
        # was sent, queueing included); negative = early.
        late_s = round(time.time() - request.deadline, 3) if request.deadline > 0 else None
        log.info("sentence_started", sentence=request.sentence, late_s=late_s)
        started = time.perf_counter()
        chunk = 0
        voice = request.voice or self.settings.tts_voice
        try:
            async for pcm, last in speech_chunks(
                self.synthesizer, request.text, voice, self.settings.tts_chunk_ms
            ):
                if superseded.is_set():
                    telemetry.STALE_SKIPPED.labels("tts").inc()
                    log.info("sentence_cancelled", sentence=request.sentence, chunks_sent=chunk)
                    return
                if chunk == 0:
                    telemetry.TTS_FIRST_BYTE.observe(time.perf_counter() - started)
                await bus.publish(
                    AudioOut(
                        request.session_id,
                        request.turn,
                        request.sentence,
                        chunk,
                        last,
                        pcm,
                        request.text if chunk == 0 else "",
                    )
                )
                chunk += 1
        except ValueError as exc:
            # A request the provider cannot voice (unknown voice, say) is the caller's error.
            log.error("sentence_failed", error=str(exc))
            await self.give_up(request, str(exc))
        finally:
            turns.release(request.session_id, superseded)

    async def give_up(self, request: TtsRequest, reason: str) -> None:
        """The sentence is skipped, so that the turn still plays in order, and the client told."""
        telemetry.ERRORS.labels("tts", ErrorCode.TTS_FAILED).inc()
        await self.runtime.bus.publish(
            TurnFailed(
                request.session_id,
                request.turn,
                "tts",
                ErrorCode.TTS_FAILED,
                reason,
                sentence=request.sentence,
            )
        )

    async def gave_up(self, request: TtsRequest) -> None:
        await self.give_up(request, f"sentence {request.sentence} failed on every attempt")


def piece_rank(request: TtsRequest, received: float) -> Rank:
    """Held pieces are served first pieces first, then earliest deadline (fleet/deadlines.py)."""
    return tts_rank(request.sentence, request.deadline, received)


# Spoken once at start, before the worker takes jobs.
WARM_UP_TEXT = "Hello."


async def warm_up(synthesizer: SpeechSynthesizer, voice: str) -> None:
    """Synthesize one short sentence, so that ready means able to speak.

    Some of what synthesis needs loads only on first use: Kokoro's phonemizer loads espeak-ng
    from a copy it writes to the temporary directory, which fails where that directory does not
    allow executables (a tmpfs mounted noexec, as Docker's --tmpfs is by default). Failing here
    keeps the worker from ever reporting ready, instead of taking every sentence and failing it.
    Raises SystemExit(1) after logging `tts_warm_up_failed`.
    """
    started = time.perf_counter()
    try:
        async for _ in synthesizer.stream(WARM_UP_TEXT, voice):
            pass
    except Exception as exc:
        log.error(
            "tts_warm_up_failed",
            provider=synthesizer.name,
            error=f"{type(exc).__name__}: {exc}",
            hint="the temporary directory (TMPDIR, else /tmp) must be writable and allow "
            "executables; the default voice (VF_TTS_VOICE) must exist",
        )
        raise SystemExit(1) from exc
    log.info("tts_warmed_up", seconds=round(time.perf_counter() - started, 3))


async def probe_providers(chain: ProviderChain, runtime: Runtime) -> None:
    """Check the providers that are due a check (at start, and each cool-down after one failed
    or was refused) until SIGTERM; returns once some provider can speak, the first time."""
    reported = False
    while not runtime.stopping.is_set():
        if await chain.ready():
            return
        if not reported:
            log.error("tts_no_provider_ready", problems=chain.problems())
            reported = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(runtime.stopping.wait(), PROBE_INTERVAL_S)


async def keep_probing(chain: ProviderChain, runtime: Runtime) -> None:
    while not runtime.stopping.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(runtime.stopping.wait(), PROBE_INTERVAL_S)
        await chain.ready()


# How often providers are looked at; each is checked only when its breaker's cool-down is over.
PROBE_INTERVAL_S = 1.0


def run() -> None:
    async def serve(runtime: Runtime) -> None:
        synthesizer = await asyncio.to_thread(speaking_synthesizer, runtime.settings)
        # What it speaks with, for the gateway's voice check and page (workers/tts/offer.py).
        offering = asyncio.create_task(
            publish_offers(
                synthesizer,
                runtime.worker_id,
                TtsOffers(runtime.store.redis, runtime.settings),
                runtime.stopping,
            )
        )
        try:
            await _serve(runtime, synthesizer)
        finally:
            offering.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await offering

    async def _serve(runtime: Runtime, synthesizer: SpeechSynthesizer) -> None:
        probing: asyncio.Task[None] | None = None
        if isinstance(synthesizer, ProviderChain):
            runtime.readiness_checks.append(synthesizer.problems)
            await probe_providers(synthesizer, runtime)
            if runtime.stopping.is_set():
                return
            probing = asyncio.create_task(keep_probing(synthesizer, runtime))
        log.info(
            "tts_provider_loaded",
            provider=synthesizer.name,
            version=synthesizer.version,
            sample_rate=synthesizer.sample_rate,
        )
        await warm_up(synthesizer, runtime.settings.tts_voice)
        worker = TtsWorker(runtime, synthesizer)
        try:
            await runtime.serve_jobs(
                Route.TTS_JOBS,
                TtsRequest,
                worker.handle,
                runtime.settings.tts_concurrency,
                gave_up=worker.gave_up,
                prefetch=runtime.settings.tts_prefetch,
                rank=piece_rank,
            )
        finally:
            if probing is not None:
                probing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await probing

    run_worker("tts", serve)
