"""GET /tts/providers: the gateway says what the running TTS workers speak with, as they publish
it (docs/tts-providers.md, "What the workers offer"), for the page's status line and voice
picker. A real gateway, a real TTS worker speaking through a real provider server, Kokoro."""

from __future__ import annotations

import asyncio
import importlib.metadata
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from fleet.engines import KOKORO_VOICES
from tests.fleet_processes import Fleet, running_fleet
from tests.tts_provider_servers import ProviderServer, provider_server

pytestmark = pytest.mark.timeout(300)


async def listed(client: httpx.AsyncClient, url: str, wanted: Any) -> dict[str, Any]:
    """GET /tts/providers until its answer is as ``wanted``."""
    async with asyncio.timeout(30):
        # The worker publishes into Redis on its own schedule: nothing to wait on but the answer.
        while True:
            response = await client.get(f"{url}/tts/providers")
            assert response.status_code == 200
            body: dict[str, Any] = response.json()
            if wanted(body):
                return body
            await asyncio.sleep(0.1)


@pytest.fixture(scope="module")
def server() -> Iterator[ProviderServer]:
    with provider_server("kokoro") as running:
        yield running


@pytest.fixture(scope="module")
def fleet(server: ProviderServer) -> Iterator[Fleet]:
    """A gateway and one TTS worker speaking through ``server``, its own Kokoro behind it."""
    speaking = {"VF_TTS_PROVIDERS": "remote,local", "VF_TTS_PROVIDER_URL": server.url}
    with running_fleet(
        "tts-providers-endpoint", stt=0, llm=0, tts=1, role_env={"tts": speaking}
    ) as running:
        yield running


async def test_the_gateway_lists_the_provider_a_running_tts_worker_speaks_with(
    server: ProviderServer, fleet: Fleet
) -> None:
    async with httpx.AsyncClient() as client:
        version = (await client.get(f"{server.url}/tts/health")).json()["version"]
        body = await listed(
            client,
            fleet.http_url,
            lambda b: b["workers"] and b["workers"][0]["providers"][0]["health"] == "ok",
        )
        assert body["workers"] == [
            {
                "worker": "tts-1",
                "active": "remote",
                "providers": [
                    {"label": "remote", "engine": "kokoro", "version": version, "health": "ok"},
                    {
                        "label": "local",
                        "engine": "kokoro",
                        "version": importlib.metadata.version("kokoro-onnx"),
                        "health": "ok",
                    },
                ],
            }
        ]
        # The server's voices, as the worker read them from GET /tts/voices.
        assert body["voices"] == sorted(KOKORO_VOICES)
        assert not body["anyVoice"] and body["default"] == "af_heart"
        assert body["source"] == f"the TTS provider kokoro {version} (remote)"
        # Nothing of why a provider is ill (internal addresses) reaches the page.
        assert server.url not in str(body)

        # The worker stops: its offer goes with it, and the gateway says so.
        assert fleet.processes["tts-1"].stop() == 0
        body = await listed(client, fleet.http_url, lambda b: not b["workers"])
        assert body["source"] == "the kokoro engine"
