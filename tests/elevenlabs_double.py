"""A stand-in for ElevenLabs' streaming text-to-speech endpoint, which tests cannot reach.

It speaks the real wire format (``POST /v1/text-to-speech/{voice_id}/stream?output_format=...``,
the key in ``xi-api-key``, raw PCM16 LE mono streamed back for the ``pcm_*`` formats, errors as
``{"detail": {"status": ..., "message": ...}}``) and makes its audio with Kokoro in this process,
so what it streams is real speech: one voice id stands for one Kokoro voice.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator

import uvicorn
from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from fleet.settings import Settings
from tests.fleet_processes import free_port
from workers.tts.providers import SpeechSynthesizer, create_synthesizer

API_KEY = "sk_test_double"
# Two of ElevenLabs' premade voice ids (Rachel, Adam), as Kokoro voices.
VOICES = {"21m00Tcm4TlvDq8ikWAM": "af_heart", "pNInz6obpgDQGcFmaJgB": "am_adam"}


def double_app(kokoro: SpeechSynthesizer, requests: list[dict[str, object]]) -> FastAPI:
    app = FastAPI()

    def error(status: int, code: str, message: str) -> JSONResponse:
        return JSONResponse({"detail": {"status": code, "message": message}}, status_code=status)

    @app.post("/v1/text-to-speech/{voice_id}/stream", response_model=None)
    async def stream(
        voice_id: str,
        request: Request,
        output_format: str = "mp3_44100_128",
        xi_api_key: str = Header(""),
    ) -> Response:
        body = await request.json()
        requests.append({"voice_id": voice_id, "output_format": output_format, **body})
        if xi_api_key != API_KEY:
            return error(401, "invalid_api_key", "Invalid API key")
        if voice_id not in VOICES:
            return error(404, "voice_not_found", f"A voice with voice_id {voice_id} was not found.")
        if output_format != "pcm_24000":
            return error(400, "invalid_output_format", f"{output_format} is not served here")

        async def audio() -> AsyncIterator[bytes]:
            async for pcm in kokoro.stream(str(body["text"]), VOICES[voice_id]):
                # The real service sends small chunks, not cut on sample boundaries.
                for start in range(0, len(pcm), 4095):
                    yield pcm[start : start + 4095]

        return StreamingResponse(audio(), media_type="application/octet-stream")

    return app


@contextlib.contextmanager
def elevenlabs_double() -> Iterator[tuple[str, list[dict[str, object]]]]:
    """The double on a loopback port: its base URL and the requests it got."""
    requests: list[dict[str, object]] = []
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            double_app(create_synthesizer(Settings()), requests),
            host="127.0.0.1",
            port=port,
            log_config=None,
        )
    )
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    try:
        while not server.started:
            threading.Event().wait(0.05)
        yield f"http://127.0.0.1:{port}", requests
    finally:
        server.should_exit = True
        thread.join(10)
