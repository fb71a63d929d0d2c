"""Workers' /livez and /readyz (fleet/health.py) mean what the probes take them to mean.

A real worker runtime (fleet.worker.start_runtime) on a real broker and Redis: ready only once it
consumes its queue with broker and Redis reachable, 503 while draining, and /livez unanswered
while its event loop is stuck. The test that kills broker and Redis uses private ones, so that it
touches nobody else; the others use the shared ones under a namespace of their own.
"""

from __future__ import annotations

import asyncio
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest

from fleet.contracts import TurnRequest
from fleet.settings import Settings
from fleet.topology import Route
from fleet.worker import Runtime, start_runtime
from tests.private_services import (
    PrivateRabbitMQ,
    PrivateRedis,
    free_port,
    private_rabbitmq,
    private_redis,
)
from voicefleet.namespaces import delete_namespace

# What the manifests and compose give their probes (tests/deploy/test_manifests.py checks that).
PROBE_TIMEOUT_S = 3.0


def probe(port: int, path: str) -> tuple[int, str]:
    """One probe as the kubelet makes it: a GET that must answer within the probe's timeout."""
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}{path}", timeout=PROBE_TIMEOUT_S
        ) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def aprobe(port: int, path: str) -> tuple[int, str]:
    return await asyncio.to_thread(probe, port, path)


async def _ignore(_request: TurnRequest) -> None:
    """No job is published in these tests; the handler only has to exist."""


@pytest.fixture
def private_services() -> Iterator[tuple[PrivateRabbitMQ, PrivateRedis]]:
    # Started outside the test's event loop: their readiness checks run loops of their own.
    with private_rabbitmq() as broker, private_redis() as redis_server:
        yield broker, redis_server


@asynccontextmanager
async def worker(**services: str) -> AsyncIterator[tuple[Runtime, int]]:
    """A worker runtime serving health on a free port; shared services unless others are given."""
    port = free_port()
    settings = Settings.model_validate(
        {
            "namespace": f"t{uuid.uuid4().hex[:10]}",
            "health_port": port,
            "log_json": False,
            "drain_timeout_s": 1.0,
            **services,
        }
    )
    try:
        async with start_runtime(settings, "llm", f"health-{settings.namespace}") as runtime:
            yield runtime, port
    finally:
        if not services:
            await delete_namespace(settings)


async def test_ready_only_while_consuming_not_while_draining() -> None:
    async with worker() as (runtime, port):
        status, body = await aprobe(port, "/readyz")
        assert (status, body.strip()) == (503, "not consuming yet (models loading)")
        assert await aprobe(port, "/livez") == (200, "live\n")

        serving = asyncio.create_task(
            runtime.serve_jobs(Route.LLM_TURNS, TurnRequest, _ignore, 1, gave_up=_ignore)
        )
        await runtime.consuming.wait()
        assert await aprobe(port, "/readyz") == (200, "ready\n")

        runtime.stopping.set()
        status, body = await aprobe(port, "/readyz")
        assert status == 503 and "draining" in body
        assert (await aprobe(port, "/livez"))[0] == 200
        await serving


async def test_not_ready_without_redis_or_broker(
    private_services: tuple[PrivateRabbitMQ, PrivateRedis],
) -> None:
    broker, redis_server = private_services
    async with worker(amqp_url=broker.url, redis_url=redis_server.url) as (runtime, port):
        serving = asyncio.create_task(
            runtime.serve_jobs(Route.LLM_TURNS, TurnRequest, _ignore, 1, gave_up=_ignore)
        )
        await runtime.consuming.wait()
        assert (await aprobe(port, "/readyz"))[0] == 200

        redis_server.kill()
        status, body = await aprobe(port, "/readyz")
        assert status == 503 and "redis unreachable" in body

        lost = asyncio.Event()
        runtime.bus.on_lost(lost.set)
        broker.kill()
        await lost.wait()
        status, body = await aprobe(port, "/readyz")
        assert status == 503 and "broker unreachable" in body
        # Unready is not dead: the worker waits for its services to come back.
        assert (await aprobe(port, "/livez"))[0] == 200
        runtime.stopping.set()
        await serving


async def test_livez_goes_unanswered_while_the_event_loop_is_stuck() -> None:
    async with worker() as (_runtime, port):
        assert (await aprobe(port, "/livez"))[0] == 200
        release = threading.Event()
        outcome: list[BaseException | tuple[int, str]] = []

        def probe_then_release() -> None:
            try:
                outcome.append(probe(port, "/livez"))
            except OSError as exc:  # the probe's timeout: what the kubelet counts as failure
                outcome.append(exc)
            finally:
                release.set()

        prober = threading.Thread(target=probe_then_release)
        # The loop blocks in a plain call, as a worker that calls blocking code would.
        asyncio.get_running_loop().call_soon(release.wait)
        prober.start()
        await asyncio.sleep(0)  # run the blocking call now; it returns once probed
        await asyncio.to_thread(prober.join)
        (result,) = outcome
        assert isinstance(result, TimeoutError), result
        assert (await aprobe(port, "/livez"))[0] == 200
