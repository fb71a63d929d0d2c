"""What the engines accept, as facts the gateway checks `start` against (docs/security.md).

The gateway imports no worker package, so the languages Whisper knows and the voices in
Kokoro's voices file are written down here; tests/unit/test_engines.py checks both lists against
the assembled model files. A deployment with other models sets ``VF_STT_LANGUAGES`` /
``VF_TTS_VOICE_NAMES`` instead.

Voices are the TTS workers' to say: each publishes what its providers offer (fleet/state.py,
``TtsOffers``), and the gateway accepts what the providers speaking now offer. Only while no
worker has published (none is up yet) does it fall back to the list written here.
"""

from __future__ import annotations

from collections.abc import Sequence

from fleet.settings import Settings
from fleet.state import ProviderOffer, TtsOffer

# The 99 language codes of Whisper's multilingual models up to large-v2 (large-v3 adds "yue";
# English-only models accept "en" only).
WHISPER_LANGUAGES: tuple[str, ...] = (
    "af", "am", "ar", "as", "az", "ba", "be", "bg", "bn", "bo", "br", "bs", "ca", "cs", "cy",
    "da", "de", "el", "en", "es", "et", "eu", "fa", "fi", "fo", "fr", "gl", "gu", "ha", "haw",
    "he", "hi", "hr", "ht", "hu", "hy", "id", "is", "it", "ja", "jw", "ka", "kk", "km", "kn",
    "ko", "la", "lb", "ln", "lo", "lt", "lv", "mg", "mi", "mk", "ml", "mn", "mr", "ms", "mt",
    "my", "ne", "nl", "nn", "no", "oc", "pa", "pl", "ps", "pt", "ro", "ru", "sa", "sd", "si",
    "sk", "sl", "sn", "so", "sq", "sr", "su", "sv", "sw", "ta", "te", "tg", "th", "tk", "tl",
    "tr", "tt", "uk", "ur", "uz", "vi", "yi", "yo", "zh",
)  # fmt: skip

# The voices of Kokoro-82M v1.0 (voices-v1.0.npz, as `voicefleet models` assembles it).
KOKORO_VOICES: tuple[str, ...] = (
    "af_alloy", "af_aoede", "af_bella", "af_heart", "af_jessica", "af_kore", "af_nicole",
    "af_nova", "af_river", "af_sarah", "af_sky", "am_adam", "am_echo", "am_eric", "am_fenrir",
    "am_liam", "am_michael", "am_onyx", "am_puck", "am_santa", "bf_alice", "bf_emma",
    "bf_isabella", "bf_lily", "bm_daniel", "bm_fable", "bm_george", "bm_lewis", "ef_dora",
    "em_alex", "em_santa", "ff_siwis", "hf_alpha", "hf_beta", "hm_omega", "hm_psi", "if_sara",
    "im_nicola", "jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo", "pf_dora",
    "pm_alex", "pm_santa", "zf_xiaobei", "zf_xiaoni", "zf_xiaoxiao", "zf_xiaoyi", "zm_yunjian",
    "zm_yunxi", "zm_yunxia", "zm_yunyang",
)  # fmt: skip


def _listed(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


def accepted_languages(settings: Settings) -> tuple[str, ...]:
    """The languages a client may ask for: ``VF_STT_LANGUAGES``, or Whisper's."""
    return _listed(settings.stt_languages) or WHISPER_LANGUAGES


def accepted_voices(settings: Settings, offers: Sequence[TtsOffer] = ()) -> tuple[str, ...] | None:
    """The voices a client may ask for; None: any name (Piper speaks every name with its one
    voice).

    ``VF_TTS_VOICE_NAMES`` if set (the operator's list); else the union of what the provider
    each live TTS worker speaks with now offers (``offers``); with no offer published (or
    none of a healthy provider), the engine's list written here."""
    listed = _listed(settings.tts_voice_names)
    if listed:
        return listed
    providers = _speaking(offers)
    if providers:
        if any(provider.any_voice for provider in providers):
            return None
        return tuple(sorted({voice for provider in providers for voice in provider.voices}))
    return KOKORO_VOICES if settings.tts_provider == "kokoro" else None


def _speaking(offers: Sequence[TtsOffer]) -> list[ProviderOffer]:
    """The healthy providers the workers send sentences to now."""
    speaking = [offer.speaking for offer in offers]
    return [p for p in speaking if p is not None and p.health == "ok"]


def voices_source(settings: Settings, offers: Sequence[TtsOffer] = ()) -> str:
    """Who offers the voices :func:`accepted_voices` returns, for the message of a refusal."""
    if _listed(settings.tts_voice_names):
        return "VF_TTS_VOICE_NAMES"
    providers = sorted({f"{p.engine} {p.version} ({p.label})" for p in _speaking(offers)})
    if providers:
        return "the TTS provider " + ", ".join(providers)
    return f"the {settings.tts_provider} engine"
