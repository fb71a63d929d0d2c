"""The gateway: FastAPI app with /ws/audio, the browser client, health and metrics."""

from __future__ import annotations

import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import FrameType

import structlog
import uvicorn
from fastapi import FastAPI, HTTPException, Request, WebSocket
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from redis.exceptions import RedisError

from fleet import telemetry
from fleet.engines import accepted_voices, voices_source
from fleet.settings import Settings, get_settings
from gateway.auth import Authenticator, ConfigError, exposure_problem
from gateway.hub import Hub
from gateway.origins import OriginPolicy, page_headers
from gateway.session import ClientConnection

log = structlog.get_logger(__name__)

STATIC_DIR = Path(__file__).parent / "static"


class TokenRequest(BaseModel):
    """Body of ``POST /v1/tokens``: who the token is for, and for how long at most."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    subject: str = Field(min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$")
    ttl_s: int | None = Field(None, alias="ttlS", gt=0)


def _bearer(request: Request) -> str | None:
    """The credential of an ``Authorization: Bearer ...`` header, None without one."""
    scheme, _, credential = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        return None
    return credential.strip()


def create_app(settings: Settings, gateway_id: str) -> FastAPI:
    auth = Authenticator(settings)
    origins = OriginPolicy.from_setting(settings.allowed_origins)
    hub = Hub(settings, gateway_id)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await hub.start()
        try:
            yield
        finally:
            await hub.stop()

    # The OpenAPI pages only when asked for (VF_GATEWAY_DOCS): they map the service for anyone.
    docs = settings.gateway_docs
    app = FastAPI(
        title="voicefleet gateway",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def index(request: Request) -> FileResponse:
        return FileResponse(
            STATIC_DIR / "index.html", headers=page_headers(request.headers.get("host"), origins)
        )

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

    if not settings.metrics_port:
        # Local runs only: with VF_METRICS_PORT set (the manifests, compose) metrics are served
        # on that port alone, which the network policy opens to the monitoring namespace only.
        @app.get("/metrics", include_in_schema=False)
        async def metrics() -> Response:
            return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/tts/providers")
    async def tts_providers() -> JSONResponse:
        """What the TTS workers speak with (as they publish it: workers/tts/offer.py) and the
        voices a `start` may ask for; the page shows both. Reasons for ill health are left out:
        they name internal addresses."""
        try:
            offers = await hub.tts_offers.current()
        except RedisError as exc:
            raise HTTPException(503, "the session store is unavailable") from exc
        accepted = accepted_voices(settings, offers)
        listed = sorted(
            {voice for o in offers if o.speaking is not None for voice in o.speaking.voices}
        )
        return JSONResponse(
            {
                "workers": [
                    {
                        "worker": offer.worker,
                        "active": offer.active,
                        "providers": [
                            {
                                "label": p.label,
                                "engine": p.engine,
                                "version": p.version,
                                "health": p.health,
                            }
                            for p in offer.providers
                        ],
                    }
                    for offer in offers
                ],
                "voices": list(accepted) if accepted is not None else listed,
                "anyVoice": accepted is None,
                "default": settings.tts_voice,
                "source": voices_source(settings, offers),
            },
            headers={"Cache-Control": "no-store"},
        )

    @app.post("/v1/tokens")
    async def issue_token(request: Request) -> JSONResponse:
        """A signed client token, for the app server that fronts the browser (its API key).

        The key is checked before the body is read: without it nothing else is answered.
        """
        if not auth.issues_tokens:
            raise HTTPException(404, "token issuance is off (VF_AUTH_API_KEY is not set)")
        key = _bearer(request)
        if key is None:
            raise HTTPException(
                401,
                "send the API key as Authorization: Bearer <key>",
                {"WWW-Authenticate": "Bearer"},
            )
        if not auth.api_key_valid(key):
            log.warning("token_request_refused")
            raise HTTPException(403, "wrong API key")
        try:
            body = TokenRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            fields = sorted({".".join(str(p) for p in e["loc"]) or "body" for e in exc.errors()})
            raise HTTPException(422, f"invalid request body: {', '.join(fields)}") from None
        issued = auth.issue(body.subject, body.ttl_s)
        log.info("token_issued", subject=issued.subject, expires_at=issued.expires_at)
        return JSONResponse(
            {"token": issued.token, "subject": issued.subject, "expiresAt": issued.expires_at},
            headers={"Cache-Control": "no-store"},
        )

    @app.websocket("/ws/audio")
    async def ws_audio(websocket: WebSocket) -> None:
        origin = websocket.headers.get("origin")
        if not origins.allows(origin, websocket.headers.get("host")):
            # Before the upgrade: the server answers the handshake with HTTP 403.
            log.info("origin_refused", origin=(origin or "")[:200])
            telemetry.CLIENT_ERRORS.labels("origin_refused").inc()
            await websocket.close()
            return
        await websocket.accept()
        await ClientConnection(websocket, hub, settings, auth).serve()

    return app


def _exit_drained(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def run() -> None:
    settings = get_settings()
    gateway_id = telemetry.configure_logging(settings, "gateway")
    try:
        app = create_app(settings, gateway_id)
        problem = exposure_problem(settings, Authenticator(settings))
    except (ConfigError, ValueError) as exc:
        problem = f"gateway settings: {exc}"
    if problem is not None:
        log.error("gateway_refused_to_start", reason=problem)
        print(f"voicefleet gateway: {problem}", file=sys.stderr)
        raise SystemExit(2)
    telemetry.serve_metrics(settings)
    # uvicorn shuts down gracefully on SIGTERM (clients get close 1012 and can reconnect to
    # another gateway), then re-raises the signal into the handler it found: exit 0, drained.
    signal.signal(signal.SIGTERM, _exit_drained)
    config = uvicorn.Config(
        app,
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
