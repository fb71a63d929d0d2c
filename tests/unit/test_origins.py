"""Which pages may open /ws/audio, and the browser page's Content-Security-Policy
(gateway/origins.py). The handshake itself (HTTP 403 before the upgrade) is tested against a
running gateway in tests/e2e/test_auth.py."""

from __future__ import annotations

import pytest

from gateway.origins import OriginPolicy, page_headers, parse_origin

SAME_ORIGIN_ONLY = OriginPolicy.from_setting("")


@pytest.mark.parametrize(
    ("origin", "host"),
    [
        ("http://127.0.0.1:8000", "127.0.0.1:8000"),
        ("http://localhost:8000", "localhost:8000"),
        ("https://voice.example.com", "voice.example.com"),
        ("https://voice.example.com", "voice.example.com:443"),
        ("https://voice.example.com:443", "voice.example.com"),
        ("http://voice.example.com", "voice.example.com:80"),
        ("HTTPS://Voice.Example.COM", "voice.example.com"),
        ("http://[::1]:8000", "[::1]:8000"),
    ],
)
def test_the_gateways_own_origin_is_allowed(origin: str, host: str) -> None:
    assert SAME_ORIGIN_ONLY.allows(origin, host)


@pytest.mark.parametrize(
    ("origin", "host"),
    [
        ("https://evil.example", "voice.example.com"),
        ("https://voice.example.com.evil.example", "voice.example.com"),
        ("http://127.0.0.1:9999", "127.0.0.1:8000"),
        ("https://voice.example.com:8443", "voice.example.com"),
        ("http://voice.example.com", "voice.example.com:8000"),
        ("null", "voice.example.com"),
        ("file://", "voice.example.com"),
        ("chrome-extension://abcdef", "voice.example.com"),
        ("https://voice.example.com", None),
        ("https://voice.example.com", "voice.example.com\r\nX: y"),
        ("", "voice.example.com"),
    ],
)
def test_another_origin_is_refused(origin: str, host: str | None) -> None:
    assert not SAME_ORIGIN_ONLY.allows(origin, host)


def test_a_client_without_origin_is_not_a_browser_page_and_is_allowed() -> None:
    assert SAME_ORIGIN_ONLY.allows(None, "voice.example.com")


def test_listed_origins_are_allowed_besides_the_own_one() -> None:
    policy = OriginPolicy.from_setting(" https://app.example.com , http://localhost:3000")
    assert policy.allows("https://app.example.com", "voice.example.com")
    assert policy.allows("https://app.example.com:443", "voice.example.com")
    assert policy.allows("http://localhost:3000", "voice.example.com")
    assert policy.allows("https://voice.example.com", "voice.example.com")
    assert not policy.allows("http://app.example.com", "voice.example.com")
    assert not policy.allows("https://evil.example", "voice.example.com")


def test_a_star_allows_any_origin() -> None:
    policy = OriginPolicy.from_setting("*")
    assert policy.allows("https://evil.example", "voice.example.com")


@pytest.mark.parametrize("entry", ["app.example.com", "https://app.example.com/path", "ftp://x"])
def test_a_malformed_allowed_origin_is_a_configuration_error(entry: str) -> None:
    with pytest.raises(ValueError, match="VF_ALLOWED_ORIGINS"):
        OriginPolicy.from_setting(f"https://ok.example, {entry}")


def test_origins_are_normalized() -> None:
    assert str(parse_origin("HTTPS://App.Example.com:443/")) == "https://app.example.com"
    assert str(parse_origin("http://app.example.com:8080")) == "http://app.example.com:8080"
    assert parse_origin("https://user@app.example.com") is None
    assert parse_origin("https://app.example.com:99999") is None


def csp(headers: dict[str, str]) -> dict[str, str]:
    policy = headers["Content-Security-Policy"]
    return dict(d.strip().partition(" ")[::2] for d in policy.split(";"))


def test_the_page_may_connect_only_to_its_own_origin_and_run_only_its_own_scripts() -> None:
    directives = csp(page_headers("voice.example.com", SAME_ORIGIN_ONLY))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'"  # no 'unsafe-inline', no other host
    assert directives["connect-src"] == "'self' ws://voice.example.com wss://voice.example.com"
    assert directives["frame-ancestors"] == "'self'"
    assert directives["object-src"] == "'none'"
    # A Host header that is not a plain host[:port] is not repeated in the policy.
    hostile = csp(page_headers("x; script-src *", SAME_ORIGIN_ONLY))
    assert hostile["connect-src"] == "'self'"
    assert hostile["script-src"] == "'self'"


def test_the_allowed_origins_may_frame_the_page() -> None:
    policy = OriginPolicy.from_setting("https://app.example.com")
    assert csp(page_headers("v.example", policy))["frame-ancestors"] == (
        "'self' https://app.example.com"
    )
