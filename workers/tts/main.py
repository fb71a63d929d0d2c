"""TTS worker: tts.request (one sentence) -> speech, streamed to the gateway in chunks."""

from __future__ import annotations

import asyncio
import time

import structlog

from fleet import telemetry
from fleet.contracts import AudioOut, TtsRequest, TurnFailed
from fleet.errors import ErrorCode
from fleet.topology import Route
from fleet.worker import Runtime, run_worker
from workers.tts.chunks import speech_chunks
from workers.tts.providers import SpeechSynthesizer, create_synthesizer

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
        log.info("sentence_started", sentence=request.sentence)
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
            # A request the provider cannot voice (unknown voice, say) is the caller's error:
            # the sentence is skipped so the turn still plays in order, and the client is told.
            telemetry.ERRORS.labels("tts", ErrorCode.TTS_FAILED).inc()
            log.error("sentence_failed", error=str(exc))
            await bus.publish(
                TurnFailed(request.session_id, request.turn, "tts", ErrorCode.TTS_FAILED, str(exc))
            )
            await bus.publish(
                AudioOut(request.session_id, request.turn, request.sentence, chunk, True, b"")
            )
        finally:
            turns.release(request.session_id, superseded)


def run() -> None:
    async def serve(runtime: Runtime) -> None:
        synthesizer = await asyncio.to_thread(create_synthesizer, runtime.settings)
        log.info(
            "tts_provider_loaded",
            provider=synthesizer.name,
            version=synthesizer.version,
            sample_rate=synthesizer.sample_rate,
        )
        worker = TtsWorker(runtime, synthesizer)
        await runtime.serve_jobs(
            Route.TTS_JOBS, TtsRequest, worker.handle, runtime.settings.tts_concurrency
        )

    run_worker("tts", serve)
