"""Only clients with a valid token, from allowed pages, get in (docs/security.md).

Against real gateway processes of the e2e fleet: one with signed tokens (HS256) and the token
endpoint, one that checks RS256 tokens of another issuer with a public key, and the fleet's own
open loopback gateway for the Origin and page checks.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import websockets
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from fleet.state import connect_redis
from tests.browser import CHROMIUM_NAMES, Browser, find_chromium, write_wav
from tests.fleet_processes import ARTIFACTS, ROOT, Fleet, free_port
from tests.prerequisites import require
from tests.speech import RATE, silence
from tests.voice_turns import voice_turn
from voicefleet.client import SessionRefused, VoiceClient

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

JWT_SECRET = "e2e-jwt-secret-" + "x" * 64
API_KEY = "e2e-api-key-0123456789"
ALLOWED_APP = "https://app.example.com"


@dataclass(frozen=True)
class Gateway:
    ws_url: str
    http_url: str
    log: str  # the process's name in the fleet


@pytest.fixture(scope="module")
def signed(fleet: Fleet) -> Iterator[Gateway]:
    """A gateway that requires HS256 tokens and issues them behind an API key."""
    with fleet.extra_gateway(
        "gateway-jwt",
        VF_AUTH_JWT_SECRET=JWT_SECRET,
        VF_AUTH_API_KEY=API_KEY,
        VF_AUTH_TOKEN_TTL_S="600",
        VF_ALLOWED_ORIGINS=ALLOWED_APP,
    ) as url:
        yield Gateway(url, url.replace("ws://", "http://").removesuffix("/ws/audio"), "gateway-jwt")


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "sub": "e2e-user",
        "iss": "voicefleet",
        "aud": "voicefleet-gateway",
        "iat": now,
        "exp": now + 300,
    }
    base.update(overrides)
    return base


async def namespace_keys(fleet: Fleet) -> set[str]:
    redis = connect_redis(fleet.settings)
    try:
        return {
            key.decode() if isinstance(key, bytes) else str(key)
            async for key in redis.scan_iter(match=f"{fleet.settings.namespace}:*", count=1000)
        }
    finally:
        await redis.aclose()


async def request_token(gateway: Gateway, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(trust_env=False) as http:
        return await http.post(
            f"{gateway.http_url}/v1/tokens", json={"subject": "e2e-user"}, headers=headers
        )


# --- signed tokens ---------------------------------------------------------------------------


async def test_the_token_endpoint_needs_the_api_key(signed: Gateway) -> None:
    missing = await request_token(signed)
    assert missing.status_code == 401, missing.text
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = await request_token(signed, Authorization="Bearer wrong-api-key-0123456789")
    assert wrong.status_code == 403, wrong.text
    for response in (missing, wrong):
        assert "token" not in response.json()


async def test_a_token_from_the_endpoint_opens_a_session_and_a_turn_works(
    fleet: Fleet, signed: Gateway
) -> None:
    issued = await request_token(signed, Authorization=f"Bearer {API_KEY}")
    assert issued.status_code == 200, issued.text
    body = issued.json()
    assert body["subject"] == "e2e-user"
    assert 590 <= body["expiresAt"] - time.time() <= 600
    assert issued.headers["cache-control"] == "no-store"
    client = VoiceClient(signed.ws_url)
    try:
        ready = await client.connect(token=body["token"])
        assert ready["type"] == "ready"
        turn = await voice_turn(client)
        assert {"capital", "france"} <= set(turn.heard.lower().replace("?", "").split())
        assert turn.reply.strip()
        assert not client.events("error"), client.events("error")
    finally:
        await client.close()
    # The connection is the token's subject's, in the log; the token and the keys are not there.
    log = fleet.processes[signed.log].log_path.read_text(errors="replace")
    started = [
        e
        for e in fleet.processes[signed.log].log_events()
        if e.get("event") == "session_started" and e.get("session_id") == client.session_id
    ]
    assert started and started[0]["subject"] == "e2e-user", started
    for secret in (body["token"], API_KEY, JWT_SECRET, client.resume_secret):
        assert secret not in log


@pytest.mark.parametrize(
    ("token", "code", "message"),
    [
        (None, "unauthorized", "requires a token"),
        (
            jwt.encode(claims(iat=int(time.time()) - 900, exp=int(time.time()) - 600), JWT_SECRET),
            "token_expired",
            "expired",
        ),
        (jwt.encode(claims(), "another-secret-" + "y" * 64), "unauthorized", "bad signature"),
        (jwt.encode(claims(), JWT_SECRET, "HS512"), "unauthorized", "algorithm not accepted"),
        (jwt.encode(claims(), "", "none"), "unauthorized", "algorithm not accepted"),
    ],
    ids=["missing", "expired", "forged", "wrong-alg", "alg-none"],
)
async def test_a_refused_token_closes_1008_and_writes_nothing_to_redis(
    fleet: Fleet, signed: Gateway, token: str | None, code: str, message: str
) -> None:
    before = await namespace_keys(fleet)
    client = VoiceClient(signed.ws_url)
    with pytest.raises(SessionRefused) as refused:
        await client.connect(**({} if token is None else {"token": token}))
    await client.wait_for("closed", timeout=10)
    await client.close()
    assert refused.value.code == code
    (error,) = client.events("error")
    assert message in error["message"]
    assert client.close_code == 1008
    assert [r.kind for r in client.received] == ["error", "closed"]
    assert await namespace_keys(fleet) == before
    if token is not None:
        log = fleet.processes[signed.log].log_path.read_text(errors="replace")
        assert token not in log


async def test_rs256_tokens_of_another_issuer_are_checked_with_its_public_key(
    fleet: Fleet,
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with fleet.extra_gateway(
        "gateway-rs256",
        VF_AUTH_JWT_ALGORITHM="RS256",
        VF_AUTH_JWT_PUBLIC_KEY=public.decode(),
        VF_AUTH_JWT_ISSUER="https://id.example.com",
        VF_AUTH_JWT_AUDIENCE="voice",
    ) as url:
        mine = claims(sub="rs-user", iss="https://id.example.com", aud="voice")
        client = VoiceClient(url)
        try:
            ready = await client.connect(token=jwt.encode(mine, private, "RS256"))
            assert ready["type"] == "ready"
        finally:
            await client.close()
        before = await namespace_keys(fleet)
        # Signed with the same key but for another audience, or as HS256 with a guessable key.
        for token in (
            jwt.encode({**mine, "aud": "voicefleet-gateway"}, private, "RS256"),
            jwt.encode(mine, "z" * 64, "HS256"),
        ):
            refused = VoiceClient(url)
            with pytest.raises(SessionRefused, match="unauthorized"):
                await refused.connect(token=token)
            await refused.wait_for("closed", timeout=10)
            await refused.close()
            assert refused.close_code == 1008
        assert await namespace_keys(fleet) == before
        # No token endpoint without an API key.
        http_url = url.replace("ws://", "http://").removesuffix("/ws/audio")
        async with httpx.AsyncClient(trust_env=False) as http:
            off = await http.post(f"{http_url}/v1/tokens", json={"subject": "x"})
        assert off.status_code == 404


# --- listening in the open ---------------------------------------------------------------------


def test_a_gateway_on_every_interface_without_auth_refuses_to_start(fleet: Fleet) -> None:
    env = {
        **fleet.env,
        "VF_GATEWAY_HOST": "0.0.0.0",
        "VF_GATEWAY_PORT": str(free_port()),
        "VF_WORKER_ID": "gateway-open",
    }
    for name in ("VF_AUTH_TOKEN", "VF_AUTH_JWT_SECRET", "VF_AUTH_JWT_PUBLIC_KEY"):
        env.pop(name, None)
    env.pop("VF_ALLOW_ANONYMOUS", None)
    done = subprocess.run(
        [sys.executable, "-m", "voicefleet.cli", "gateway"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, (done.returncode, done.stderr[-3000:])
    assert "refusing to listen on 0.0.0.0" in done.stderr
    assert "VF_ALLOW_ANONYMOUS=true" in done.stderr
    assert "VF_AUTH_JWT_SECRET" in done.stderr


def test_an_explicit_allow_anonymous_lets_it_listen_on_every_interface(fleet: Fleet) -> None:
    with fleet.extra_gateway(
        "gateway-anonymous", VF_GATEWAY_HOST="0.0.0.0", VF_ALLOW_ANONYMOUS="true"
    ) as url:
        readyz = httpx.get(
            url.replace("ws://", "http://").replace("/ws/audio", "/readyz"), trust_env=False
        )
        assert readyz.status_code == 200


# --- origins and the page ----------------------------------------------------------------------


async def test_a_page_of_another_origin_gets_403_before_the_upgrade(fleet: Fleet) -> None:
    before = await namespace_keys(fleet)
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(fleet.ws_url, origin=websockets.Origin("https://evil.example"))
    assert refused.value.response.status_code == 403
    assert await namespace_keys(fleet) == before
    events = fleet.processes["gateway-1"].log_events()
    assert any(
        e.get("event") == "origin_refused" and e.get("origin") == "https://evil.example"
        for e in events
    )


@pytest.mark.parametrize("origin", ["same", None], ids=["same-origin", "no-origin"])
async def test_the_own_origin_and_programs_without_origin_get_in(
    fleet: Fleet, origin: str | None
) -> None:
    own = websockets.Origin(fleet.http_url) if origin == "same" else None
    async with websockets.connect(fleet.ws_url, origin=own) as ws:
        await ws.send('{"type": "stop"}')
        await ws.wait_closed()
        assert ws.close_code == 1000


async def test_an_allowed_origin_gets_in_and_others_do_not(signed: Gateway) -> None:
    issued = await request_token(signed, Authorization=f"Bearer {API_KEY}")
    token = issued.json()["token"]
    async with websockets.connect(signed.ws_url, origin=websockets.Origin(ALLOWED_APP)) as ws:
        await ws.send(
            '{"type": "start", "format": "pcm_s16le", "sampleRate": 16000, "channels": 1, '
            f'"token": "{token}"}}'
        )
        assert '"ready"' in str(await ws.recv())
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(
            signed.ws_url, origin=websockets.Origin("https://app.example.com.evil.example")
        )
    assert refused.value.response.status_code == 403


def test_the_page_says_it_talks_only_to_its_own_origin(fleet: Fleet) -> None:
    page = httpx.get(f"{fleet.http_url}/", trust_env=False)
    assert page.status_code == 200
    policy = page.headers["content-security-policy"]
    directives = dict(d.strip().partition(" ")[::2] for d in policy.split(";"))
    host = fleet.http_url.removeprefix("http://")
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'"
    assert directives["connect-src"] == f"'self' ws://{host} wss://{host}"
    assert page.headers["referrer-policy"] == "no-referrer"
    # The page has no inline script and no way to be pointed at another server.
    assert "<script>" not in page.text and '<script type="module">' not in page.text
    script = httpx.get(f"{fleet.http_url}/static/app.js", trust_env=False).text
    assert "params.get('ws')" not in script and "ws-url" not in page.text


async def test_the_page_takes_its_token_from_the_fragment_and_hides_it(
    signed: Gateway, tmp_path: Path
) -> None:
    """The production path (docs/security.md): the app links to the page with ``#token=...``.
    The page starts a session with it, and the token leaves the address bar; without a token
    the same page is told ``unauthorized``."""
    require("browser", None if find_chromium() else f"no Chromium ({', '.join(CHROMIUM_NAMES)})")
    issued = await request_token(signed, Authorization=f"Bearer {API_KEY}")
    token = issued.json()["token"]
    wav = write_wav(tmp_path / "quiet.wav", silence(1.0), RATE)
    browser = Browser(fake_audio=wav, log_path=ARTIFACTS / "browser" / "chromium-token.log")
    async with browser:
        await browser.navigate(f"{signed.http_url}/?autostart=1&new=1#token={token}")
        await browser.wait_for(
            "window.voicefleet && voicefleet.state === 'ready' && voicefleet.sessionId", seconds=30
        )
        assert token not in await browser.evaluate("location.href")
        sent = await browser.evaluate_json("voicefleet.sent.startMessages")
        assert sent[0]["token"] == "***"  # the page's own record masks it
        await browser.evaluate("voicefleet.stop()")
        await browser.wait_for("voicefleet.state === 'idle'", seconds=15)
        await browser.evaluate("sessionStorage.clear()")
        await browser.navigate(f"{signed.http_url}/?autostart=1&new=1")
        refused = await browser.wait_for(
            "voicefleet.errors.length > 0 && voicefleet.closes.length > 0 && "
            "JSON.stringify([voicefleet.errors[0].code, voicefleet.closes[0].code])",
            seconds=30,
        )
        assert refused == '["unauthorized",1008]'
