"""The provider server (`voicefleet tts-provider`), a real process with the real Kokoro model,
through its HTTP API (docs/tts-providers.md) and through the official `openai` client."""

from __future__ import annotations

import asyncio
import base64
import importlib.metadata
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from fleet.model_paths import kokoro_locations
from fleet.settings import Settings
from tests.relay import Relay
from tests.role_processes import logged
from tests.tts_provider_servers import ProviderServer, provider_server
from workers.tts.providers import SpeechSynthesizer, create_synthesizer
from workers.tts.providers.openai_speech import OpenAISpeechSynthesizer
from workers.tts.providers.remote import from_settings as remote_provider

pytestmark = pytest.mark.timeout(180)

SENTENCE = "The weather is lovely today, so let's go for a walk."


@pytest.fixture(scope="module")
def server() -> Iterator[ProviderServer]:
    with provider_server("kokoro") as running:
        yield running


@pytest.fixture(scope="module")
def in_process() -> SpeechSynthesizer:
    return create_synthesizer(Settings())


@pytest.fixture(scope="module")
def reference(in_process: SpeechSynthesizer) -> bytes:
    """SENTENCE spoken by Kokoro in this process: Kokoro gives the same bytes for the same
    text every time (tests/integration/test_kokoro_provider.py), so the server must too."""

    async def speak() -> bytes:
        return b"".join([pcm async for pcm in in_process.stream(SENTENCE, "af_heart")])

    return asyncio.run(speak())


def test_health_names_provider_version_model_and_device(server: ProviderServer) -> None:
    health = httpx.get(f"{server.url}/tts/health").json()
    assert health == {
        "status": "ok",
        "provider": "kokoro",
        "version": importlib.metadata.version("voicefleet"),
        "engine_version": importlib.metadata.version("kokoro-onnx"),
        "model": " ".join(Path(path).name for path in kokoro_locations(Settings())),
        "device": "cpu",
        "sample_rate": 24000,
    }


def test_status_reports_the_loaded_model_its_size_and_memory(server: ProviderServer) -> None:
    status = httpx.get(f"{server.url}/tts/status").json()
    assert status["model_loaded"] is True
    model, voices = (Path(path) for path in kokoro_locations(Settings()))
    assert status["model_bytes"] == {
        model.name: model.stat().st_size,
        voices.name: voices.stat().st_size,
    }
    assert status["gpu_available"] is False
    assert status["memory_used_bytes"] > model.stat().st_size


def test_voices_are_kokoros(server: ProviderServer) -> None:
    voices = httpx.get(f"{server.url}/tts/voices").json()
    assert voices["default"] == "af_heart"
    assert len(voices["voices"]) == 54 and "bf_emma" in voices["voices"]


def test_stream_is_the_speech_kokoro_makes_in_process(
    server: ProviderServer, reference: bytes
) -> None:
    with httpx.stream(
        "POST", f"{server.url}/tts/stream", json={"text": SENTENCE, "voice": "af_heart"}
    ) as response:
        assert response.status_code == 200
        assert response.headers["x-sample-rate"] == "24000"
        assert response.headers["content-type"] == "audio/pcm"
        audio = b"".join(response.iter_bytes())
    assert audio == reference


def test_stream_sends_the_first_part_before_the_rest_is_synthesized(
    server: ProviderServer,
) -> None:
    # Several of Kokoro's phoneme batches: the first comes while the later ones are synthesized.
    long_text = " ".join(["This sentence goes on and on for quite a while, and then"] * 12) + "."
    since = len(server.process.log_events())
    with httpx.stream(
        "POST", f"{server.url}/tts/stream", json={"text": long_text}, timeout=120
    ) as response:
        pieces = response.iter_bytes()
        assert next(pieces)
        assert not logged_since(server, "tts_stream_done", since), "the server had finished"
        assert b"".join(pieces)
    done = asyncio.run(logged(server.process, "tts_stream_done", patience=30, since=since))
    assert isinstance(done["parts"], int) and done["parts"] >= 2, "sent in one part"


def logged_since(server: ProviderServer, event: str, since: int) -> bool:
    return any(e.get("event") == event for e in server.process.log_events()[since:])


def test_generate_returns_the_whole_clip_in_base64(
    server: ProviderServer, reference: bytes
) -> None:
    clip = httpx.post(
        f"{server.url}/tts/generate", json={"text": SENTENCE, "voice": "af_heart", "seed": 7}
    ).json()
    assert base64.b64decode(clip["audio"]) == reference
    assert clip["encoding"] == "pcm_s16le"
    assert clip["sample_rate"] == 24000
    assert clip["duration"] == pytest.approx(len(reference) / 2 / 24000, abs=0.001)


def test_speed_and_language_apply_per_request(server: ProviderServer, reference: bytes) -> None:
    fast = httpx.post(f"{server.url}/tts/generate", json={"text": SENTENCE, "speed": 1.5}).json()
    assert fast["duration"] < 0.8 * len(reference) / 2 / 24000
    french = {"text": "Quelle est la capitale de la France ?", "voice": "ff_siwis"}
    as_french = httpx.post(f"{server.url}/tts/generate", json={**french, "language": "fr-fr"})
    as_english = httpx.post(f"{server.url}/tts/generate", json={**french, "language": "en-us"})
    assert as_french.json()["audio"] != as_english.json()["audio"]


def test_an_unknown_voice_is_refused_with_the_list(server: ProviderServer) -> None:
    response = httpx.post(f"{server.url}/tts/stream", json={"text": SENTENCE, "voice": "nobody"})
    assert response.status_code == 400
    assert response.json()["detail"].startswith("unknown Kokoro voice 'nobody'; available: af_")


@pytest.mark.parametrize(
    "body", [{"text": ""}, {"text": "x" * 4097}, {"text": "hi", "speed": 0}, {"words": "hi"}]
)
def test_malformed_requests_are_refused_and_the_server_carries_on(
    server: ProviderServer, body: dict[str, object]
) -> None:
    assert httpx.post(f"{server.url}/tts/stream", json=body).status_code == 422
    assert httpx.get(f"{server.url}/tts/health").status_code == 200


def test_openapi_pages_describe_the_api(server: ProviderServer) -> None:
    assert httpx.get(f"{server.url}/docs").status_code == 200
    paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    assert {
        "/tts/stream",
        "/tts/generate",
        "/tts/health",
        "/tts/status",
        "/tts/voices",
        "/v1/audio/speech",
    } <= set(paths)


# --- the OpenAI Audio API, through the official client -------------------------------------


def openai_client(server: ProviderServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)


def test_openai_client_gets_pcm(server: ProviderServer, reference: bytes) -> None:
    speech = openai_client(server).audio.speech.create(
        model="kokoro", voice="af_heart", input=SENTENCE, response_format="pcm"
    )
    assert speech.content == reference


def test_openai_client_gets_wav(server: ProviderServer, reference: bytes) -> None:
    speech = openai_client(server).audio.speech.create(
        model="kokoro", voice="af_heart", input=SENTENCE, response_format="wav"
    )
    assert speech.content[:4] == b"RIFF" and speech.content[8:16] == b"WAVEfmt "
    assert int.from_bytes(speech.content[24:28], "little") == 24000
    assert speech.content[44:] == reference


def test_openai_voice_names_map_to_kokoros(server: ProviderServer) -> None:
    client = openai_client(server)
    alloy = client.audio.speech.create(
        model="kokoro", voice="alloy", input="Hi.", response_format="pcm"
    )
    af_alloy = client.audio.speech.create(
        model="kokoro", voice="af_alloy", input="Hi.", response_format="pcm"
    )
    assert alloy.content == af_alloy.content


def test_openai_client_is_told_which_formats_exist(server: ProviderServer) -> None:
    with pytest.raises(openai.BadRequestError, match="use pcm or wav"):
        openai_client(server).audio.speech.create(
            model="kokoro", voice="af_heart", input=SENTENCE, response_format="mp3"
        )


async def test_the_openai_provider_streams_from_the_server(
    server: ProviderServer, reference: bytes
) -> None:
    provider = OpenAISpeechSynthesizer(f"{server.url}/v1", "kokoro", "none", 30.0)
    try:
        audio = b"".join([pcm async for pcm in provider.stream(SENTENCE, "af_heart")])
        assert audio == reference
        with pytest.raises(ValueError, match="unknown Kokoro voice 'nobody'"):
            async for _ in provider.stream(SENTENCE, "nobody"):
                pass
    finally:
        await provider.aclose()


async def test_a_sentence_whose_connection_the_server_closed_is_sent_again(
    server: ProviderServer, reference: bytes
) -> None:
    # The server closes the connection the second sentence arrives on, unanswered, as a server
    # closing an idle kept-alive connection just as a request arrives on it does.
    relay = Relay("127.0.0.1", httpx.URL(server.url).port or 80)
    relay.start()
    provider = remote_provider(Settings(tts_provider_url=f"http://127.0.0.1:{relay.port}"))

    async def speak() -> bytes:
        return b"".join([pcm async for pcm in provider.stream(SENTENCE, "af_heart")])

    try:
        assert await speak() == reference
        relay.drop_next_request = True
        assert await speak() == reference
    finally:
        await provider.aclose()
        relay.stop()
    assert not relay.drop_next_request, "no request was dropped"
