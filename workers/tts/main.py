"""TTS worker: tts.request (one sentence) -> speech, streamed to the gateway in chunks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import structlog

from fleet import telemetry
from fleet.audio import OUTPUT_SAMPLE_RATE, resample_pcm16
from fleet.contracts import AudioOut, TtsRequest, TurnFailed
from fleet.errors import ErrorCode
from fleet.topology import Route
from fleet.worker import Runtime, run_worker
from workers.tts.chunks import fixed_chunks, pause_after
from workers.tts.providers import SpeechSynthesizer, create_synthesizer

log = structlog.get_logger(__name__)


class TtsWorker:
    def __init__(self, runtime: Runtime, synthesizer: SpeechSynthesizer) -> None:
        self.runtime = runtime
        self.synthesizer = synthesizer
        self.settings = runtime.settings
        self.chunk_bytes = OUTPUT_SAMPLE_RATE * self.settings.tts_chunk_ms // 1000 * 2

    async def _speech(self, request: TtsRequest) -> AsyncIterator[bytes]:
        voice = request.voice or self.settings.tts_voice
        rate = self.synthesizer.sample_rate
        async for pcm in self.synthesizer.stream(request.text, voice):
            yield (
                pcm if rate == OUTPUT_SAMPLE_RATE else resample_pcm16(pcm, rate, OUTPUT_SAMPLE_RATE)
            )
        yield bytes(int(pause_after(request.text) * OUTPUT_SAMPLE_RATE) * 2)

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
        try:
            async for pcm, last in fixed_chunks(self._speech(request), self.chunk_bytes):
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
        worker = TtsWorker(runtime, synthesizer)
        await runtime.serve_jobs(
            Route.TTS_JOBS, TtsRequest, worker.handle, runtime.settings.tts_concurrency
        )

    run_worker("tts", serve)
