"""The gateway: FastAPI app with /ws/audio, the browser client, health and metrics."""

from __future__ import annotations

import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import FrameType

import uvicorn
from fastapi import FastAPI, WebSocket
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from fleet import telemetry
from fleet.settings import Settings, get_settings
from gateway.hub import Hub
from gateway.session import ClientConnection

STATIC_DIR = Path(__file__).parent / "static"


def create_app(settings: Settings, gateway_id: str) -> FastAPI:
    hub = Hub(settings, gateway_id)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await hub.start()
        try:
            yield
        finally:
            await hub.stop()

    app = FastAPI(title="voicefleet gateway", lifespan=lifespan)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "gateway": gateway_id}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        ready, checks = await hub.ready()
        return JSONResponse(
            {"status": "ready" if ready else "not ready", **checks},
            status_code=200 if ready else 503,
        )

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.websocket("/ws/audio")
    async def ws_audio(websocket: WebSocket) -> None:
        await websocket.accept()
        await ClientConnection(websocket, hub, settings).serve()

    return app


def _exit_drained(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def run() -> None:
    settings = get_settings()
    gateway_id = telemetry.configure_logging(settings, "gateway")
    # uvicorn shuts down gracefully on SIGTERM (clients get close 1012 and can reconnect to
    # another gateway), then re-raises the signal into the handler it found: exit 0, drained.
    signal.signal(signal.SIGTERM, _exit_drained)
    config = uvicorn.Config(
        create_app(settings, gateway_id),
        host=settings.gateway_host,
        port=settings.gateway_port,
        log_config=None,
        # Above our own limits, so an oversized frame gets a protocol error event and close code
        # from the session rather than a bare close from the server.
        ws_max_size=max(1 << 20, 4 * max(settings.max_frame_bytes, settings.max_text_bytes)),
        timeout_graceful_shutdown=int(settings.drain_timeout_s),
        # The client address the per-address limit counts comes from these proxies' headers.
        proxy_headers=True,
        ws_ping_interval=settings.ws_ping_interval_s,
        ws_ping_timeout=settings.ws_ping_interval_s,
        forwarded_allow_ips=settings.trusted_proxies,
    )
    server = uvicorn.Server(config)
    if not settings.send_buffer_bytes:
        server.run()
        return
    # Connections inherit the listening socket's send buffer: what a client that stops reading
    # can hold in the kernel (VF_SEND_BUFFER_BYTES).
    listener = config.bind_socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, settings.send_buffer_bytes)
    server.run(sockets=[listener])
