"""TTS providers: the in-process engines, chosen by `settings.tts_provider`, and the list a TTS
worker speaks through, `settings.tts_providers` (docs/tts-providers.md).

Adding a provider: a module here with a `from_settings(settings) -> SpeechSynthesizer`
function, and its line in `_PROVIDERS`. Modules are imported only when chosen, so a provider's
heavy or optional dependencies (onnxruntime, a cloud SDK) load only where it is used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import cast

from fleet.settings import Settings
from workers.tts.providers.base import SpeechSynthesizer

__all__ = [
    "SpeechSynthesizer",
    "create_synthesizer",
    "provider_list",
    "provider_names",
    "speaking_synthesizer",
]

_PROVIDERS: dict[str, str] = {
    "kokoro": "workers.tts.providers.kokoro",
    "piper": "workers.tts.providers.piper",
}


def provider_names() -> list[str]:
    return sorted(_PROVIDERS)


def create_synthesizer(settings: Settings) -> SpeechSynthesizer:
    """Load the configured provider. Blocking (models load here): call it off the event loop."""
    try:
        module_name = _PROVIDERS[settings.tts_provider]
    except KeyError:
        raise ValueError(
            f"unknown TTS provider {settings.tts_provider!r}; known: {', '.join(provider_names())}"
        ) from None
    factory = cast(
        Callable[[Settings], SpeechSynthesizer],
        importlib.import_module(module_name).from_settings,
    )
    return factory(settings)


# VF_TTS_PROVIDERS entries besides `local` and `auto`, and their modules.
_SERVICE_PROVIDERS: dict[str, str] = {
    "remote": "workers.tts.providers.remote",
    "openai": "workers.tts.providers.openai_speech",
    "wyoming": "workers.tts.providers.wyoming_protocol",
    "elevenlabs": "workers.tts.providers.elevenlabs",
}
PROVIDER_LIST_ENTRIES = ("auto", "local", *_SERVICE_PROVIDERS)


def cuda_present() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def provider_list(settings: Settings) -> list[str]:
    """VF_TTS_PROVIDERS as the providers to try in order, `auto` expanded: the local engine on
    the GPU where CUDA is present (and the engine is Kokoro); else a remote provider server
    when one is configured (used while healthy), then the local engine on CPU. Raises
    ValueError for an unknown or repeated entry."""
    entries = [entry.strip() for entry in settings.tts_providers.split(",") if entry.strip()]
    unknown = [entry for entry in entries if entry not in PROVIDER_LIST_ENTRIES]
    if unknown or not entries:
        raise ValueError(
            f"VF_TTS_PROVIDERS={settings.tts_providers!r}: unknown or no providers "
            f"{unknown}; known: {', '.join(PROVIDER_LIST_ENTRIES)}"
        )
    expanded: list[str] = []
    for entry in entries:
        if entry == "auto" and _local_gpu(settings):
            expanded.append("local")
        elif entry == "auto":
            expanded += [*(["remote"] if settings.tts_provider_url else []), "local"]
        else:
            expanded.append(entry)
    if len(set(expanded)) != len(expanded):
        raise ValueError(f"VF_TTS_PROVIDERS={settings.tts_providers!r} names a provider twice")
    return expanded


def speaking_synthesizer(settings: Settings) -> SpeechSynthesizer:
    """What a TTS worker speaks through: the local engine alone (the default), or a
    `ProviderChain` over VF_TTS_PROVIDERS. Blocking (models load here): call it off the loop."""
    from workers.tts.providers.chain import Candidate, ProviderChain

    labels = provider_list(settings)
    if "auto" in settings.tts_providers and _local_gpu(settings):
        settings = settings.model_copy(update={"tts_execution_provider": "CUDAExecutionProvider"})
    if labels == ["local"]:
        return create_synthesizer(settings)
    candidates: list[Candidate] = []
    for label in labels:
        if label == "local":
            candidates.append(Candidate(label, create_synthesizer(settings), None))
            continue
        service = importlib.import_module(_SERVICE_PROVIDERS[label]).from_settings(settings)
        candidates.append(
            Candidate(
                label,
                cast(SpeechSynthesizer, service),
                getattr(service, "connect", None),
                cooldown_s=settings.tts_breaker_cooldown_s,
            )
        )
    return ProviderChain(candidates)


def _local_gpu(settings: Settings) -> bool:
    return settings.tts_provider == "kokoro" and cuda_present()
