"""`voicefleet tts-provider` processes for tests: started, waited for, killed afterwards."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from fleet.settings import Settings
from tests.fleet_processes import FleetProcess, free_port
from tests.role_processes import role_processes, start_role, wait_answering

PROVIDER_START_S = 120.0


@dataclass
class ProviderServer:
    process: FleetProcess
    url: str


@contextlib.contextmanager
def provider_server(
    engine: str = "kokoro",
    name: str = "tts-provider",
    *,
    port: int | None = None,
    version: str | None = None,
) -> Iterator[ProviderServer]:
    """A provider server with ``engine`` on ``port`` (a free loopback one unless given), once it
    answers its health. ``version``: the server reports that version instead of its package's,
    as a server of another release would (tests/versioned_provider_server.py)."""
    place = Settings(namespace=f"t{uuid.uuid4().hex[:10]}")
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    args = ("tts-provider", "--provider", engine, "--port", str(port))
    with role_processes(place) as started:
        if version is None:
            process = start_role(started, place, name, *args)
        else:
            module = "tests.versioned_provider_server"
            process = start_role(started, place, name, version, *args, module=module)
        wait_answering(process, f"{url}/tts/health", PROVIDER_START_S)
        yield ProviderServer(process, url)
