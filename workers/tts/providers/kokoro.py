"""Kokoro-82M through kokoro-onnx: local ONNX synthesis on CPU or a GPU execution provider."""

from __future__ import annotations

import importlib.metadata
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
from kokoro_onnx import Kokoro
from kokoro_onnx.config import SAMPLE_RATE
from numpy.typing import NDArray

from fleet.model_paths import kokoro_locations
from fleet.settings import Settings
from workers.tts.providers.base import SpeechSynthesizer

_CPU = "CPUExecutionProvider"


class KokoroSynthesizer:
    """`SpeechSynthesizer` for Kokoro. Loading takes about a second; do it once per process.

    kokoro-onnx's `create_stream` synthesizes one phoneme batch at a time in the event loop's
    default executor (inference blocks) and yields each batch as soon as it is done. A batch
    holds up to 510 phonemes, so a sentence arrives as a single part and its first byte comes
    when the whole sentence is synthesized; that is why the LLM bridge sends the first clause
    of a reply on its own.
    """

    name = "kokoro"
    # Only the voices in its voices file (`voices`); other names are refused.
    any_voice = False

    def __init__(
        self,
        model_path: str,
        voices_path: str,
        lang: str,
        speed: float,
        execution_provider: str = _CPU,
        gpu_mem_limit_mb: int = 0,
    ) -> None:
        available = ort.get_available_providers()
        if execution_provider not in available:
            # onnxruntime would only warn and run on CPU, hiding a misconfigured GPU box.
            raise ValueError(
                f"onnxruntime execution provider {execution_provider!r} is not available "
                f"in this installation; available: {', '.join(available)}"
            )
        # CPU stays as the fallback for any operator the accelerator lacks.
        accelerator: str | tuple[str, dict[str, str]] = execution_provider
        if gpu_mem_limit_mb and execution_provider == "CUDAExecutionProvider":
            # The GPU is shared with vLLM and STT (docs/deploy.md): bound the arena, and grow it
            # only by what is requested so the cap is not reached by rounding up.
            accelerator = (
                execution_provider,
                {
                    "gpu_mem_limit": str(gpu_mem_limit_mb * 1024 * 1024),
                    "arena_extend_strategy": "kSameAsRequested",
                },
            )
        providers = [accelerator] if execution_provider == _CPU else [accelerator, _CPU]
        session = ort.InferenceSession(model_path, providers=providers)
        self._kokoro = Kokoro.from_session(session, voices_path)
        self._voices = self._kokoro.get_voices()
        self._lang = lang
        self._speed = speed
        self.version = importlib.metadata.version("kokoro-onnx")
        self.sample_rate = SAMPLE_RATE

    @property
    def voices(self) -> list[str]:
        return list(self._voices)

    async def stream(
        self, text: str, voice: str, *, speed: float | None = None, lang: str | None = None
    ) -> AsyncIterator[bytes]:
        """`SpeechSynthesizer.stream`; ``speed`` and ``lang`` override the settings' for this
        text (the provider server takes them per request)."""
        if voice not in self._voices:
            raise ValueError(
                f"unknown Kokoro voice {voice!r}; available: {', '.join(self._voices)}"
            )
        if speed is not None and speed <= 0:
            raise ValueError(f"speed must be positive, got {speed}")
        parts = self._kokoro.create_stream(
            text, voice, speed=speed or self._speed, lang=lang or self._lang
        )
        try:
            async for audio, _ in parts:
                yield _pcm16(audio)
        finally:
            # Closing `parts` cancels its producer task, so no further batch is started when
            # our consumer stops early.
            await parts.aclose()


def _pcm16(audio: NDArray[np.float32]) -> bytes:
    # The model can overshoot [-1, 1] slightly; clip instead of letting int16 wrap around.
    return (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def from_settings(settings: Settings) -> SpeechSynthesizer:
    model, voices = kokoro_locations(settings)
    for setting, path in (("VF_TTS_MODEL", model), ("VF_TTS_VOICES", voices)):
        if not Path(path).is_file():
            # onnxruntime and numpy would fail on it too, but without saying which setting.
            raise FileNotFoundError(
                f"{setting}: no Kokoro file at {path} (empty = the one `voicefleet models` "
                "assembles in VF_MODELS_DIR)"
            )
    return KokoroSynthesizer(
        model,
        voices,
        lang=settings.tts_lang,
        speed=settings.tts_speed,
        execution_provider=settings.tts_execution_provider,
        gpu_mem_limit_mb=settings.tts_gpu_mem_limit_mb,
    )
