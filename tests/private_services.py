"""A RabbitMQ and a Redis of a test's own, on free ports, that the test may kill and restart.

Chaos tests must never touch the shared broker (127.0.0.1:5672) or Redis (127.0.0.1:6379):
other tests and sessions use them. These helpers start private ones under a temporary
directory; RabbitMQ needs root (it runs the packaged ``rabbitmq-server`` with its own node name,
ports, database and log directories, and no plugins).

Restarting RabbitMQ keeps its database (durable queues and persistent messages survive, as in a
real broker restart); restarting Redis loses every key (``--save '' --appendonly no``), the
harshest case: the fleet must cope with a state store that forgot everything, unless the test
gives it persistence options (``--appendonly yes``), which write into its own directory.

:func:`private_rabbitmq_cluster` clusters several private nodes (one Erlang cookie of their
own, ``rabbitmqctl join_cluster``), for the tests that lose a node of a cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import aio_pika

from tests.fleet_processes import ARTIFACTS

RABBITMQ_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
# Not /usr/sbin/rabbitmqctl: that wrapper runs as the rabbitmq user, with its home's cookie.
RABBITMQCTL = Path("/usr/lib/rabbitmq/bin/rabbitmqctl")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rabbitmq_unavailable_reason() -> str | None:
    """Why a private RabbitMQ cannot be started here, or None when it can."""
    if not RABBITMQ_SERVER.exists():
        return f"{RABBITMQ_SERVER} is not installed"
    if os.geteuid() != 0:
        return "starting a private RabbitMQ needs root"
    return None


def redis_unavailable_reason() -> str | None:
    return None if shutil.which("redis-server") else "redis-server is not installed"


def _amqp_handshake(url: str) -> bool:
    async def attempt() -> None:
        connection = await aio_pika.connect(url, timeout=5)
        await connection.close()

    try:
        asyncio.run(attempt())
    except Exception:
        return False
    return True


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class PrivateRabbitMQ:
    """One RabbitMQ node on its own ports and directories."""

    base: Path
    node: str = field(default_factory=lambda: f"vft{uuid.uuid4().hex[:8]}@localhost")
    port: int = field(default_factory=free_port)
    dist_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    # A directory whose .erlang.cookie the node and rabbitmqctl share (the nodes of a cluster);
    # None: the caller's home.
    cookie_home: Path | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def rabbitmqctl(self, *args: str, timeout: float = 60.0) -> str:
        """Run rabbitmqctl against this node; returns its output, raises if it fails."""
        home = {"HOME": str(self.cookie_home)} if self.cookie_home else {}
        result = subprocess.run(
            [str(RABBITMQCTL), "-q", "-n", self.node, *args],
            env={**os.environ, **home},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} on {self.node}: {result.stderr}")
        return result.stdout

    @property
    def log_path(self) -> Path:
        return self.base / "server.out"

    def _env(self) -> dict[str, str]:
        plugins = self.base / "enabled_plugins"
        if not plugins.exists():
            plugins.write_text("[].\n")
        (self.base / "mnesia").mkdir(exist_ok=True)
        (self.base / "log").mkdir(exist_ok=True)
        return {
            **os.environ,
            **({"HOME": str(self.cookie_home)} if self.cookie_home else {}),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(plugins),
            # Keep the node's default config (and so the shared broker's) out of it.
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.base / "advanced.config"),
        }

    def start(self, timeout: float = 60.0) -> None:
        # Readiness is an AMQP handshake on the node's port, not ``rabbitmqctl await_startup``:
        # the CLI tools would need this node's Erlang cookie, which lives in root's home.
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                [str(RABBITMQ_SERVER)],
                env=self._env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            if _port_open(self.port) and _amqp_handshake(self.url):
                return
            time.sleep(0.2)
        tail = self.log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"private RabbitMQ {self.node} did not start:\n{tail}")

    def stop(self) -> None:
        """A clean broker shutdown (SIGTERM: what a rolling restart or an upgrade does)."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        self._reap()

    def kill(self) -> None:
        """The broker dies: every process of the node gets SIGKILL."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self._reap()

    def _reap(self) -> None:
        assert self.process is not None
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        # epmd-launched helpers of this node only live in its process group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process = None
        deadline = time.monotonic() + 10
        while _port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.1)

    def restart(self, *, kill: bool = False) -> float:
        """Stop (or kill) and start again; returns how long the broker was down, in seconds."""
        down_at = time.monotonic()
        if kill:
            self.kill()
        else:
            self.stop()
        self.start()
        return time.monotonic() - down_at


@dataclass
class PrivateRedis:
    base: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    # More redis-server arguments (an ACL file, a TLS port); ``port`` is then still plain TCP.
    extra_args: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        with (self.base / "redis.out").open("ab") as out:
            self.process = subprocess.Popen(
                [
                    "redis-server",
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.base),
                    *self.extra_args,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not _port_open(self.port):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"private Redis on {self.port} did not start")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        self.process.wait(10)
        self.process = None

    def stop(self) -> None:
        """A clean shutdown (SIGTERM), as when a pod or a container is stopped."""
        if self.process is None:
            return
        self.process.terminate()
        self.process.wait(30)
        self.process = None

    def restart(self, down_s: float = 0.0) -> float:
        """Kill, stay down ``down_s``, start on the same port (empty unless ``extra_args`` give
        it persistence): seconds it was down."""
        down_at = time.monotonic()
        self.kill()
        time.sleep(down_s)
        self.start()
        return time.monotonic() - down_at


Server = TypeVar("Server", PrivateRabbitMQ, PrivateRedis)


@contextlib.contextmanager
def _running(kind: Callable[[Path], Server], prefix: str) -> Iterator[Server]:
    """A private server in a fresh directory, killed and wiped afterwards."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    server = kind(base)
    try:
        server.start()
        yield server
    finally:
        server.kill()
        shutil.rmtree(base, ignore_errors=True)


def private_rabbitmq() -> contextlib.AbstractContextManager[PrivateRabbitMQ]:
    return _running(PrivateRabbitMQ, "vf-rabbit-")


def private_redis(*extra_args: str) -> contextlib.AbstractContextManager[PrivateRedis]:
    """A private Redis; ``extra_args`` go to redis-server (an ACL file, TLS options,
    persistence)."""
    return _running(lambda base: PrivateRedis(base, extra_args=extra_args), "vf-redis-")


@dataclass
class PrivateRabbitMQCluster:
    nodes: list[PrivateRabbitMQ]

    @property
    def urls(self) -> str:
        """Every node's URL, comma-separated (VF_AMQP_URL of a fleet on the cluster)."""
        return ",".join(node.url for node in self.nodes)

    def running(self) -> list[PrivateRabbitMQ]:
        return [node for node in self.nodes if node.process is not None]

    def queues(self) -> list[dict[str, object]]:
        """Each queue's name, type, leader node and members, as a surviving node sees them."""
        out = self.running()[0].rabbitmqctl(
            "list_queues", "name", "type", "leader", "members", "--formatter", "json"
        )
        rows: list[dict[str, object]] = json.loads(out)
        return rows

    def node_named(self, name: str) -> PrivateRabbitMQ:
        return next(node for node in self.nodes if node.node == name)


@contextlib.contextmanager
def private_rabbitmq_cluster(size: int = 3) -> Iterator[PrivateRabbitMQCluster]:
    """``size`` private RabbitMQ nodes clustered with the first, killed and wiped afterwards."""
    base = Path(tempfile.mkdtemp(prefix="vf-cluster-"))
    cookie = base / ".erlang.cookie"
    cookie.write_text(uuid.uuid4().hex)
    cookie.chmod(0o400)
    nodes = []
    for index in range(size):
        (base / f"node{index}").mkdir()
        nodes.append(PrivateRabbitMQ(base / f"node{index}", cookie_home=base))
    try:
        # Booting is mostly waiting on Erlang: the nodes boot side by side.
        with ThreadPoolExecutor(size) as pool:
            list(pool.map(PrivateRabbitMQ.start, nodes))
        first = nodes[0]
        for node in nodes[1:]:
            node.rabbitmqctl("stop_app")
            node.rabbitmqctl("join_cluster", first.node)
            node.rabbitmqctl("start_app")
            node.rabbitmqctl("await_startup")
        yield PrivateRabbitMQCluster(nodes)
    finally:
        for node in nodes:
            node.kill()
        # The brokers' own logs outlive the cluster: what a queue did while a node was lost
        # (leader elections, refused publishes) is only told there.
        kept = ARTIFACTS / "rabbitmq-cluster"
        shutil.rmtree(kept, ignore_errors=True)
        for index, node in enumerate(nodes):
            if (node.base / "log").is_dir():
                shutil.copytree(node.base / "log", kept / f"node{index}", dirs_exist_ok=True)
        shutil.rmtree(base, ignore_errors=True)
