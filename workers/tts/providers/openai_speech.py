"""`openai`: any OpenAI-compatible speech endpoint (``POST {base}/audio/speech``), through the
official `openai` client, streaming its ``pcm`` format (24 kHz PCM16 mono, as OpenAI defines it).

A provider server serves this API too (``/v1/audio/speech``), so this provider reaches it, OpenAI
itself, or any server that copies the API. Such endpoints report no version: the version range
applies to the `remote` provider only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import openai

from fleet.audio import OUTPUT_SAMPLE_RATE, whole_samples
from fleet.settings import Settings
from workers.tts.providers.base import ProviderUnavailable

# What OpenAI's API says its pcm format is.
OPENAI_PCM_RATE = OUTPUT_SAMPLE_RATE


class OpenAISpeechSynthesizer:
    """`SpeechSynthesizer` over the OpenAI Audio API."""

    name = "openai"
    sample_rate = OPENAI_PCM_RATE

    def __init__(self, url: str, model: str, api_key: str, timeout_s: float) -> None:
        if not url:
            raise ValueError("the openai TTS provider needs VF_TTS_OPENAI_URL")
        self.model = model
        self.version = f"openai-compatible ({model})"
        # No retries of our own: a failed sentence goes to the next provider instead.
        self._client = openai.AsyncOpenAI(
            base_url=url, api_key=api_key, timeout=timeout_s, max_retries=0
        )

    async def stream(self, text: str, voice: str) -> AsyncIterator[bytes]:
        if not text.strip():
            raise ValueError("nothing to say: the text is empty")
        try:
            async with self._client.audio.speech.with_streaming_response.create(
                model=self.model, voice=voice, input=text, response_format="pcm"
            ) as response:
                async for piece in whole_samples(response.iter_bytes()):
                    yield piece
        except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
            raise ValueError(f"the openai provider refused the text: {exc.message}") from exc
        except openai.OpenAIError as exc:
            raise ProviderUnavailable(
                f"openai provider at {self._client.base_url} failed: {type(exc).__name__}: {exc}"
            ) from exc

    async def aclose(self) -> None:
        await self._client.close()


def from_settings(settings: Settings) -> OpenAISpeechSynthesizer:
    return OpenAISpeechSynthesizer(
        settings.tts_openai_url,
        settings.tts_openai_model,
        settings.tts_openai_api_key.get_secret_value(),
        settings.tts_provider_timeout_s,
    )
