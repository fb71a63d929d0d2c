"""A TTS worker process speaking through providers other than its own engine (VF_TTS_PROVIDERS):
a provider server process, failover to the local engine when that server dies mid-sentence, and
the version range. Real broker, Redis, Kokoro and processes throughout.

What a sentence should sound like is known exactly: Kokoro gives the same bytes for the same text
in every process (tests/integration/test_kokoro_provider.py), so the audio a worker publishes is
compared, byte for byte, with the sentence spoken here by the worker's own chunking.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest

from fleet.contracts import AudioOut, TtsRequest, TurnFailed
from fleet.settings import Settings
from fleet.state import SessionStore, TtsOffer, TtsOffers
from fleet.topology import Bus
from tests.event_tap import EventTap
from tests.fleet_processes import FleetProcess, free_port
from tests.role_processes import logged, role_processes, start_role
from tests.tts_provider_servers import ProviderServer, provider_server
from workers.tts.chunks import speech_chunks
from workers.tts.providers import (
    SpeechSynthesizer,
    create_synthesizer,
    cuda_present,
    provider_list,
    speaking_synthesizer,
)
from workers.tts.providers.chain import ProviderChain
from workers.tts.providers.remote import RemoteSynthesizer

pytestmark = pytest.mark.timeout(300)

SENTENCE = "The weather is lovely today, so let's go for a walk."
# More than one of Kokoro's phoneme batches (510 phonemes): the server streams it in parts, so
# it can be killed after sending the first and before the last.
LONG_SENTENCE = " ".join(["This sentence goes on and on for quite a while, and then"] * 12) + "."
WORKER_START_S = 120.0


@pytest.fixture(scope="module")
def server() -> Iterator[ProviderServer]:
    with provider_server("kokoro") as running:
        yield running


@pytest.fixture(scope="module")
def in_process() -> SpeechSynthesizer:
    return create_synthesizer(Settings())


async def as_published(synthesizer: SpeechSynthesizer, text: str) -> list[bytes]:
    """The chunks a TTS worker publishes for ``text`` spoken by ``synthesizer``."""
    return [pcm async for pcm, _ in speech_chunks(synthesizer, text, "af_heart", 200)]


@pytest.fixture
async def session(store: SessionStore) -> str:
    session_id = uuid.uuid4().hex
    await store.open_session(session_id, "gateway-test", "stream-1", "digest")
    return session_id


@pytest.fixture
def processes(settings: Settings) -> Iterator[list[FleetProcess]]:
    with role_processes(settings) as started:
        yield started


async def start_tts_worker(
    processes: list[FleetProcess], settings: Settings, **env: str
) -> FleetProcess:
    worker = start_role(processes, settings, "tts", "worker", "tts", **env)
    await logged(worker, "serving", patience=WORKER_START_S)
    return worker


async def spoken(
    bus: Bus, tap: EventTap, store: SessionStore, session: str, text: str
) -> list[AudioOut]:
    turn = await store.next_turn(session)
    await bus.publish(TtsRequest(session, turn, 0, text, "af_heart"))
    await tap.wait_for(AudioOut, lambda m: m.last, timeout=180)
    await tap.caught_up(bus, session)
    return tap.of(AudioOut, session)


async def offered(
    store: SessionStore, settings: Settings, worker: str, wanted: Callable[[TtsOffer], bool]
) -> TtsOffer:
    """The offer ``worker`` has published in Redis, once it is as ``wanted``."""
    offers = TtsOffers(store.redis, settings)
    async with asyncio.timeout(30):
        # The worker writes Redis: there is nothing to wait on but the record itself.
        while True:
            offer = next((o for o in await offers.current() if o.worker == worker), None)
            if offer is not None and wanted(offer):
                return offer
            await asyncio.sleep(0.1)


def speaking_health(offer: TtsOffer) -> str:
    return offer.speaking.health if offer.speaking is not None else "none"


async def test_a_tts_worker_speaks_through_a_provider_server(
    settings: Settings,
    bus: Bus,
    store: SessionStore,
    session: str,
    server: ProviderServer,
    in_process: SpeechSynthesizer,
    processes: list[FleetProcess],
) -> None:
    worker = await start_tts_worker(
        processes, settings, VF_TTS_PROVIDERS="remote", VF_TTS_PROVIDER_URL=server.url
    )
    tap = await EventTap.open(bus, session)
    served = sum(e.get("event") == "tts_stream_done" for e in server.process.log_events())
    audio = await spoken(bus, tap, store, session, SENTENCE)
    assert [m.pcm for m in audio] == await as_published(in_process, SENTENCE)
    assert [m.chunk for m in audio] == list(range(len(audio)))
    # The server spoke it (the warm-up's "Hello." and this sentence), not a local engine.
    assert sum(e.get("event") == "tts_stream_done" for e in server.process.log_events()) > served
    loaded = await logged(worker, "tts_provider_loaded", patience=1)
    assert "remote " in str(loaded["version"])
    # What it speaks with is published for the gateway: the server's engine, version, voices.
    offer = await offered(store, settings, "tts", lambda o: speaking_health(o) == "ok")
    async with httpx.AsyncClient() as client:
        version = (await client.get(f"{server.url}/tts/health")).json()["version"]
    assert offer.active == "remote"
    (remote,) = offer.providers
    assert (remote.label, remote.engine, remote.version) == ("remote", "kokoro", version)
    assert len(remote.voices) == 54 and "bf_emma" in remote.voices and not remote.any_voice
    # Stopped, it withdraws the offer at once (a killed one's expires).
    assert worker.stop() == 0
    assert [o.worker for o in await TtsOffers(store.redis, settings).current()] == []


async def test_the_reply_completes_on_the_local_engine_when_the_provider_server_dies_mid_sentence(
    settings: Settings,
    bus: Bus,
    store: SessionStore,
    session: str,
    in_process: SpeechSynthesizer,
    processes: list[FleetProcess],
) -> None:
    with provider_server("kokoro", name="doomed-tts-provider") as doomed:
        worker = await start_tts_worker(
            processes,
            settings,
            VF_TTS_PROVIDERS="remote,local",
            VF_TTS_PROVIDER_URL=doomed.url,
            # The server is killed after its first part; on a loaded box that part (510
            # phonemes) took over the default 10 s, and the worker timed out before it came.
            VF_TTS_PROVIDER_TIMEOUT_S="60",
        )
        tap = await EventTap.open(bus, session)
        since = len(doomed.process.log_events())
        turn = await store.next_turn(session)
        await bus.publish(TtsRequest(session, turn, 0, LONG_SENTENCE, "af_heart"))
        # The server has sent the sentence's first part and is synthesizing the next: kill it.
        await logged(doomed.process, "tts_first_part_sent", patience=120, since=since)
        doomed.process.kill()
    await tap.wait_for(AudioOut, lambda m: m.last, timeout=180)
    await tap.caught_up(bus, session)
    audio = tap.of(AudioOut, session)
    failover = await logged(worker, "tts_failover", patience=1, provider="remote")
    assert failover["discarded_bytes"], "the server had sent part of the sentence"
    # The whole sentence once, as the local engine speaks it: nothing of the dead server's part
    # repeated, nothing missing.
    assert [m.chunk for m in audio] == list(range(len(audio)))
    assert [m.pcm for m in audio] == await as_published(in_process, LONG_SENTENCE)


async def test_a_provider_server_of_a_version_out_of_range_is_refused(
    settings: Settings, store: SessionStore, server: ProviderServer, processes: list[FleetProcess]
) -> None:
    health_port, metrics_port = free_port(), free_port()
    worker = start_role(
        processes,
        settings,
        "tts",
        "worker",
        "tts",
        VF_TTS_PROVIDERS="remote",
        VF_TTS_PROVIDER_URL=server.url,
        VF_TTS_PROVIDER_VERSION_MIN="9.0.0",
        VF_TTS_PROVIDER_VERSION_MAX="10.0.0",
        VF_HEALTH_PORT=str(health_port),
        VF_METRICS_PORT=str(metrics_port),
    )
    refused = await logged(worker, "tts_provider_refused", patience=WORKER_START_S)
    async with httpx.AsyncClient() as client:
        version = (await client.get(f"{server.url}/tts/health")).json()["version"]
        message = f"reports version {version}; this worker accepts >=9.0.0,<10.0.0"
        assert message in str(refused["reason"])
        await logged(worker, "tts_no_provider_ready", patience=10)
        readiness = await client.get(f"http://127.0.0.1:{health_port}/readyz")
        assert readiness.status_code == 503
        assert message in readiness.text
        metrics = (await client.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
    assert 'vf_tts_provider_refused{provider="remote"} 1.0' in metrics
    # The page and the gateway see it refused, and why.
    offer = await offered(store, settings, "tts", lambda o: speaking_health(o) == "refused")
    assert message in (offer.speaking.detail if offer.speaking else "")
    # Refused, it takes no work: it never starts consuming.
    assert not any(e.get("event") == "serving" for e in worker.log_events())


async def test_a_provider_server_restarted_as_a_version_out_of_range_is_refused_on_reconnecting(
    settings: Settings,
    bus: Bus,
    store: SessionStore,
    session: str,
    processes: list[FleetProcess],
) -> None:
    """The worker accepted the server at start; between two sentences the server is replaced,
    on the same address, by one of the next major version (a restart as another release). At
    its next sentence the worker notices, uses none of its audio, checks it again and refuses
    it: not ready, the metric, the message."""
    port, health_port, metrics_port = free_port(), free_port(), free_port()
    readyz = f"http://127.0.0.1:{health_port}/readyz"
    with provider_server("kokoro", name="tts-provider-before", port=port) as before:
        worker = start_role(
            processes,
            settings,
            "tts",
            "worker",
            "tts",
            VF_TTS_PROVIDERS="remote",
            VF_TTS_PROVIDER_URL=before.url,
            VF_TTS_BREAKER_COOLDOWN_S="1",
            VF_HEALTH_PORT=str(health_port),
            VF_METRICS_PORT=str(metrics_port),
        )
        await logged(worker, "serving", patience=WORKER_START_S)
        async with httpx.AsyncClient() as client:
            assert (await client.get(readyz)).status_code == 200
    with provider_server("kokoro", name="tts-provider-after", port=port, version="1.0.0"):
        tap = await EventTap.open(bus, session)
        turn = await store.next_turn(session)
        await bus.publish(TtsRequest(session, turn, 0, SENTENCE, "af_heart"))
        refused = await logged(worker, "tts_provider_refused", patience=60)
        message = "reports version 1.0.0; this worker accepts >=0.1.0,<1.0.0"
        assert message in str(refused["reason"])
        async with httpx.AsyncClient() as client:
            readiness = await client.get(readyz)
            metrics = (await client.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
        assert readiness.status_code == 503 and message in readiness.text
        assert 'vf_tts_provider_refused{provider="remote"} 1.0' in metrics
        # The sentence is given up (no provider may speak it), and nothing of the refused
        # server's audio reached the session.
        await tap.wait_for(TurnFailed, lambda m: m.session_id == session, timeout=60)
        assert tap.of(AudioOut, session) == []


# --- the chain in this process, against the server: breaker, time-out, auto ----------------


def chain_of(settings: Settings) -> ProviderChain:
    chain = speaking_synthesizer(settings)
    assert isinstance(chain, ProviderChain)
    return chain


async def speak(synthesizer: SpeechSynthesizer, text: str) -> bytes:
    return b"".join([pcm async for pcm in synthesizer.stream(text, "af_heart")])


def streams_served(server: ProviderServer) -> int:
    return sum(e.get("event") == "tts_stream_done" for e in server.process.log_events())


async def test_a_failed_provider_is_skipped_for_the_breaker_cool_down(
    server: ProviderServer, in_process: SpeechSynthesizer
) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    patient = chain_of(
        Settings(tts_providers="remote,local", tts_provider_url=nobody, tts_breaker_cooldown_s=3600)
    )
    assert await speak(patient, SENTENCE) == await speak(in_process, SENTENCE)
    remote = patient.candidates[0]
    assert "not healthy" in remote.down
    # The server comes back at the address: a breaker that is open still skips it.
    assert isinstance(remote.synthesizer, RemoteSynthesizer)
    remote.synthesizer.url = server.url
    served = streams_served(server)
    await speak(patient, SENTENCE)
    assert streams_served(server) == served
    assert patient.active.label == "local"
    # With the cool-down over (here at once), the next sentence checks it and goes to it.
    remote.cooldown_s = 0.0
    remote.closed_until = 0.0
    assert await speak(patient, SENTENCE) == await speak(in_process, SENTENCE)
    assert streams_served(server) == served + 1
    assert patient.active.label == "remote"


async def test_a_provider_slower_than_the_time_out_fails_the_sentence_over(
    server: ProviderServer, in_process: SpeechSynthesizer
) -> None:
    # Kokoro takes far longer than 50 ms to synthesize a sentence.
    hasty = chain_of(
        Settings(
            tts_providers="remote,local", tts_provider_url=server.url, tts_provider_timeout_s=0.05
        )
    )
    assert await speak(hasty, SENTENCE) == await speak(in_process, SENTENCE)
    assert "ReadTimeout" in hasty.candidates[0].down


def test_auto_prefers_a_local_gpu_then_a_configured_remote_then_the_local_engine(
    server: ProviderServer,
) -> None:
    with_remote = provider_list(Settings(tts_providers="auto", tts_provider_url=server.url))
    assert with_remote == (["local"] if cuda_present() else ["remote", "local"])
    assert provider_list(Settings(tts_providers="auto")) == ["local"]


async def test_the_openai_provider_speaks_through_the_servers_openai_api(
    server: ProviderServer, in_process: SpeechSynthesizer
) -> None:
    chain = chain_of(
        Settings(
            tts_providers="openai",
            tts_openai_url=f"{server.url}/v1",
            tts_openai_model="kokoro",
            tts_openai_api_key="none",
        )
    )
    assert await speak(chain, SENTENCE) == await speak(in_process, SENTENCE)
    assert chain.active.label == "openai"
