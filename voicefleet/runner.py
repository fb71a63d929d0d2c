"""`voicefleet up`: run a whole fleet on this machine and keep it running until Ctrl-C.

Start order follows the dependencies: RabbitMQ and Redis, the model files, the local chat server
(unless VF_LLM_URL points elsewhere), then gateways and worker replicas. A child that dies while the
fleet starts is fatal (it is almost always a set-up error that a restart would only repeat); once
the fleet is up, a dead child is restarted with exponential backoff.

Children run in their own sessions so that Ctrl-C reaches only this supervisor, which then stops
the fleet in order: gateways and workers first (they drain within the deadline), the chat server
last, since draining LLM bridges still stream from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from fleet.settings import Settings, get_settings
from voicefleet import models, services

DRAIN_DEADLINE_S = 15.0
LLM_SERVER_DEADLINE_S = 5.0
LLM_READY_TIMEOUT_S = 120.0
FLEET_READY_TIMEOUT_S = 180.0
FIRST_METRICS_PORT = 9101
MAX_BACKOFF_S = 30.0
# A child that ran this long before dying is treated as healthy again: its backoff starts over.
STABLE_AFTER_S = 60.0
LOG_TAIL_LINES = 20


class StartupError(RuntimeError):
    pass


def _log(message: str) -> None:
    print(f"voicefleet up: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True, slots=True)
class ChildSpec:
    name: str
    args: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    metrics_port: int | None = None
    is_gateway: bool = False

    @property
    def argv(self) -> list[str]:
        return [sys.executable, "-m", "voicefleet.cli", *self.args]


@dataclass(slots=True)
class Child:
    spec: ChildSpec
    log_path: Path
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    backoff_s: float = 0.0

    async def start(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.spec.env}
        with self.log_path.open("ab") as log:
            log.write(f"\n=== {time.strftime('%F %T')} starting {self.spec.name}\n".encode())
            log.flush()
            self.process = await asyncio.create_subprocess_exec(
                *self.spec.argv,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        self.started_at = time.monotonic()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def signal(self, signum: int) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        # The whole process group, so helpers a child spawned go down with it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)

    def log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(f"    {line}" for line in lines[-LOG_TAIL_LINES:])


def plan(
    settings: Settings,
    stt: int,
    llm: int,
    tts: int,
    gateways: int,
    tts_provider_port: int | None = None,
) -> list[ChildSpec]:
    """The gateway and worker processes of the fleet, each with its own id and ports; with
    ``tts_provider_port``, also a TTS provider server there, which the TTS workers speak through
    (their own engine as the fallback: docs/tts-providers.md)."""
    specs = [
        ChildSpec(
            f"gateway-{i}",
            ("gateway",),
            # Metrics on the gateway's own HTTP port here; VF_METRICS_PORT numbers the workers'.
            {
                "VF_GATEWAY_PORT": str(settings.gateway_port + i - 1),
                "VF_WORKER_ID": f"gateway-{i}",
                "VF_METRICS_PORT": "0",
            },
            is_gateway=True,
        )
        for i in range(1, gateways + 1)
    ]
    # VF_METRICS_PORT, when set, is where the workers' metrics ports start, so that two fleets
    # can run on one machine.
    metrics_port = settings.metrics_port or FIRST_METRICS_PORT
    tts_env: dict[str, str] = {}
    if tts_provider_port is not None:
        engine, port = settings.tts_provider, str(tts_provider_port)
        server_args = ("tts-provider", "--provider", engine, "--port", port)
        specs.append(ChildSpec("tts-provider", server_args, {"VF_WORKER_ID": "tts-provider"}))
        tts_env = {
            "VF_TTS_PROVIDERS": "remote,local",
            "VF_TTS_PROVIDER_URL": f"http://127.0.0.1:{tts_provider_port}",
        }
    for kind, replicas in (("stt", stt), ("llm", llm), ("tts", tts)):
        for i in range(1, replicas + 1):
            name = f"{kind}-{i}"
            env = {"VF_WORKER_ID": name, "VF_METRICS_PORT": str(metrics_port)}
            if kind == "tts":
                env |= tts_env
            specs.append(ChildSpec(name, ("worker", kind), env, metrics_port=metrics_port))
            metrics_port += 1
    return specs


def local_llm_port(settings: Settings) -> int | None:
    """The port of the chat server to start here, or None when VF_LLM_URL names another one."""
    default_url = Settings.model_fields["llm_url"].default
    if settings.llm_url != default_url:
        return None
    port: int | None = urlsplit(str(default_url)).port
    return port


def _port_busy(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def check_ports_free(ports: Iterable[int]) -> None:
    busy = sorted(port for port in ports if _port_busy(port))
    if busy:
        raise StartupError(
            f"port(s) {', '.join(map(str, busy))} already in use; is another fleet running?"
        )


class Fleet:
    def __init__(self, settings: Settings, specs: list[ChildSpec], log_dir: Path) -> None:
        self.settings = settings
        self.log_dir = log_dir
        self.llm_server: Child | None = None
        self.children = [Child(spec, log_dir / f"{spec.name}.log") for spec in specs]
        self.stopping = asyncio.Event()

    def all_children(self) -> list[Child]:
        return [*([self.llm_server] if self.llm_server else []), *self.children]

    def _check_alive(self) -> None:
        for child in self.all_children():
            if child.process is not None and child.process.returncode is not None:
                raise StartupError(
                    f"{child.spec.name} exited with code {child.process.returncode} while the "
                    f"fleet was starting; last lines of {child.log_path}:\n{child.log_tail()}"
                )

    async def _wait_http_ok(self, client: httpx.AsyncClient, url: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_alive()
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    return
            await asyncio.sleep(0.5)
        raise StartupError(f"{url} did not answer 200 within {timeout_s:.0f} s")

    async def start(self) -> None:
        async with httpx.AsyncClient(timeout=2.0) as client:
            llm_port = local_llm_port(self.settings)
            if llm_port is not None:
                spec = ChildSpec("llm-server", ("llm-server", "--port", str(llm_port)))
                self.llm_server = Child(spec, self.log_dir / "llm-server.log")
                await self.llm_server.start()
                await self._wait_http_ok(
                    client, f"{self.settings.llm_url}/models", LLM_READY_TIMEOUT_S
                )
            else:
                await self._probe_remote_llm(client)
            for child in self.children:
                await child.start()
            for child in self.children:
                if child.spec.is_gateway:
                    port = child.spec.env["VF_GATEWAY_PORT"]
                    await self._wait_http_ok(
                        client, f"http://127.0.0.1:{port}/readyz", FLEET_READY_TIMEOUT_S
                    )

    async def _probe_remote_llm(self, client: httpx.AsyncClient) -> None:
        url = f"{self.settings.llm_url}/models"
        headers = {"Authorization": f"Bearer {self.settings.llm_api_key}"}
        try:
            status = (await client.get(url, headers=headers)).status_code
        except httpx.HTTPError as exc:
            _log(f"warning: chat server {url} is not reachable ({exc}); starting anyway")
            return
        if status != 200:
            _log(f"warning: chat server {url} answered HTTP {status}; starting anyway")

    async def supervise(self, child: Child) -> None:
        while child.process is not None and not self.stopping.is_set():
            code = await child.process.wait()
            if self.stopping.is_set():
                return
            ran_s = time.monotonic() - child.started_at
            child.backoff_s = (
                1.0
                if ran_s >= STABLE_AFTER_S
                else min(MAX_BACKOFF_S, max(1.0, child.backoff_s * 2))
            )
            _log(
                f"{child.spec.name} exited with code {code} after {ran_s:.0f} s; restarting in "
                f"{child.backoff_s:.0f} s. Last lines of {child.log_path}:\n{child.log_tail()}"
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), child.backoff_s)
                return
            await child.start()

    async def stop(self) -> None:
        """SIGTERM in dependency order, SIGKILL whatever outlives the drain deadline."""
        deadline = time.monotonic() + DRAIN_DEADLINE_S
        await self._terminate(self.children, deadline)
        if self.llm_server is not None:
            await self._terminate(
                [self.llm_server], max(deadline, time.monotonic() + LLM_SERVER_DEADLINE_S)
            )

    @staticmethod
    async def _terminate(children: list[Child], deadline: float) -> None:
        running = [child for child in children if child.running]
        for child in running:
            child.signal(signal.SIGTERM)
        waits = [child.process.wait() for child in running if child.process is not None]
        if not waits:
            return
        _, pending = await asyncio.wait(
            [asyncio.ensure_future(w) for w in waits],
            timeout=max(0.0, deadline - time.monotonic()),
        )
        for child in running:
            if child.running:
                _log(f"{child.spec.name} did not stop in time; killing it")
                child.signal(signal.SIGKILL)
        if pending:
            await asyncio.wait(pending)

    def banner(self) -> str:
        gateway_port = self.settings.gateway_port
        lines = [f"voicefleet is up: open http://127.0.0.1:{gateway_port}/"]
        for child in self.children:
            if child.spec.is_gateway:
                port = child.spec.env["VF_GATEWAY_PORT"]
                lines.append(f"  {child.spec.name}: http://127.0.0.1:{port}/ (metrics at /metrics)")
        for child in self.children:
            if child.spec.metrics_port is not None:
                lines.append(
                    f"  {child.spec.name} metrics: http://127.0.0.1:{child.spec.metrics_port}/metrics"
                )
        lines.append(f"  logs: {self.log_dir}/<process>.log")
        lines.append("  Ctrl-C stops the fleet")
        return "\n".join(lines)


async def _run(settings: Settings, specs: list[ChildSpec], log_dir: Path) -> int:
    fleet = Fleet(settings, specs, log_dir)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, fleet.stopping.set)

    starting = asyncio.create_task(fleet.start())
    stop_requested = asyncio.create_task(fleet.stopping.wait())
    await asyncio.wait([starting, stop_requested], return_when=asyncio.FIRST_COMPLETED)
    exit_code = 0
    if starting.done() and starting.exception() is None:
        print(fleet.banner(), flush=True)
        supervisors = [asyncio.create_task(fleet.supervise(c)) for c in fleet.all_children()]
        await stop_requested
        for task in supervisors:
            task.cancel()
    elif starting.done():
        _log(f"error: {starting.exception()}")
        exit_code = 1
    else:
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
    stop_requested.cancel()
    _log("stopping the fleet")
    await fleet.stop()
    return exit_code


def main(stt: int, llm: int, tts: int, gateways: int, tts_provider_port: int | None = None) -> None:
    settings = get_settings()
    specs = plan(settings, stt, llm, tts, gateways, tts_provider_port)
    try:
        services.ensure_services(settings)
        models.assemble(settings)
        llm_port = local_llm_port(settings)
        ports = [int(s.env["VF_GATEWAY_PORT"]) for s in specs if s.is_gateway]
        ports += [s.metrics_port for s in specs if s.metrics_port is not None]
        ports += [llm_port] if llm_port is not None else []
        ports += [tts_provider_port] if tts_provider_port is not None else []
        check_ports_free(ports)
    except (services.ServiceError, models.ModelAssemblyError, StartupError) as exc:
        _log(f"error: {exc}")
        raise SystemExit(1) from exc
    log_dir = Path.cwd() / ".run" / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(asyncio.run(_run(settings, specs, log_dir)))
