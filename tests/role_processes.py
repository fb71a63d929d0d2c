"""Single `voicefleet` processes (a worker, the chat server) in a test's own namespace.

For integration tests that need one real role process, not a whole fleet; the processes are
:class:`~tests.fleet_processes.FleetProcess` es, logging to ``artifacts/<namespace>/<name>.log``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from fleet.settings import Settings
from tests.fleet_processes import ARTIFACTS, FleetProcess, free_port

CHAT_SERVER_START_S = 120.0


@contextmanager
def role_processes(settings: Settings) -> Iterator[list[FleetProcess]]:
    """Processes started with :func:`start_role` into the yielded list are killed afterwards."""
    started: list[FleetProcess] = []
    try:
        yield started
    finally:
        for process in started:
            process.kill()


def start_role(
    started: list[FleetProcess],
    settings: Settings,
    name: str,
    *args: str,
    module: str = "voicefleet.cli",
    **env: str,
) -> FleetProcess:
    """``voicefleet ARGS`` as ``name`` in the namespace of ``settings``, with VF_* ``env``
    (``module``: another module run with those arguments, e.g. a test's wrapper)."""
    process = FleetProcess(
        name,
        list(args),
        {
            **os.environ,
            "VF_NAMESPACE": settings.namespace,
            "VF_WORKER_ID": name,
            "VF_LOG_JSON": "true",
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
            **env,
        },
        ARTIFACTS / settings.namespace / f"{name}.log",
        module=module,
    )
    started.append(process)
    process.start()
    return process


async def logged(
    process: FleetProcess,
    event: str,
    *,
    patience: float,
    since: int = 0,
    **fields: Any,
) -> dict[str, object]:
    """The first log event ``event`` with ``fields`` (from the ``since``-th on), once written."""

    def found() -> dict[str, object] | None:
        return next(
            (
                e
                for e in process.log_events()[since:]
                if e.get("event") == event and all(e.get(k) == v for k, v in fields.items())
            ),
            None,
        )

    async with asyncio.timeout(patience):
        # Another process writes the log: there is nothing to wait on but the file itself.
        while (entry := found()) is None:
            if process.process is not None and process.process.poll() is not None:
                raise RuntimeError(f"{process.name} exited:\n{process.tail()}")
            await asyncio.sleep(0.05)
    return entry


async def printed(process: FleetProcess, text: str, *, patience: float, since: int = 0) -> None:
    """Return once ``text`` is in the process's output (after its first ``since`` characters)."""
    async with asyncio.timeout(patience):
        # Another process writes the log: there is nothing to wait on but the file itself.
        while text not in process.log_path.read_text(errors="replace")[since:]:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


@contextmanager
def local_chat_server(**env: str) -> Iterator[tuple[FleetProcess, str]]:
    """`voicefleet llm-server` (llama.cpp, the assembled model) with VF_* ``env``, and its base
    URL once serving."""
    place = Settings(namespace=f"t{uuid.uuid4().hex[:10]}")
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    with role_processes(place) as started:
        server = start_role(started, place, "llm-server", "llm-server", "--port", str(port), **env)
        wait_answering(server, f"{url}/models", CHAT_SERVER_START_S)
        yield server, url


def wait_answering(server: FleetProcess, url: str, patience: float) -> None:
    """Return once GET ``url`` answers 200; fail at once if ``server`` exits, or after
    ``patience`` seconds. A server coming up tells nothing: asking it is all there is."""
    deadline = time.monotonic() + patience
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        assert server.process is not None and server.process.poll() is None, server.tail()
        assert time.monotonic() < deadline, f"{url} not answering:\n{server.tail()}"
        time.sleep(0.2)
