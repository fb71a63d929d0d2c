"""Where the offline model files live once `voicefleet models` has assembled them.

Engines take explicit paths; this module is the one place that maps settings to those paths,
so a production deployment can point a setting at a mounted path or a hub id instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fleet.settings import Settings


@dataclass(frozen=True, slots=True)
class ModelPaths:
    root: Path

    @property
    def whisper_base(self) -> Path:
        """CTranslate2 Whisper base directory (model.bin, config.json, tokenizer.json, ...)."""
        return self.root / "whisper-base"

    @property
    def kokoro_onnx(self) -> Path:
        return self.root / "kokoro" / "kokoro-v1.0.int8.onnx"

    @property
    def kokoro_voices(self) -> Path:
        return self.root / "kokoro" / "voices-v1.0.npz"

    @property
    def silero_vad(self) -> Path:
        return self.root / "vad" / "silero_vad_v6.onnx"

    @property
    def smart_turn(self) -> Path:
        return self.root / "smart-turn" / "smart-turn-v3.2-cpu.onnx"

    @property
    def chat_gguf(self) -> Path:
        return self.root / "llm" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def model_paths(settings: Settings) -> ModelPaths:
    return ModelPaths(settings.models_dir)


def stt_model_location(settings: Settings) -> str:
    return settings.stt_model or str(model_paths(settings).whisper_base)


def kokoro_locations(settings: Settings) -> tuple[str, str]:
    paths = model_paths(settings)
    model = settings.tts_model or str(paths.kokoro_onnx)
    voices = settings.tts_voices or str(paths.kokoro_voices)
    return model, voices
