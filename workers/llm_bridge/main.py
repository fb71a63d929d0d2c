"""LLM bridge worker: turn.request -> chat model stream -> sentences to TTS, text to the gateway."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time

import structlog

from fleet import telemetry
from fleet.contracts import AssistantDelta, TtsRequest, TurnDone, TurnFailed, TurnRequest
from fleet.deadlines import ReplyClock
from fleet.errors import ErrorCode
from fleet.settings import Settings
from fleet.topology import Route
from fleet.worker import Runtime, run_worker
from workers.llm_bridge.chat import ChatError, ChatModel, OpenAICompatibleChat
from workers.llm_bridge.conversation import build_messages
from workers.llm_bridge.sentences import SentenceBuffer

log = structlog.get_logger(__name__)


def reply_seed(request: TurnRequest) -> int:
    """The same seed every time this turn is attempted (see ChatModel.stream)."""
    digest = hashlib.sha256(f"{request.session_id}:{request.turn}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


class LlmBridge:
    def __init__(self, runtime: Runtime, chat: ChatModel) -> None:
        self.runtime = runtime
        self.chat = chat
        self.settings = runtime.settings

    async def handle(self, request: TurnRequest) -> None:
        turns = self.runtime.turns
        if await turns.is_stale(request.session_id, request.turn):
            telemetry.STALE_SKIPPED.labels("llm").inc()
            log.info("stale_turn_skipped")
            return
        log.info("turn_started")
        superseded = turns.superseded(request.session_id, request.turn)
        reply = asyncio.create_task(self._stream_reply(request))
        cancelled = asyncio.create_task(superseded.wait())
        try:
            await asyncio.wait({reply, cancelled}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            turns.release(request.session_id, superseded)
            cancelled.cancel()
        if not reply.done():
            # Cancelling the task closes the HTTP stream, so the model server frees the slot now.
            reply.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reply
            telemetry.STALE_SKIPPED.labels("llm").inc()
            log.info("turn_cancelled_mid_stream")
            return
        reply.result()

    async def _stream_reply(self, request: TurnRequest) -> None:
        bus = self.runtime.bus
        history = await self.runtime.store.history(request.session_id)
        messages = build_messages(self.settings.llm_system_prompt, history, request.text)
        sentences = SentenceBuffer(
            self.settings.llm_first_clause_chars,
            first_piece_words=self.settings.llm_first_piece_words,
        )
        started = time.perf_counter()
        spoken: list[str] = []
        deltas_sent = 0
        clock = ReplyClock(self.settings.tts_speed)

        async def speak(pieces: list[str]) -> None:
            for piece in pieces:
                if not spoken:
                    telemetry.LLM_FIRST_SENTENCE.observe(time.perf_counter() - started)
                await bus.publish(
                    TtsRequest(
                        request.session_id,
                        request.turn,
                        len(spoken),
                        piece,
                        request.voice,
                        deadline=clock.deadline(piece),
                    )
                )
                spoken.append(piece)

        try:
            async with contextlib.aclosing(
                self.chat.stream(
                    messages,
                    max_tokens=self.settings.llm_max_tokens,
                    temperature=self.settings.llm_temperature,
                    seed=reply_seed(request),
                    on_first_token=telemetry.LLM_FIRST_TOKEN.observe,
                )
            ) as deltas:
                async for delta in deltas:
                    await bus.publish(
                        AssistantDelta(request.session_id, request.turn, deltas_sent, delta)
                    )
                    deltas_sent += 1
                    await speak(sentences.push(delta))
            await speak(sentences.flush())
        except ChatError as exc:
            log.error("chat_failed", error=str(exc))
            await self.tell_failed(request, str(exc))
            # What was already sent to TTS still plays; the turn ends after it.
        await bus.publish(TurnDone(request.session_id, request.turn, " ".join(spoken), len(spoken)))
        log.info("turn_streamed", sentences=len(spoken), seconds=time.perf_counter() - started)

    async def tell_failed(self, request: TurnRequest, reason: str) -> None:
        telemetry.ERRORS.labels("llm", ErrorCode.LLM_FAILED).inc()
        await self.runtime.bus.publish(
            TurnFailed(request.session_id, request.turn, "llm", ErrorCode.LLM_FAILED, reason)
        )

    async def gave_up(self, request: TurnRequest) -> None:
        """The turn gets no (more) reply; the client is told, and its next words start a turn."""
        await self.tell_failed(request, "the reply failed on every attempt")


def chat_model(settings: Settings) -> OpenAICompatibleChat:
    """The chat endpoint the settings name (VF_LLM_URL, _MODEL, _API_KEY, _TIMEOUT_S)."""
    return OpenAICompatibleChat(
        base_url=settings.llm_url,
        model=settings.llm_model,
        api_key=settings.llm_api_key,
        timeout=settings.llm_timeout_s,
    )


def run() -> None:
    async def serve(runtime: Runtime) -> None:
        settings = runtime.settings
        bridge = LlmBridge(runtime, chat_model(settings))
        await runtime.serve_jobs(
            Route.LLM_TURNS,
            TurnRequest,
            bridge.handle,
            settings.llm_concurrency,
            gave_up=bridge.gave_up,
        )

    run_worker("llm", serve)
