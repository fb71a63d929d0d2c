"""A connection gives its memory back the moment it ends, without waiting for the cycle collector.

A gateway keeps each connection's utterance in progress (up to a minute of audio) for replay to a
new STT worker. If an ended connection is only reachable through a reference cycle, that audio
stays until Python's cycle collector gets round to it, which in a process of the gateway's size
is after hundreds of connections: the soak test saw the gateway grow by 22 MB in three minutes
of clients refused for bad input. Here the gateway runs in this process on the real broker and
Redis, beside a real STT worker, with the cycle collector off, so only plain reference counting
can free what a connection held.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
from collections.abc import AsyncIterator, Iterator

import pytest
import uvicorn
import websockets

from fleet.errors import ErrorCode
from fleet.settings import Settings
from gateway.app import create_app
from gateway.session import ClientConnection
from gateway.uplink import Uplink
from tests.fleet_processes import FleetProcess, free_port
from tests.fuzzing import LIMITS, VALID_START
from tests.role_processes import role_processes, start_role

pytestmark = pytest.mark.timeout(240)

# The STT worker loads Whisper, Silero VAD and Smart Turn before it takes a lease.
READY_PATIENCE_S = 120.0
CONNECTIONS = 4
FRAMES = 20  # 2 s of audio each, kept for replay until the connection ends


@pytest.fixture
def stt_worker(settings: Settings) -> Iterator[FleetProcess]:
    with role_processes(settings) as started:
        yield start_role(started, settings, "stt-memory", "worker", "stt")


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[uvicorn.Server]:
    config = uvicorn.Config(
        create_app(settings, "gw-memory"), host="127.0.0.1", port=free_port(), log_config=None
    )
    server = uvicorn.Server(config)
    # Listening before the server starts: a client connects at once, and is answered once the
    # gateway is up.
    listener = config.bind_socket()
    listener.listen()
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        yield server
    finally:
        server.should_exit = True
        await serving


def url_of(gateway: uvicorn.Server) -> str:
    return f"ws://127.0.0.1:{gateway.config.port}/ws/audio"


def live(kind: type) -> int:
    # type(), not isinstance(): the heap holds weak proxies to dead objects, which raise.
    return sum(1 for obj in gc.get_objects() if type(obj) is kind)


async def connection_with_audio(url: str, ending: str) -> None:
    """A client streams audio, then leaves: says stop, drops the socket, or breaks a limit."""
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps(VALID_START))
        async with asyncio.timeout(READY_PATIENCE_S):
            ready = json.loads(await ws.recv())
        assert ready["type"] == "ready", ready
        for _ in range(FRAMES):
            await ws.send(bytes(3200))
        if ending == "dropped":
            ws.transport.abort()
            return
        if ending == "stop":
            await ws.send(json.dumps({"type": "stop"}))
        else:
            await ws.send(bytes(LIMITS.max_frame_bytes + 2))
        errors = []
        with contextlib.suppress(websockets.ConnectionClosed):
            async for reply in ws:
                if isinstance(reply, str):
                    errors.append(json.loads(reply)["code"])
        assert errors == ([] if ending == "stop" else [ErrorCode.FRAME_TOO_BIG]), errors


@pytest.mark.parametrize("ending", ["frame_too_big", "stop", "dropped"])
async def test_an_ended_connection_frees_its_audio_at_once(
    stt_worker: FleetProcess, gateway: uvicorn.Server, ending: str
) -> None:
    gc.collect()
    gc.disable()
    try:
        for _ in range(CONNECTIONS):
            await connection_with_audio(url_of(gateway), ending)
        # The server side ends a moment after the client sees the close: its handlers finish.
        handlers = set(gateway.server_state.tasks)
        if handlers:
            _, running = await asyncio.wait(handlers, timeout=10)
            assert not running, "connection handlers still running after their clients left"
        del handlers
        assert (live(ClientConnection), live(Uplink)) == (0, 0), (
            f"{live(ClientConnection)} ended connections and {live(Uplink)} uplinks with their "
            "audio are still in memory: only the cycle collector would free them"
        )
    finally:
        gc.enable()
