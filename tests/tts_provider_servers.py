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
def provider_server(engine: str = "kokoro", name: str = "tts-provider") -> Iterator[ProviderServer]:
    """A provider server with ``engine`` on a free loopback port, once it answers its health."""
    place = Settings(namespace=f"t{uuid.uuid4().hex[:10]}")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with role_processes(place) as started:
        process = start_role(
            started, place, name, "tts-provider", "--provider", engine, "--port", str(port)
        )
        wait_answering(process, f"{url}/tts/health", PROVIDER_START_S)
        yield ProviderServer(process, url)
