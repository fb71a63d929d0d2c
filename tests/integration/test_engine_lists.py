"""The languages and voices the gateway accepts in `start` (fleet/engines.py) are those of the
assembled models: Whisper's language tokens and the names in Kokoro's voices file."""

from __future__ import annotations

import json

import numpy as np

from fleet.engines import KOKORO_VOICES, WHISPER_LANGUAGES, accepted_languages, accepted_voices
from fleet.model_paths import model_paths
from fleet.settings import Settings


def test_the_languages_are_those_of_the_assembled_whisper_model() -> None:
    config = json.loads((model_paths(Settings()).whisper_base / "config.json").read_text())
    vocabulary = json.loads((model_paths(Settings()).whisper_base / "tokenizer.json").read_text())[
        "added_tokens"
    ]
    tokens = {token["id"]: token["content"] for token in vocabulary}
    known = {tokens[i].strip("<|>") for i in config["lang_ids"]}
    assert set(WHISPER_LANGUAGES) == known
    assert len(WHISPER_LANGUAGES) == len(known) == 99


def test_the_voices_are_those_of_the_assembled_kokoro_voices_file() -> None:
    with np.load(model_paths(Settings()).kokoro_voices) as voices:
        assert sorted(KOKORO_VOICES) == sorted(voices.files)


def test_settings_replace_the_lists() -> None:
    assert accepted_languages(Settings(stt_languages="en, de")) == ("en", "de")
    assert accepted_voices(Settings(tts_voice_names="a,b")) == ("a", "b")
    assert accepted_voices(Settings(tts_provider="piper")) is None  # Piper speaks any name
    assert Settings().stt_language in accepted_languages(Settings())
    voices = accepted_voices(Settings())
    assert voices is not None and Settings().tts_voice in voices
