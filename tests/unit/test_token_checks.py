"""Client tokens, the token-issuing API key and the refusal to listen in the open (gateway/auth.py).

The gateway side of these (a refused ``start`` closes 1008 with nothing written to Redis, the
endpoint, the refusal to start) is tested against a running gateway in tests/e2e/test_auth.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from fleet.errors import ErrorCode
from fleet.settings import Settings
from gateway.auth import (
    STATIC_SUBJECT,
    Authenticator,
    AuthError,
    ConfigError,
    exposure_problem,
    is_loopback,
    same_secret,
)

SECRET = "s" * 64
OTHER_SECRET = "o" * 64
API_KEY = "k" * 24


def settings(**fields: Any) -> Settings:
    return Settings(_env_file=None, **fields)


def hs256(**fields: Any) -> Authenticator:
    return Authenticator(settings(auth_jwt_secret=SECRET, **fields))


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": "user-1",
        "iss": "voicefleet",
        "aud": "voicefleet-gateway",
        "iat": now,
        "exp": now + 300,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def refusal(auth: Authenticator, token: str) -> AuthError:
    with pytest.raises(AuthError) as refused:
        auth.authenticate(token)
    return refused.value


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hmac_signed(payload: dict[str, Any], key: bytes) -> str:
    """An HS256 JWT made by hand, with any bytes as the key (PyJWT refuses PEM keys for HMAC)."""
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(payload).encode())
    signature = hmac.new(key, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{b64(signature)}"


def pem_private(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def pem_public(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


# --- HS256 ---------------------------------------------------------------------------------


def test_an_issued_token_names_its_subject_and_expires() -> None:
    auth = hs256(auth_token_ttl_s=120)
    issued = auth.issue("user-42")
    assert auth.authenticate(issued.token).subject == "user-42"
    decoded = jwt.decode(
        issued.token, SECRET, ["HS256"], audience="voicefleet-gateway", issuer="voicefleet"
    )
    assert decoded["sub"] == "user-42"
    assert decoded["exp"] == issued.expires_at
    assert 115 <= issued.expires_at - time.time() <= 120
    # A request may ask for less than the configured lifetime, never for more.
    assert auth.issue("u", ttl_s=30).expires_at - time.time() <= 30
    assert auth.issue("u", ttl_s=10_000).expires_at - time.time() <= 120


def test_an_expired_token_is_refused_as_expired() -> None:
    auth = hs256()
    issued = auth.issue("user-1", ttl_s=60, now=time.time() - 3600)
    refused = refusal(auth, issued.token)
    assert refused.code == ErrorCode.TOKEN_EXPIRED


# Each token is made when its test runs (a factory, not a value made at collection): made at
# collection, it could expire before a long suite reaches it and be refused for that instead.
@pytest.mark.parametrize(
    ("make_token", "reason"),
    [
        (lambda: jwt.encode(claims(), OTHER_SECRET, "HS256"), "bad signature"),
        (lambda: jwt.encode(claims(), SECRET, "HS512"), "algorithm not accepted"),
        (lambda: jwt.encode(claims(), "", "none"), "algorithm not accepted"),
        (lambda: jwt.encode(claims(iss="someone-else"), SECRET, "HS256"), "wrong issuer"),
        (lambda: jwt.encode(claims(aud="another-service"), SECRET, "HS256"), "wrong audience"),
        (lambda: jwt.encode(claims(exp=None), SECRET, "HS256"), "no 'exp' claim"),
        (lambda: jwt.encode(claims(sub=None), SECRET, "HS256"), "no 'sub' claim"),
        (lambda: jwt.encode(claims(sub=""), SECRET, "HS256"), "empty subject"),
        (lambda: "not.a.token", "malformed"),
        (lambda: "garbage", "malformed"),
    ],
    ids=[
        "forged",
        "wrong-alg",
        "alg-none",
        "issuer",
        "audience",
        "no-exp",
        "no-sub",
        "empty-sub",
        "three-parts",
        "one-part",
    ],
)
def test_a_token_that_is_not_ours_is_refused(make_token: Callable[[], str], reason: str) -> None:
    token = make_token()
    refused = refusal(hs256(), token)
    assert refused.code == "unauthorized"
    assert reason in refused.message
    # The refusal says why, never what the token was.
    assert token not in refused.message


def test_no_token_is_refused_when_auth_is_configured() -> None:
    refused = refusal(hs256(), "")
    assert refused.code == "unauthorized"
    assert "requires a token" in refused.message


def test_without_any_auth_configured_everyone_is_let_in() -> None:
    auth = Authenticator(settings())
    assert not auth.required
    assert auth.authenticate("").subject is None
    assert auth.authenticate("anything").subject is None


# --- the static token --------------------------------------------------------------------------


def test_the_static_token_is_compared_whole() -> None:
    auth = Authenticator(settings(auth_token="static-token-value"))
    assert auth.required
    assert auth.authenticate("static-token-value").subject == STATIC_SUBJECT
    for wrong in ("static-token-valu", "static-token-value2", "STATIC-TOKEN-VALUE", ""):
        assert refusal(auth, wrong).code == "unauthorized", wrong
    assert same_secret("abc", "abc") and not same_secret("abc", "abd")


def test_the_static_token_and_signed_tokens_work_side_by_side() -> None:
    auth = hs256(auth_token="static-token-value")
    assert auth.authenticate("static-token-value").subject == STATIC_SUBJECT
    assert auth.authenticate(auth.issue("user-7").token).subject == "user-7"
    assert refusal(auth, "wrong").code == "unauthorized"


# --- RS256 / ES256 -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def test_rs256_tokens_of_another_issuer_are_checked_with_the_public_key(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    auth = Authenticator(
        settings(auth_jwt_algorithm="RS256", auth_jwt_public_key=pem_public(rsa_key))
    )
    assert auth.required and not auth.issues_tokens
    good = jwt.encode(claims(sub="rsa-user"), pem_private(rsa_key), "RS256")
    assert auth.authenticate(good).subject == "rsa-user"
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(claims(), pem_private(other), "RS256")
    assert "bad signature" in refusal(auth, forged).message
    # Algorithm confusion: the public key (which anyone may have) used as an HMAC secret.
    hmac_token = hmac_signed(claims(), pem_public(rsa_key).encode())
    assert "algorithm not accepted" in refusal(auth, hmac_token).message


def test_es256_keys_from_files_issue_and_verify(
    ec_key: ec.EllipticCurvePrivateKey, tmp_path: Path
) -> None:
    public, private = tmp_path / "public.pem", tmp_path / "private.pem"
    public.write_text(pem_public(ec_key))
    private.write_text(pem_private(ec_key))
    auth = Authenticator(
        settings(
            auth_jwt_algorithm="ES256",
            auth_jwt_public_key=str(public),
            auth_jwt_private_key=str(private),
            auth_api_key=API_KEY,
        )
    )
    issued = auth.issue("ec-user")
    assert jwt.get_unverified_header(issued.token)["alg"] == "ES256"
    assert auth.authenticate(issued.token).subject == "ec-user"
    # An HS256 token is not an ES256 one, whatever it says.
    assert "algorithm not accepted" in refusal(auth, jwt.encode(claims(), SECRET, "HS256")).message


# --- configuration -------------------------------------------------------------------------------


def test_settings_that_cannot_work_stop_the_start(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"auth_jwt_secret": "short"}, "at least 32 bytes"),
        ({"auth_api_key": API_KEY}, "needs a signing key"),
        ({"auth_jwt_secret": SECRET, "auth_api_key": "short"}, "at least 16 characters"),
        ({"auth_jwt_public_key": pem_public(rsa_key)}, "are for RS256 and ES256"),
        ({"auth_jwt_algorithm": "RS256", "auth_jwt_secret": SECRET}, "is for HS256"),
        ({"auth_jwt_algorithm": "RS256", "auth_jwt_public_key": "/no/such.pem"}, "PEM"),
        (
            {"auth_jwt_algorithm": "ES256", "auth_jwt_public_key": pem_public(rsa_key)},
            "not ES256 keys",
        ),
        (
            {
                "auth_jwt_algorithm": "RS256",
                "auth_jwt_public_key": pem_public(rsa_key),
                "auth_jwt_private_key": pem_private(
                    rsa.generate_private_key(public_exponent=65537, key_size=2048)
                ),
            },
            "do not work together",
        ),
        (
            {"auth_jwt_algorithm": "ES256", "auth_jwt_private_key": pem_private(ec_key)},
            "needs VF_AUTH_JWT_PUBLIC_KEY",
        ),
    ]
    for fields, message in cases:
        with pytest.raises(ConfigError, match=message):
            Authenticator(settings(**fields))


def test_secrets_stay_out_of_the_settings_repr() -> None:
    configured = settings(auth_jwt_secret=SECRET, auth_api_key=API_KEY, auth_token="tok-en-12345")
    shown = repr(configured) + str(configured.model_dump())
    assert SECRET not in shown and API_KEY not in shown and "tok-en-12345" not in shown


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("gateway.internal", False),
        ("", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_an_open_gateway_on_the_network_needs_an_explicit_yes() -> None:
    exposed = settings(gateway_host="0.0.0.0")
    problem = exposure_problem(exposed, Authenticator(exposed))
    assert problem is not None
    assert "0.0.0.0:8000" in problem and "VF_ALLOW_ANONYMOUS" in problem
    assert "VF_AUTH_JWT_SECRET" in problem
    for fine in (
        settings(gateway_host="127.0.0.1"),
        settings(gateway_host="0.0.0.0", allow_anonymous=True),
        settings(gateway_host="0.0.0.0", auth_jwt_secret=SECRET),
        settings(gateway_host="0.0.0.0", auth_token="static-token-value"),
    ):
        assert exposure_problem(fine, Authenticator(fine)) is None, fine.gateway_host
