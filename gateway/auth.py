"""Who may talk to the gateway: client tokens, the token-issuing API key, and the refusal to
listen in the open without either (docs/security.md). Pure: no I/O besides reading key files.

A client proves itself with ``token`` in ``start``: a signed, expiring JWT (HS256 with a shared
secret, or RS256 / ES256 with a public key), or the static ``VF_AUTH_TOKEN``. The app server that
fronts the browser gets JWTs from ``POST /v1/tokens`` with its API key. Every secret is compared
in constant time and never put in a message or log line.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import jwt

from fleet.errors import ErrorCode
from fleet.settings import Settings

# Clock skew tolerated between the token's issuer and this gateway (s).
LEEWAY_S = 10
MIN_HS256_SECRET_BYTES = 32  # RFC 7518 3.2: a key at least as long as the hash
MIN_API_KEY_CHARS = 16
STATIC_SUBJECT = "static-token"


class ConfigError(ValueError):
    """The auth settings cannot work as given; the gateway does not start."""


class AuthError(Exception):
    """A client's token is refused: ``code`` is ``unauthorized`` or ``token_expired``."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a client is: the token's subject (None when no auth is configured)."""

    subject: str | None


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    subject: str
    expires_at: int


def _digest(value: str) -> bytes:
    # Comparing fixed-length digests keeps even the length of the secret out of the timing.
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


def same_secret(given: str, expected: str) -> bool:
    """Constant-time comparison of a secret the client gave with the configured one."""
    return hmac.compare_digest(_digest(given), _digest(expected))


def _pem(value: str, setting: str) -> str:
    """A PEM given as its text, or as the path of a file holding it (a mounted Secret)."""
    text = value.strip()
    if text.startswith("-----BEGIN"):
        return text
    path = Path(text)
    if not path.is_file():
        raise ConfigError(f"{setting} is neither PEM text nor the path of a PEM file")
    return path.read_text().strip()


_REFUSALS: list[tuple[type[jwt.InvalidTokenError], str]] = [
    (jwt.InvalidSignatureError, "bad signature"),
    (jwt.InvalidAlgorithmError, "algorithm not accepted"),
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.ImmatureSignatureError, "not valid yet"),
    (jwt.InvalidIssuedAtError, "issued in the future"),
    (jwt.DecodeError, "malformed"),
]


class Authenticator:
    """Checks client tokens and issues them, as the settings say."""

    def __init__(self, settings: Settings) -> None:
        self.algorithm = settings.auth_jwt_algorithm
        self.issuer = settings.auth_jwt_issuer
        self.audience = settings.auth_jwt_audience
        self.token_ttl_s = settings.auth_token_ttl_s
        self._static = settings.auth_token.get_secret_value()
        self._api_key = settings.auth_api_key.get_secret_value()
        secret = settings.auth_jwt_secret.get_secret_value()
        public = settings.auth_jwt_public_key.get_secret_value()
        private = settings.auth_jwt_private_key.get_secret_value()
        self._verify_key: str | None = None
        self._signing_key: str | None = None
        if self.algorithm == "HS256":
            if public or private:
                raise ConfigError(
                    "VF_AUTH_JWT_PUBLIC_KEY / VF_AUTH_JWT_PRIVATE_KEY are for RS256 and ES256: "
                    "set VF_AUTH_JWT_ALGORITHM, or use VF_AUTH_JWT_SECRET with HS256"
                )
            if secret:
                if len(secret.encode()) < MIN_HS256_SECRET_BYTES:
                    raise ConfigError(
                        f"VF_AUTH_JWT_SECRET must be at least {MIN_HS256_SECRET_BYTES} bytes "
                        "(e.g. `openssl rand -hex 32`)"
                    )
                self._verify_key = self._signing_key = secret
        else:
            if secret:
                raise ConfigError(
                    f"VF_AUTH_JWT_SECRET is for HS256, but VF_AUTH_JWT_ALGORITHM is "
                    f"{self.algorithm}: set VF_AUTH_JWT_PUBLIC_KEY instead"
                )
            if private and not public:
                raise ConfigError("VF_AUTH_JWT_PRIVATE_KEY needs VF_AUTH_JWT_PUBLIC_KEY too")
            if public:
                self._verify_key = _pem(public, "VF_AUTH_JWT_PUBLIC_KEY")
            if private:
                self._signing_key = _pem(private, "VF_AUTH_JWT_PRIVATE_KEY")
            self._check_key_pair()
        if self._api_key:
            if len(self._api_key) < MIN_API_KEY_CHARS:
                raise ConfigError(
                    f"VF_AUTH_API_KEY must be at least {MIN_API_KEY_CHARS} characters"
                )
            if self._signing_key is None:
                raise ConfigError(
                    "VF_AUTH_API_KEY turns on POST /v1/tokens, which needs a signing key: "
                    "VF_AUTH_JWT_SECRET (HS256) or VF_AUTH_JWT_PRIVATE_KEY (RS256 / ES256)"
                )

    def _check_key_pair(self) -> None:
        """Load the keys now, so that a wrong key stops the start, not the first client."""
        try:
            if self._signing_key is not None and self._verify_key is not None:
                probe = jwt.encode({"sub": "probe"}, self._signing_key, self.algorithm)
                jwt.decode(probe, self._verify_key, [self.algorithm])
            elif self._verify_key is not None:
                jwt.get_algorithm_by_name(self.algorithm).prepare_key(self._verify_key)
        except (ValueError, TypeError, jwt.PyJWTError) as exc:
            raise ConfigError(
                f"the {self.algorithm} keys do not work together or are not "
                f"{self.algorithm} keys ({type(exc).__name__})"
            ) from None

    @property
    def required(self) -> bool:
        """Whether clients must send a token: some kind of client auth is configured."""
        return bool(self._static or self._verify_key)

    @property
    def issues_tokens(self) -> bool:
        return bool(self._api_key)

    def authenticate(self, token: str) -> Principal:
        """The client's identity, or AuthError. Open (subject None) when nothing is configured."""
        if not self.required:
            return Principal(None)
        if not token:
            raise AuthError(ErrorCode.UNAUTHORIZED, "this server requires a token in start")
        if self._static and same_secret(token, self._static):
            return Principal(STATIC_SUBJECT)
        if self._verify_key is None:
            raise AuthError(ErrorCode.UNAUTHORIZED, "wrong token")
        return Principal(self._verify(token, self._verify_key))

    def _verify(self, token: str, key: str) -> str:
        options: jwt.types.Options = {"require": ["exp", "sub", "iss", "aud"]}
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[self.algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY_S,
                options=options,
            )
        except jwt.ExpiredSignatureError:
            raise AuthError(
                ErrorCode.TOKEN_EXPIRED, "the token has expired; get a new one"
            ) from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(
                ErrorCode.UNAUTHORIZED, f"invalid token: no {exc.claim!r} claim"
            ) from None
        except jwt.PyJWTError as exc:  # any other refusal, a key error included: never a crash
            reason = next((r for kind, r in _REFUSALS if isinstance(exc, kind)), "invalid")
            raise AuthError(ErrorCode.UNAUTHORIZED, f"invalid token: {reason}") from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise AuthError(ErrorCode.UNAUTHORIZED, "invalid token: empty subject")
        return subject

    def api_key_valid(self, given: str) -> bool:
        return bool(self._api_key) and same_secret(given, self._api_key)

    def issue(
        self, subject: str, ttl_s: int | None = None, now: float | None = None
    ) -> IssuedToken:
        """A signed token for ``subject``, valid ``ttl_s`` (at most the configured lifetime)."""
        if self._signing_key is None:
            raise ConfigError("no signing key configured")
        issued = int(time.time() if now is None else now)
        lifetime = self.token_ttl_s if ttl_s is None else min(ttl_s, self.token_ttl_s)
        expires = issued + lifetime
        claims = {
            "sub": subject,
            "iss": self.issuer,
            "aud": self.audience,
            "iat": issued,
            "nbf": issued,
            "exp": expires,
            "jti": secrets.token_urlsafe(12),
        }
        return IssuedToken(jwt.encode(claims, self._signing_key, self.algorithm), subject, expires)


def is_loopback(host: str) -> bool:
    """Whether a bind address is reachable from this machine only."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def exposure_problem(settings: Settings, authenticator: Authenticator) -> str | None:
    """Why the gateway must not start listening, or None: a gateway reachable from the network
    with no client auth is open to anyone, so it takes an explicit VF_ALLOW_ANONYMOUS."""
    if authenticator.required or settings.allow_anonymous or is_loopback(settings.gateway_host):
        return None
    return (
        f"refusing to listen on {settings.gateway_host}:{settings.gateway_port} without client "
        "auth: set VF_AUTH_JWT_SECRET (or VF_AUTH_JWT_PUBLIC_KEY, or VF_AUTH_TOKEN), or set "
        "VF_ALLOW_ANONYMOUS=true to let anyone who reaches this address use the fleet "
        "(docs/security.md)"
    )
