"""Make RabbitMQ and Redis reachable for a local fleet or a test run, starting them if needed.

Only services configured on this machine (loopback or localhost) are started; a remote broker that
does not answer is an error to report, not something to fix from here.
`python -m voicefleet.services` does this for the settings in the environment.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from fleet.settings import Settings, get_settings

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
# Debian installs the service binaries in /usr/sbin, which a non-root PATH may lack.
_SBIN = "/usr/sbin:/sbin"


class ServiceError(RuntimeError):
    pass


def _log(message: str) -> None:
    print(f"voicefleet services: {message}", file=sys.stderr, flush=True)


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, deadline_s: float) -> bool:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if port_open(host, port):
            return True
        time.sleep(0.25)
    return False


def _which(binary: str) -> str | None:
    return shutil.which(binary) or shutil.which(binary, path=_SBIN)


def _apt_install(package: str) -> None:
    if not Path("/usr/bin/apt-get").exists():
        raise ServiceError(f"{package} is not installed and there is no apt-get to install it")
    _log(f"installing {package}")
    prefix = [] if os.geteuid() == 0 else ["sudo"]
    install = [*prefix, "apt-get", "install", "-y", "--no-install-recommends", package]
    env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": f"/usr/bin:/bin:{_SBIN}"}
    if subprocess.run(install, env=env, capture_output=True, check=False).returncode == 0:
        return
    # A failed install is usually stale package lists: refresh them once and retry.
    subprocess.run([*prefix, "apt-get", "update"], env=env, capture_output=True, check=False)
    result = subprocess.run(install, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ServiceError(f"apt-get install {package} failed:\n{result.stderr[-2000:]}")


def _ensure_binary(binary: str, package: str) -> str:
    path = _which(binary)
    if path is None:
        _apt_install(package)
        path = _which(binary)
    if path is None:
        raise ServiceError(f"{binary} not found even after installing {package}")
    return path


def _endpoint(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


def ensure_rabbitmq(url: str, deadline_s: float = 90.0) -> None:
    host, port = _endpoint(url, 5672)
    if port_open(host, port):
        return
    if host not in LOCAL_HOSTS:
        raise ServiceError(f"RabbitMQ at {host}:{port} is not reachable")
    server = _ensure_binary("rabbitmq-server", "rabbitmq-server")
    _log(f"starting RabbitMQ on port {port}")
    subprocess.run([server, "-detached"], check=False, capture_output=True)
    if not wait_for_port(host, port, deadline_s):
        raise ServiceError(f"RabbitMQ did not open port {port} within {deadline_s:.0f} s")
    # The port opens before the broker has finished booting its plugins and vhosts.
    ctl = _which("rabbitmqctl") or "rabbitmqctl"
    result = subprocess.run(
        [ctl, "await_startup", "--timeout", str(int(deadline_s))],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise ServiceError(f"rabbitmqctl await_startup failed:\n{result.stderr[-2000:]}")


def ensure_redis(url: str, deadline_s: float = 30.0) -> None:
    host, port = _endpoint(url, 6379)
    if port_open(host, port):
        return
    if host not in LOCAL_HOSTS:
        raise ServiceError(f"Redis at {host}:{port} is not reachable")
    server = _ensure_binary("redis-server", "redis-server")
    _log(f"starting Redis on port {port}")
    # Session state is disposable and rebuilt by clients, so persistence would only cost latency.
    subprocess.run(
        [
            server,
            "--daemonize",
            "yes",
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        check=False,
        capture_output=True,
    )
    if not wait_for_port(host, port, deadline_s):
        raise ServiceError(f"Redis did not open port {port} within {deadline_s:.0f} s")


def ensure_services(settings: Settings) -> None:
    # A cluster (several nodes in VF_AMQP_URL) runs elsewhere: only a first local node is started.
    ensure_rabbitmq(settings.amqp_url.split(",")[0].strip())
    ensure_redis(settings.redis_url)


def main() -> None:
    try:
        ensure_services(get_settings())
    except ServiceError as exc:
        _log(f"error: {exc}")
        raise SystemExit(1) from exc


if __name__ == "__main__":
    main()
