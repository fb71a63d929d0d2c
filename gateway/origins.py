"""Which web pages may open /ws/audio, and what the bundled page may load (docs/security.md).

Browsers let any website open a WebSocket to any server, sending along the page's ``Origin``.
The gateway accepts a handshake only from its own origin (the ``Origin``'s host and port are the
request's ``Host``) or one listed in VF_ALLOWED_ORIGINS; any other is answered HTTP 403 before
the upgrade. A handshake without ``Origin`` comes from a program, not a browser page, and is let
through: it gains nothing a browser visitor's credentials would give. Pure: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
# A Host header we are willing to repeat in a response header: a host name or IP and a port.
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?$")


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str
    port: int | None  # None: the scheme's default port

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}" + ("" if self.port is None else f":{self.port}")


def parse_origin(value: str) -> Origin | None:
    """``scheme://host[:port]`` normalized (lower case, default port dropped), or None."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if scheme not in ("http", "https") or not host or parts.path not in ("", "/"):
        return None
    if parts.query or parts.fragment or parts.username or parts.password:
        return None
    if port == _DEFAULT_PORTS[scheme]:
        port = None
    return Origin(scheme, host, port)


def _host_and_port(host_header: str, scheme: str) -> tuple[str, int | None] | None:
    if not _HOST.fullmatch(host_header.strip()):
        return None
    try:
        parts = urlsplit(f"//{host_header.strip()}")
        port = parts.port
    except ValueError:
        return None
    if port == _DEFAULT_PORTS[scheme]:
        port = None
    return (parts.hostname or "").lower(), port


@dataclass(frozen=True, slots=True)
class OriginPolicy:
    """Same origin always; plus the listed origins, or any when the list has ``*``."""

    allowed: frozenset[Origin]
    any_origin: bool = False

    @classmethod
    def from_setting(cls, value: str) -> OriginPolicy:
        """From VF_ALLOWED_ORIGINS; a malformed entry is a configuration error (ValueError)."""
        entries = [item.strip() for item in value.split(",") if item.strip()]
        allowed = set()
        for entry in entries:
            if entry == "*":
                continue
            origin = parse_origin(entry)
            if origin is None:
                raise ValueError(
                    f"VF_ALLOWED_ORIGINS: {entry!r} is not an origin like https://app.example.com"
                )
            allowed.add(origin)
        return cls(frozenset(allowed), any_origin="*" in entries)

    def allows(self, origin_header: str | None, host_header: str | None) -> bool:
        if origin_header is None:
            return True  # not a browser page
        if self.any_origin:
            return True
        origin = parse_origin(origin_header)
        if origin is None:  # "null" (sandboxed frames, file: pages) or garbage
            return False
        if origin in self.allowed:
            return True
        own = _host_and_port(host_header or "", origin.scheme)
        return own is not None and own == (origin.host, origin.port)


def page_headers(host_header: str | None, policy: OriginPolicy) -> dict[str, str]:
    """Headers of the browser page: it talks to its own origin and runs only its own scripts;
    only its own origin and the allowed ones may frame it (e.g. the app that fronts it)."""
    connect = "'self'"
    host = (host_header or "").strip()
    if _HOST.fullmatch(host):
        # 'self' covers ws(s): of the same host in current browsers; older ones need it spelt out.
        connect += f" ws://{host} wss://{host}"
    if policy.any_origin:
        ancestors = "*"
    else:
        ancestors = " ".join(["'self'", *sorted(str(o) for o in policy.allowed)])
    csp = "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            f"connect-src {connect}",
            "img-src 'self' data:",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'none'",
            f"frame-ancestors {ancestors}",
        ]
    )
    return {
        "Content-Security-Policy": csp,
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
    }
