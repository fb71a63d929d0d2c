"""A gateway's limits on what one client may do, refused with documented errors and close codes.

A gateway process on the real broker and Redis, and no workers: everything here is decided
before a session would need one (docs/security.md, "Limits").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator

import aio_pika
import httpx
import pytest
import websockets

from fleet.engines import KOKORO_VOICES, WHISPER_LANGUAGES
from fleet.state import ProviderOffer, TtsOffer, TtsOffers, connect_redis
from fleet.topology import Names
from tests.fleet_processes import Fleet, running_fleet

START = {"type": "start", "format": "pcm_s16le", "sampleRate": 16000, "channels": 1}
START_TIMEOUT_S = 2.0
ERROR_BUDGET = 3


@pytest.fixture(scope="module")
def gateway() -> Iterator[Fleet]:
    with running_fleet(
        "gateway-limits",
        stt=0,
        llm=0,
        tts=0,
        start_timeout_s=str(START_TIMEOUT_S),
        error_budget=str(ERROR_BUDGET),
    ) as fleet:
        yield fleet


async def errors_and_close(
    ws: websockets.ClientConnection, patience: float = 30.0
) -> tuple[list[dict[str, object]], int | None]:
    """Every ``error`` event until the server closes the connection, and its close code."""
    errors: list[dict[str, object]] = []
    with contextlib.suppress(websockets.ConnectionClosed):
        async with asyncio.timeout(patience):
            async for reply in ws:
                if isinstance(reply, str) and json.loads(reply)["type"] == "error":
                    errors.append(json.loads(reply))
    return errors, ws.close_code


async def test_a_socket_that_sends_nothing_is_closed_within_the_start_deadline(
    gateway: Fleet,
) -> None:
    async with websockets.connect(gateway.ws_url) as ws:
        opened = time.monotonic()
        # Waits past the deadline by a margin: a gateway without one never closes, and fails here.
        errors, close_code = await errors_and_close(ws, patience=START_TIMEOUT_S + 10)
        waited = time.monotonic() - opened
    assert [e["code"] for e in errors] == ["start_timeout"]
    assert close_code == 1008
    assert waited >= START_TIMEOUT_S - 0.5


async def test_recoverable_errors_beyond_the_budget_close_the_connection(gateway: Fleet) -> None:
    async with websockets.connect(gateway.ws_url) as ws:
        for _ in range(ERROR_BUDGET + 1):
            await ws.send("not json")
        errors, close_code = await errors_and_close(ws)
    assert [e["code"] for e in errors] == ["bad_message"] * ERROR_BUDGET + ["too_many_errors"]
    assert close_code == 1008


async def nothing_was_started(fleet: Fleet) -> None:
    """No session was offered to a recognizer, none dead-lettered, nothing written to Redis."""
    names = Names(fleet.settings.namespace)
    async with await aio_pika.connect(fleet.settings.amqp_url) as connection:
        channel = await connection.channel()
        for queue in (names.stt_sessions, names.dead_letter_queue):
            declared = await channel.declare_queue(queue, passive=True)
            assert declared.declaration_result.message_count == 0, queue
    redis = connect_redis(fleet.settings)
    try:
        assert await redis.keys(f"{fleet.settings.namespace}:*") == []
    finally:
        await redis.aclose()


async def test_a_locale_instead_of_a_language_is_refused_at_start_and_nothing_starts(
    gateway: Fleet,
) -> None:
    async with websockets.connect(gateway.ws_url) as ws:
        await ws.send(json.dumps({**START, "language": "en-US"}))
        errors, close_code = await errors_and_close(ws)
    assert [e["code"] for e in errors] == ["unsupported_language"]
    assert close_code == 1003
    message = str(errors[0]["message"])
    assert "'en-US'" in message
    assert all(code in message.split(": ", 1)[1].split(", ") for code in WHISPER_LANGUAGES)
    await nothing_was_started(gateway)


async def test_an_unknown_voice_is_refused_at_start_naming_the_voices(gateway: Fleet) -> None:
    async with websockets.connect(gateway.ws_url) as ws:
        await ws.send(json.dumps({**START, "voice": "darth_vader", "language": "en"}))
        errors, close_code = await errors_and_close(ws)
    assert [e["code"] for e in errors] == ["unknown_voice"]
    assert close_code == 1003
    assert str(errors[0]["message"]).split(": ", 1)[1].split(", ") == list(KOKORO_VOICES)
    await nothing_was_started(gateway)


async def test_a_voice_the_tts_provider_does_not_offer_is_refused_naming_its_voices(
    gateway: Fleet,
) -> None:
    """With a TTS worker's offer published, its provider's voices are the ones accepted: a
    Kokoro name the static list has but the provider does not is refused."""
    offers = TtsOffers(connect_redis(gateway.settings), gateway.settings)
    remote = ProviderOffer("remote", "kokoro", "0.4.2", "ok", voices=("af_heart", "bf_emma"))
    local = ProviderOffer("local", "kokoro", "0.6.1", "ok", voices=KOKORO_VOICES)
    await offers.publish(TtsOffer("tts-offering", "remote", (remote, local)), 30)
    try:
        async with websockets.connect(gateway.ws_url) as ws:
            await ws.send(json.dumps({**START, "voice": "am_adam", "language": "en"}))
            errors, close_code = await errors_and_close(ws)
    finally:
        await offers.withdraw("tts-offering")
        await offers.redis.aclose()
    assert [e["code"] for e in errors] == ["unknown_voice"]
    assert close_code == 1003
    assert errors[0]["message"] == (
        "unknown voice 'am_adam'; the TTS provider kokoro 0.4.2 (remote) offers: af_heart, bf_emma"
    )
    await nothing_was_started(gateway)


async def test_the_page_is_told_what_the_tts_workers_offer(gateway: Fleet) -> None:
    """GET /tts/providers: the engine's list while no worker has published; then the worker's
    providers, versions and health, and its speaking provider's voices, without the reasons
    for ill health (they name internal addresses)."""
    url = f"{gateway.http_url}/tts/providers"
    async with httpx.AsyncClient() as client:
        before = (await client.get(url)).json()
        assert before == {
            "workers": [],
            "voices": list(KOKORO_VOICES),
            "anyVoice": False,
            "default": "af_heart",
            "source": "the kokoro engine",
        }
        offers = TtsOffers(connect_redis(gateway.settings), gateway.settings)
        down = "provider server http://10.0.0.7:8090 is not healthy: ConnectError"
        remote = ProviderOffer("remote", "kokoro", "0.4.2", "down", down, ("af_heart",))
        piper = ProviderOffer("local", "piper", "1.3.0", "ok", "", ("en_US-joe-medium",), True)
        await offers.publish(TtsOffer("tts-7", "local", (remote, piper)), 30)
        try:
            after = (await client.get(url)).json()
        finally:
            await offers.withdraw("tts-7")
            await offers.redis.aclose()
    assert after == {
        "workers": [
            {
                "worker": "tts-7",
                "active": "local",
                "providers": [
                    {"label": "remote", "engine": "kokoro", "version": "0.4.2", "health": "down"},
                    {"label": "local", "engine": "piper", "version": "1.3.0", "health": "ok"},
                ],
            }
        ],
        "voices": ["en_US-joe-medium"],
        "anyVoice": True,
        "default": "af_heart",
        "source": "the TTS provider piper 1.3.0 (local)",
    }


async def test_connections_per_address_are_capped(gateway: Fleet) -> None:
    with gateway.extra_gateway(
        "gateway-per-ip", VF_MAX_CONNECTIONS_PER_IP="2", VF_START_TIMEOUT_S="60"
    ) as url:
        async with websockets.connect(url) as first, websockets.connect(url):
            async with websockets.connect(url) as third:
                errors, close_code = await errors_and_close(third)
            assert [e["code"] for e in errors] == ["too_many_connections"]
            assert close_code == 1008

            # One closed (its slot freed before its close frame went out): the next gets in.
            await first.send(json.dumps({"type": "stop"}))
            assert (await errors_and_close(first)) == ([], 1000)
            async with websockets.connect(url) as fourth:
                await fourth.send("not json")
                reply = json.loads(await asyncio.wait_for(fourth.recv(), 10))
            assert reply["code"] == "bad_message"  # served: its input was read


async def test_behind_a_trusted_proxy_each_forwarded_address_counts_on_its_own(
    gateway: Fleet,
) -> None:
    """The test connects from 127.0.0.1, VF_TRUSTED_PROXIES' default: as a proxy would, it names
    the client in X-Forwarded-For, and the cap counts that address."""
    with gateway.extra_gateway(
        "gateway-proxied",
        VF_MAX_CONNECTIONS_PER_IP="1",
        VF_START_TIMEOUT_S="60",
        VF_TRUSTED_PROXIES="127.0.0.1",
    ) as url:

        def from_(address: str) -> websockets.connect:
            return websockets.connect(url, additional_headers={"X-Forwarded-For": address})

        async with from_("203.0.113.7"), from_("203.0.113.8") as other:
            await other.send("not json")
            reply = json.loads(await asyncio.wait_for(other.recv(), 10))
            assert reply["code"] == "bad_message"  # served, not refused
            async with from_("203.0.113.7") as again:
                errors, close_code = await errors_and_close(again)
            assert [e["code"] for e in errors] == ["too_many_connections"]
            assert close_code == 1008
