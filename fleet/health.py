"""Worker health over HTTP: ``/livez`` and ``/readyz``, answered by the worker's own event loop.

Both are served on the loop that does the work, not from a side thread: a loop that is stuck (a
blocking call, a handler that never yields) leaves the probe unanswered, the probe's timeout
passes, and the orchestrator restarts the process. A thread would answer "alive" for a dead loop.

Ready means the worker can take work now: the broker connection is up, Redis answers, and the
worker is consuming its queue (which it starts only after its models are loaded). While it drains
after SIGTERM it is not ready (503), so no new work is routed to it, but it stays live.

The server is a few lines of HTTP/1.0 on ``asyncio.start_server`` on purpose: probes send one GET
and read one status line, and the worker needs no web framework for that.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import redis.asyncio as redis
import structlog
from redis.exceptions import RedisError

log = structlog.get_logger(__name__)

# Below the probes' own timeouts (>= 3 s), so that a slow Redis answers "not ready", not silence.
REDIS_PING_TIMEOUT_S = 2.0
# A client that opens a connection and sends nothing must not hold it for ever.
REQUEST_READ_TIMEOUT_S = 5.0


@dataclass
class HealthState:
    """What readiness is made of; the worker's runtime owns each of these."""

    broker_up: asyncio.Event
    consuming: asyncio.Event
    stopping: asyncio.Event
    redis_client: redis.Redis
    # A worker's own reasons not to be ready (the TTS worker's providers), each returning them.
    checks: list[Callable[[], list[str]]] = field(default_factory=list)

    async def problems(self) -> list[str]:
        """Why the worker is not ready; empty when it is."""
        found = []
        if self.stopping.is_set():
            found.append("draining")
        if not self.broker_up.is_set():
            found.append("broker unreachable")
        if not self.consuming.is_set():
            found.append("not consuming yet (models loading)")
        try:
            async with asyncio.timeout(REDIS_PING_TIMEOUT_S):
                await self.redis_client.ping()
        except (RedisError, OSError, TimeoutError) as exc:
            found.append(f"redis unreachable: {type(exc).__name__}")
        for check in self.checks:
            found += check()
        return found


async def _respond(state: HealthState, path: str) -> tuple[int, str]:
    if path == "/livez":
        return 200, "live\n"
    if path == "/readyz":
        problems = await state.problems()
        return (503, "; ".join(problems) + "\n") if problems else (200, "ready\n")
    return 404, "not found\n"


_REASONS = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}


async def _handle(
    state: HealthState, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        async with asyncio.timeout(REQUEST_READ_TIMEOUT_S):
            request_line = await reader.readline()
            # The headers are read and ignored: a probe's GET carries nothing that matters.
            while await reader.readline() not in (b"\r\n", b"\n", b""):
                pass
        parts = request_line.decode("latin-1").split()
        path = parts[1].split("?", 1)[0] if len(parts) >= 2 else ""
        status, body = await _respond(state, path)
        payload = body.encode()
        writer.write(
            f"HTTP/1.0 {status} {_REASONS[status]}\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
            + payload
        )
        await writer.drain()
    except (TimeoutError, ConnectionError):
        pass  # the prober went away or never asked; nothing to answer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


@contextlib.asynccontextmanager
async def serve_health(state: HealthState, port: int) -> AsyncIterator[None]:
    """Serve /livez and /readyz on ``port`` (0: not at all) while the context is open."""
    if not port:
        yield
        return

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _handle(state, reader, writer)

    # All addresses: the kubelet probes the pod's own IP, not loopback.
    server = await asyncio.start_server(handle, "0.0.0.0", port)
    log.info("health_serving", port=port)
    try:
        yield
    finally:
        server.close()
        await server.wait_closed()
