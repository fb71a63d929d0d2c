"""`elevenlabs`: ElevenLabs' streaming text-to-speech endpoint, asking for raw 24 kHz PCM.

``POST {VF_TTS_ELEVENLABS_URL}/v1/text-to-speech/{voice_id}/stream?output_format=pcm_24000``
with the key in ``xi-api-key``; the body streams back as PCM16 LE mono while it is generated.
ElevenLabs names voices by id, not by our names: every sentence is spoken with
``VF_TTS_ELEVENLABS_VOICE_ID`` unless the request names a voice id of its own (a name with no
underscore, which no Kokoro or Piper voice lacks).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx

from fleet.audio import OUTPUT_SAMPLE_RATE, whole_samples
from fleet.http_client import streamed
from fleet.settings import Settings
from workers.tts.providers.base import ProviderUnavailable

OUTPUT_FORMAT = f"pcm_{OUTPUT_SAMPLE_RATE}"


class ElevenLabsSynthesizer:
    name = "elevenlabs"
    sample_rate = OUTPUT_SAMPLE_RATE

    def __init__(self, url: str, api_key: str, model: str, voice_id: str, timeout_s: float):
        if not api_key:
            raise ValueError("the elevenlabs TTS provider needs VF_TTS_ELEVENLABS_API_KEY")
        self.url = url.rstrip("/")
        self.model = model
        self.voice_id = voice_id
        self.version = f"elevenlabs ({model})"
        self._client = httpx.AsyncClient(
            headers={"xi-api-key": api_key}, timeout=httpx.Timeout(timeout_s)
        )

    def voice_for(self, voice: str) -> str:
        return voice if voice and "_" not in voice else self.voice_id

    async def stream(self, text: str, voice: str) -> AsyncIterator[bytes]:
        if not text.strip():
            raise ValueError("nothing to say: the text is empty")
        try:
            async with streamed(
                self._client,
                "POST",
                f"{self.url}/v1/text-to-speech/{self.voice_for(voice)}/stream",
                params={"output_format": OUTPUT_FORMAT},
                json={"text": text, "model_id": self.model},
            ) as response:
                if response.status_code != 200:
                    await response.aread()
                    message = f"elevenlabs answered {response.status_code}: {_detail(response)}"
                    if response.status_code in (400, 404, 422):
                        raise ValueError(message)
                    raise ProviderUnavailable(message)
                async for piece in whole_samples(response.aiter_bytes()):
                    yield piece
        except httpx.HTTPError as exc:
            raise ProviderUnavailable(
                f"elevenlabs at {self.url} failed: {type(exc).__name__}: {exc}"
            ) from exc

    async def aclose(self) -> None:
        await self._client.aclose()


def _detail(response: httpx.Response) -> str:
    """ElevenLabs' errors: ``{"detail": {"status": ..., "message": ...}}`` (or a list, for a
    malformed request)."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        return response.text[:300]
    if isinstance(detail, dict):
        return f"{detail.get('status', '')}: {detail.get('message', '')}"
    return str(detail)[:300]


def from_settings(settings: Settings) -> ElevenLabsSynthesizer:
    return ElevenLabsSynthesizer(
        settings.tts_elevenlabs_url,
        settings.tts_elevenlabs_api_key.get_secret_value(),
        settings.tts_elevenlabs_model,
        settings.tts_elevenlabs_voice_id,
        settings.tts_provider_timeout_s,
    )
