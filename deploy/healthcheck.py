"""Container health check for every voicefleet role (the image's HEALTHCHECK).

Finds which role this container runs from the process table, then asks that role's own endpoint:
the gateway's /healthz, a worker's /readyz (VF_HEALTH_PORT, fleet/health.py: broker, Redis,
models loaded and consuming; 503 while draining), llama-server's /health (200 once the model is
loaded).
Exit 0 healthy, 1 not. Standard library only.
"""

from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path


def _commands() -> list[list[str]]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if raw:
            found.append([part.decode(errors="replace") for part in raw.split(b"\0") if part])
    return found


def _probe_url(argv: list[str]) -> str | None:
    names = [os.path.basename(part) for part in argv]
    if names[:1] == ["llama-server"]:
        port = argv[argv.index("--port") + 1] if "--port" in argv else "8081"
        return f"http://127.0.0.1:{port}/health"
    if "voicefleet" not in names:
        return None
    role = argv[names.index("voicefleet") + 1 :]
    if role[:1] == ["gateway"]:
        return f"http://127.0.0.1:{os.environ.get('VF_GATEWAY_PORT', '8000')}/healthz"
    if role[:1] == ["worker"]:
        port = os.environ.get("VF_HEALTH_PORT", "0")
        return f"http://127.0.0.1:{port}/readyz" if port != "0" else ""
    return None


def main() -> int:
    for argv in _commands():
        url = _probe_url(argv)
        if url is None:
            continue
        if url == "":
            return 0  # a worker without a health port: alive is all we can tell
        try:
            with urllib.request.urlopen(url, timeout=4) as response:
                return 0 if response.status == 200 else 1
        except OSError as exc:
            print(f"unhealthy: {url}: {exc}", file=sys.stderr)
            return 1
    print("unhealthy: no voicefleet process found", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
