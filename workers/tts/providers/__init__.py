"""TTS providers, chosen by `settings.tts_provider`.

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

__all__ = ["SpeechSynthesizer", "create_synthesizer", "provider_names"]

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
