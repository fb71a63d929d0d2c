"""`remote`: a provider server (`voicefleet tts-provider`) over HTTP, streaming.

Audio comes from ``POST /tts/stream`` as the server synthesizes it. Before its first use, and
again after every failure (a reconnection), the provider asks ``GET /tts/health`` for the server's
version and sample rate, and refuses a version outside ``VF_TTS_PROVIDER_VERSION_MIN/_MAX``. A
server restarted between two sentences is a reconnection too: each stream says its version
(``X-Provider-Version``), and one that changed fails the sentence over and is checked again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx

from fleet.audio import whole_samples
from fleet.http_client import streamed
from fleet.settings import Settings
from workers.tts.providers.base import ProviderUnavailable
from workers.tts.providers.versions import IncompatibleProvider, VersionRange

SAMPLE_RATE_HEADER = "X-Sample-Rate"
VERSION_HEADER = "X-Provider-Version"
_CONNECT_TIMEOUT_S = 3.0


class RemoteSynthesizer:
    """`SpeechSynthesizer` for a provider server; `connect()` before the first `stream`."""

    name = "remote"

    def __init__(self, url: str, versions: VersionRange, timeout_s: float) -> None:
        if not url:
            raise ValueError("the remote TTS provider needs VF_TTS_PROVIDER_URL")
        self.url = url.rstrip("/")
        self.versions = versions
        self.version = ""
        self.sample_rate = 0
        self.engine = ""
        # What GET /tts/voices lists (fetched with the health); a server that does not serve
        # it, or says ``any_name``, speaks whatever name it is sent (or refuses it itself).
        self.voices: list[str] = []
        self.any_voice = True
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, _CONNECT_TIMEOUT_S))
        )
        self._connected = False

    async def connect(self) -> None:
        """Ask the server who it is. Raises ProviderUnavailable when it does not answer well,
        IncompatibleProvider when its version is out of range."""
        self._connected = False
        try:
            response = await self._client.get(f"{self.url}/tts/health")
            response.raise_for_status()
            health = response.json()
            version, sample_rate = str(health["version"]), int(health["sample_rate"])
            engine = str(health.get("provider", ""))
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            raise ProviderUnavailable(
                f"provider server {self.url} is not healthy: {type(exc).__name__}: {exc}"
            ) from exc
        self.versions.check(f"server {self.url}", version)
        self.voices, self.any_voice = await self._voices()
        self.version, self.sample_rate, self.engine = version, sample_rate, engine
        self._connected = True

    async def _voices(self) -> tuple[list[str], bool]:
        """The server's voices (GET /tts/voices), and whether it speaks any name; a server
        without the endpoint (it is optional for servers of one's own) lists none."""
        try:
            response = await self._client.get(f"{self.url}/tts/voices")
            if response.status_code == 404:
                return [], True
            response.raise_for_status()
            listed = response.json()
            voices = [str(voice) for voice in listed["voices"]]
            return voices, bool(listed.get("any_name", False))
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            raise ProviderUnavailable(
                f"provider server {self.url} did not list its voices: {type(exc).__name__}: {exc}"
            ) from exc

    async def stream(self, text: str, voice: str) -> AsyncIterator[bytes]:
        if not self._connected:
            await self.connect()
        try:
            async with streamed(
                self._client, "POST", f"{self.url}/tts/stream", json={"text": text, "voice": voice}
            ) as response:
                if response.status_code in (400, 422):
                    await response.aread()
                    raise ValueError(_detail(response))
                if response.status_code != 200:
                    await response.aread()
                    raise ProviderUnavailable(
                        f"provider server {self.url} answered {response.status_code}: "
                        f"{_detail(response)}"
                    )
                reported = response.headers.get(VERSION_HEADER)
                if reported is not None and reported != self.version:
                    self._reconnected_as(reported)
                if response.headers.get(SAMPLE_RATE_HEADER) != str(self.sample_rate):
                    raise ProviderUnavailable(
                        f"provider server {self.url} changed its sample rate to "
                        f"{response.headers.get(SAMPLE_RATE_HEADER)} (was {self.sample_rate})"
                    )
                async for piece in whole_samples(response.aiter_bytes()):
                    yield piece
        except httpx.HTTPError as exc:
            self._connected = False
            raise ProviderUnavailable(
                f"provider server {self.url} failed mid-way: {type(exc).__name__}: {exc}"
            ) from exc
        except ProviderUnavailable:
            self._connected = False
            raise

    def _reconnected_as(self, version: str) -> None:
        """The server answering now reports another version than at connection: restarted
        (or another replica behind one address, mid-upgrade). In range, it is used as it is;
        out of range, nothing of it is used (ProviderUnavailable: the sentence fails over) and
        the provider is checked again before its next use, and refused."""
        try:
            self.versions.check(f"server {self.url}", version)
        except IncompatibleProvider as exc:
            raise ProviderUnavailable(f"reconnected: {exc}") from exc
        self.version = version

    async def aclose(self) -> None:
        await self._client.aclose()


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    detail = body.get("detail", body) if isinstance(body, dict) else body
    return str(detail)[:500]


def from_settings(settings: Settings) -> RemoteSynthesizer:
    return RemoteSynthesizer(
        settings.tts_provider_url,
        VersionRange(settings.tts_provider_version_min, settings.tts_provider_version_max),
        settings.tts_provider_timeout_s,
    )
