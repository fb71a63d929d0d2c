"""Start a real fleet (gateway, workers, chat server) as separate processes for a test.

Each fleet gets its own namespace on the shared RabbitMQ and Redis, its own ports, and log files
under ``artifacts/<name>/`` so a failing test leaves evidence behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from fleet.settings import Settings
from fleet.state import Exchange, SessionStore, connect_redis
from tests.relay import Relay
from voicefleet.namespaces import consumer_counts, delete_namespace

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class FleetProcess:
    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    # The module run as ``python -m``: the `voicefleet` command, or a test's wrapper around it.
    module: str = "voicefleet.cli"

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.module, *self.args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )
        log.close()

    def signal(self, sig: signal.Signals) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.process is None:
            return None
        self.signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def kill(self) -> None:
        """SIGKILL: the process dies mid-work, as on a crash or an out-of-memory kill."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def log_events(self) -> list[dict[str, object]]:
        if not self.log_path.exists():
            return []
        events = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                item = json.loads(line)
                if isinstance(item, dict):
                    events.append(item)
        return events

    def tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def process_logs(processes: Mapping[str, FleetProcess], lines: int = 40) -> str:
    return "\n".join(f"--- {n} ---\n{p.tail(lines)}" for n, p in processes.items())


def check_alive(processes: Mapping[str, FleetProcess]) -> None:
    """Raise, with its log, if any of the processes has exited."""
    for name, process in processes.items():
        if process.process is not None and process.process.poll() is not None:
            raise RuntimeError(f"{name} exited early:\n{process.tail()}")


@dataclass
class Fleet:
    name: str
    settings: Settings
    env: dict[str, str]
    gateway_ports: list[int]
    llm_url: str
    processes: dict[str, FleetProcess] = field(default_factory=dict)
    chat_tap: Relay | None = None  # between the LLM bridges and the chat server, if asked for
    metrics_ports: dict[str, int] = field(default_factory=dict)  # worker name -> /metrics port

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_ports[0]}"

    @property
    def ws_url(self) -> str:
        return self.ws_url_of(0)

    def ws_url_of(self, gateway: int) -> str:
        return f"ws://127.0.0.1:{self.gateway_ports[gateway]}/ws/audio"

    def add(self, name: str, *args: str, **env: str) -> FleetProcess:
        if args[:1] == ("worker",) and "VF_METRICS_PORT" not in env:
            env["VF_METRICS_PORT"] = str(self.metrics_ports.setdefault(name, free_port()))
        process = FleetProcess(
            name, list(args), {**self.env, **env}, ARTIFACTS / self.name / f"{name}.log"
        )
        self.processes[name] = process
        process.start()
        return process

    @contextlib.contextmanager
    def extra(self, name: str, *args: str, **env: str) -> Iterator[FleetProcess]:
        """One more process of this fleet (its own settings in ``env``), stopped and forgotten
        afterwards, so the fleet is as it was for the tests that share it."""
        process = self.add(name, *args, **env)
        try:
            yield process
        finally:
            process.stop()
            del self.processes[name]
            self.metrics_ports.pop(name, None)

    @contextlib.contextmanager
    def extra_gateway(self, name: str, **env: str) -> Iterator[str]:
        """One more gateway with its own settings; yields its WebSocket URL once it is ready."""
        port = free_port()
        with self.extra(name, "gateway", VF_WORKER_ID=name, VF_GATEWAY_PORT=str(port), **env):
            wait_http(f"http://127.0.0.1:{port}/readyz", self, timeout=60)
            yield f"ws://127.0.0.1:{port}/ws/audio"

    def workers_that_logged(self, kind: str, event: str, session_id: str) -> list[str]:
        """Names of the ``kind`` workers whose log has ``event`` for the session."""
        return [
            name
            for name, process in self.processes.items()
            if name.startswith(f"{kind}-")
            and any(
                e.get("event") == event and e.get("session_id") == session_id
                for e in process.log_events()
            )
        ]

    async def wait_for_worker(
        self, kind: str, event: str, session_id: str, patience: float = 30.0
    ) -> str:
        async with asyncio.timeout(patience):
            # Another process writes the log: there is nothing to wait on but the file itself.
            while not (names := self.workers_that_logged(kind, event, session_id)):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        return names[0]

    def logs(self) -> str:
        return process_logs(self.processes)

    def check_alive(self) -> None:
        check_alive(self.processes)

    def stop(self) -> None:
        for process in reversed(list(self.processes.values())):
            process.stop()

    async def history(self, session_id: str) -> list[Exchange]:
        """The session's conversation history as the fleet keeps it in Redis."""
        store = SessionStore(connect_redis(self.settings), self.settings)
        try:
            return await store.history(session_id)
        finally:
            await store.redis.aclose()

    def restore(self) -> None:
        """Restart every process that has exited, and wait until the fleet serves again."""
        exited = [p for p in self.processes.values() if p.process and p.process.poll() is not None]
        for process in exited:
            process.start()
        if exited:
            wait_until_serving(self)


def wait_http(url: str, fleet: Fleet, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fleet.check_alive()
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise TimeoutError(f"{url} not ready after {timeout}s\n{fleet.logs()}")


def wait_for_workers(fleet: Fleet, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fleet.check_alive()
        counts = asyncio.run(consumer_counts(fleet.settings))
        # A fleet without some kind of worker (a gateway-and-STT fleet) waits for the others.
        started = {name.partition("-")[0] for name in fleet.processes}
        if all(count for kind, count in counts.items() if kind in started):
            return
        time.sleep(0.5)
    raise TimeoutError(f"workers not consuming after {timeout}s\n{fleet.logs()}")


def wait_until_serving(fleet: Fleet) -> None:
    if "llm-server" in fleet.processes:
        wait_http(f"{fleet.llm_url}/models", fleet, timeout=120)
    for port in fleet.gateway_ports:
        wait_http(f"http://127.0.0.1:{port}/readyz", fleet, timeout=60)
    wait_for_workers(fleet)


@contextlib.contextmanager
def running_fleet(
    name: str,
    *,
    stt: int = 1,
    llm: int = 1,
    tts: int = 1,
    gateways: int = 1,
    tap_chat: bool = False,
    role_env: Mapping[str, Mapping[str, str]] | None = None,
    namespace: str = "",
    llm_url: str = "",
    **overrides: str,
) -> Iterator[Fleet]:
    """A whole fleet; the chat server is started too unless ``llm_url`` or VF_LLM_URL points at
    one.

    ``tap_chat`` puts a :class:`Relay` between the LLM bridges and the chat server.
    ``role_env`` gives the processes of a role ("gateway", "stt", "llm", "tts") more env;
    ``namespace`` is a fresh one unless given.
    """
    role_env = role_env or {}
    namespace = namespace or f"t{uuid.uuid4().hex[:10]}"
    gateway_ports = [free_port() for _ in range(gateways)]
    external_llm = llm_url or os.environ.get("VF_LLM_URL")
    llm_port = free_port()
    llm_url = external_llm or f"http://127.0.0.1:{llm_port}/v1"
    env = {
        **os.environ,
        "VF_NAMESPACE": namespace,
        "VF_LLM_URL": llm_url,
        "VF_LOG_JSON": "true",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        **{f"VF_{k.upper()}": v for k, v in overrides.items()},
    }
    # A fleet on a private broker or Redis (chaos tests) is set up and cleaned up there too.
    defaults = Settings()
    settings = Settings(
        namespace=namespace,
        amqp_url=overrides.get("amqp_url", defaults.amqp_url),
        redis_url=overrides.get("redis_url", defaults.redis_url),
    )
    fleet = Fleet(name, settings, env, gateway_ports, llm_url)
    if tap_chat:
        upstream = urlsplit(llm_url)
        fleet.chat_tap = Relay(upstream.hostname or "127.0.0.1", upstream.port or 80)
        fleet.chat_tap.start()
        env["VF_LLM_URL"] = fleet.chat_tap.url.removesuffix("/v1") + upstream.path
    try:
        if not external_llm and llm:
            fleet.add("llm-server", "llm-server", "--port", str(llm_port))
        for kind, replicas in (("stt", stt), ("llm", llm), ("tts", tts)):
            for index in range(1, replicas + 1):
                fleet.add(
                    f"{kind}-{index}",
                    "worker",
                    kind,
                    VF_WORKER_ID=f"{kind}-{index}",
                    **role_env.get(kind, {}),
                )
        for index, port in enumerate(gateway_ports, start=1):
            fleet.add(
                f"gateway-{index}",
                "gateway",
                VF_WORKER_ID=f"gateway-{index}",
                VF_GATEWAY_PORT=str(port),
                **role_env.get("gateway", {}),
            )
        wait_until_serving(fleet)
        yield fleet
    finally:
        fleet.stop()
        if fleet.chat_tap is not None:
            fleet.chat_tap.stop()
        asyncio.run(delete_namespace(settings))
