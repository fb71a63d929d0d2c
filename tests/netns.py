"""Several "hosts" on one machine: network namespaces joined by a bridge, for multi-host tests.

A :class:`NetLab` makes three namespaces, ``vf-<id>-broker``, ``vf-<id>-hostA`` and
``vf-<id>-hostB``, each with its own network stack (loopback included), on a private /24 that
exists only inside them and on one veth of the test process's (root) namespace:

    root ns  vf<id>r 10.231.N.254 ──┐
                                    │    broker ns: bridge br0 10.231.N.1
    hostA ns eth0    10.231.N.11 ───┼─── ports pR, pA, pB
    hostB ns eth0    10.231.N.12 ───┘

The broker namespace plays the box that runs RabbitMQ, Redis, the chat server and the gateway;
hostA and hostB play worker boxes. ``cut(host)`` takes a host's link down (its processes live
on, partitioned, as with a pulled cable), ``mend(host)`` brings it back.

Nothing here touches the shared RabbitMQ (127.0.0.1:5672) or Redis (127.0.0.1:6379): the
broker namespace runs a RabbitMQ and a Redis of its own, on the standard ports of its own stack.
Everything needs root; :func:`netns_unavailable_reason` says why a test must skip.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.fleet_processes import ROOT, FleetProcess

IP = shutil.which("ip") or "/usr/sbin/ip"
RABBITMQ_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
RABBITMQCTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
HOSTS = ("hostA", "hostB")
AMQP_PORT = 5672
REDIS_PORT = 6379


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([IP, *args], capture_output=True, text=True, timeout=30, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def netns_unavailable_reason() -> str | None:
    """Why network-namespace "hosts" cannot be made here, or None when they can."""
    if sys.platform != "linux":
        return "network namespaces are Linux-only"
    if os.geteuid() != 0:
        return "network namespaces (ip netns add) need root"
    if not Path(IP).exists():
        return "iproute2 (`ip`) is not installed"
    if not RABBITMQ_SERVER.exists():
        return f"{RABBITMQ_SERVER} is not installed"
    if not shutil.which("redis-server"):
        return "redis-server is not installed"
    probe = f"vf-probe-{uuid.uuid4().hex[:8]}"
    added = _ip("netns", "add", probe, check=False)
    if added.returncode != 0:
        return f"`ip netns add` fails here: {added.stderr.strip()}"
    try:
        veth = _ip(
            "-n", probe, "link", "add", "a0", "type", "veth", "peer", "name", "b0", check=False
        )
        if veth.returncode != 0:
            return f"veth pairs cannot be made here: {veth.stderr.strip()}"
        bridge = _ip("-n", probe, "link", "add", "br0", "type", "bridge", check=False)
        if bridge.returncode != 0:
            return f"bridges cannot be made here: {bridge.stderr.strip()}"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


def _subnets_in_use() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    used = []
    for line in _ip("-4", "route", "show", "table", "all").stdout.splitlines():
        word = line.split()[0] if line.split() else ""
        with contextlib.suppress(ValueError):
            if word not in ("default", "local", "broadcast", "unreachable"):
                used.append(ipaddress.ip_network(word, strict=False))
    for line in _ip("-4", "-o", "addr", "show").stdout.splitlines():
        parts = line.split()
        if "inet" in parts:
            used.append(ipaddress.ip_interface(parts[parts.index("inet") + 1]).network)
    return used


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 of 10.231.0.0/16 that no route or address of this machine's root namespace uses."""
    used = _subnets_in_use()
    candidates = list(range(1, 255))
    random.shuffle(candidates)
    for third in candidates:
        net = ipaddress.IPv4Network(f"10.231.{third}.0/24")
        if not any(net.overlaps(other) for other in used):
            return net
    raise RuntimeError("no free /24 in 10.231.0.0/16")


@dataclass
class NetnsProcess(FleetProcess):
    """A process (a fleet role, or any ``command``) run inside a network namespace."""

    netns: str = ""
    command: list[str] | None = None

    def start(self) -> None:
        argv = self.command or [sys.executable, "-m", "voicefleet.cli", *self.args]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            # `ip netns exec` joins the namespace and execs the command: the pid is the process.
            self.process = subprocess.Popen(
                [IP, "netns", "exec", self.netns, *argv],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                start_new_session=True,
            )

    def kill(self) -> None:
        """SIGKILL the process and its process group (the broker's helpers live there)."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)


@dataclass
class NetLab:
    """Three namespaces on a private /24; see the module docstring for the picture."""

    base: Path
    lab_id: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    subnet: ipaddress.IPv4Network | None = None
    processes: dict[str, NetnsProcess] = field(default_factory=dict)
    _made: list[str] = field(default_factory=list)
    _root_veth_made: bool = False

    # --- names and addresses -------------------------------------------------------------------

    @property
    def broker(self) -> str:
        return f"vf-{self.lab_id}-broker"

    def ns(self, host: str) -> str:
        return self.broker if host == "broker" else f"vf-{self.lab_id}-{host}"

    @property
    def root_veth(self) -> str:
        return f"vf{self.lab_id}r"  # <= 15 characters, unique in the root namespace

    def address(self, host: str) -> str:
        assert self.subnet is not None
        offset = {"broker": 1, "hostA": 11, "hostB": 12, "root": 254}[host]
        return str(self.subnet.network_address + offset)

    def host_of(self, peer_address: str) -> str | None:
        for host in ("broker", *HOSTS, "root"):
            if self.address(host) == peer_address:
                return host
        return None

    @property
    def broker_address(self) -> str:
        return self.address("broker")

    # --- the network ---------------------------------------------------------------------------

    def create(self) -> None:
        self.subnet = _free_subnet()
        prefix = self.subnet.prefixlen
        for host in ("broker", *HOSTS):
            _ip("netns", "add", self.ns(host))
            self._made.append(self.ns(host))
            _ip("-n", self.ns(host), "link", "set", "lo", "up")
        broker = self.broker
        _ip("-n", broker, "link", "add", "br0", "type", "bridge")
        for host, port in (("hostA", "pA"), ("hostB", "pB")):
            _ip("-n", self.ns(host), "link", "add", "eth0", "type", "veth",
                "peer", "name", port, "netns", broker)  # fmt: skip
            _ip("-n", self.ns(host), "addr", "add", f"{self.address(host)}/{prefix}", "dev", "eth0")
            _ip("-n", self.ns(host), "link", "set", "eth0", "up")
        _ip("link", "add", self.root_veth, "type", "veth", "peer", "name", "pR", "netns", broker)
        self._root_veth_made = True
        _ip("addr", "add", f"{self.address('root')}/{prefix}", "dev", self.root_veth)
        _ip("link", "set", self.root_veth, "up")
        for port in ("pA", "pB", "pR"):
            _ip("-n", broker, "link", "set", port, "master", "br0")
            _ip("-n", broker, "link", "set", port, "up")
        _ip("-n", broker, "addr", "add", f"{self.broker_address}/{prefix}", "dev", "br0")
        _ip("-n", broker, "link", "set", "br0", "up")
        self._wait_reachable()

    def _wait_reachable(self, timeout: float = 10.0) -> None:
        """The bridge forwards only once its ports leave the listening state."""
        deadline = time.monotonic() + timeout
        for host in HOSTS:
            while True:
                ping = subprocess.run(
                    [IP, "netns", "exec", self.ns(host), "ping", "-c1", "-W1", self.broker_address],
                    capture_output=True,
                    check=False,
                )
                if ping.returncode == 0:
                    break
                if not shutil.which("ping"):
                    time.sleep(1.0)  # no ping here: give the bridge its moment and go on
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{host} cannot reach the broker namespace")
                time.sleep(0.1)

    def cut(self, host: str) -> None:
        """Pull the host's cable: its link goes down, its processes live on, unreachable."""
        _ip("-n", self.ns(host), "link", "set", "eth0", "down")

    def mend(self, host: str) -> None:
        _ip("-n", self.ns(host), "link", "set", "eth0", "up")

    # --- processes -----------------------------------------------------------------------------

    def start(
        self,
        name: str,
        host: str,
        env: dict[str, str],
        *args: str,
        command: list[str] | None = None,
        log_dir: Path,
    ) -> NetnsProcess:
        process = NetnsProcess(
            name, list(args), env, log_dir / f"{name}.log", netns=self.ns(host), command=command
        )
        self.processes[name] = process
        process.start()
        return process

    def start_rabbitmq(self, log_dir: Path) -> NetnsProcess:
        """A RabbitMQ of the broker namespace's own: AMQP on its 5672, guest allowed remotely."""
        home = self.base / "rabbitmq"
        (home / "mnesia").mkdir(parents=True, exist_ok=True)
        (home / "log").mkdir(exist_ok=True)
        (home / "enabled_plugins").write_text("[].\n")
        # Workers log in from other hosts: guest must not be limited to loopback.
        (home / "rabbitmq.conf").write_text(
            f"loopback_users.guest = false\nlisteners.tcp.default = {AMQP_PORT}\n"
        )
        env = {**self.rabbitmq_env(), "HOME": os.environ.get("HOME", "/root")}
        return self.start(
            "rabbitmq", "broker", env, command=[str(RABBITMQ_SERVER)], log_dir=log_dir
        )

    @property
    def rabbitmq_node(self) -> str:
        return f"vf{self.lab_id}@localhost"

    def rabbitmq_env(self) -> dict[str, str]:
        home = self.base / "rabbitmq"
        return {
            **os.environ,
            "RABBITMQ_NODENAME": self.rabbitmq_node,
            "RABBITMQ_NODE_PORT": str(AMQP_PORT),
            "RABBITMQ_DIST_PORT": "25672",
            "RABBITMQ_MNESIA_BASE": str(home / "mnesia"),
            "RABBITMQ_LOG_BASE": str(home / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(home / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(home / "rabbitmq"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(home / "advanced.config"),
        }

    def rabbitmqctl(self, *args: str, timeout: float = 60.0) -> str:
        """rabbitmqctl against the lab's node, run inside the broker namespace (its epmd)."""
        result = subprocess.run(
            [IP, "netns", "exec", self.broker, RABBITMQCTL, "-n", self.rabbitmq_node, *args],
            env=self.rabbitmq_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {result.stderr.strip()[-2000:]}")
        return result.stdout

    def start_redis(self, log_dir: Path) -> NetnsProcess:
        home = self.base / "redis"
        home.mkdir(parents=True, exist_ok=True)
        command = [
            "redis-server", "--port", str(REDIS_PORT), "--bind", "0.0.0.0",
            "--protected-mode", "no", "--save", "", "--appendonly", "no", "--dir", str(home),
        ]  # fmt: skip
        return self.start("redis", "broker", dict(os.environ), command=command, log_dir=log_dir)

    # --- cleanup -------------------------------------------------------------------------------

    def namespace_pids(self, host: str) -> list[int]:
        result = _ip("netns", "pids", self.ns(host), check=False)
        return [int(word) for word in result.stdout.split() if word.isdigit()]

    def destroy(self) -> None:
        """Kill every process in the lab's namespaces, then remove the links and namespaces."""
        for process in reversed(list(self.processes.values())):
            process.kill()
        # Anything else still in the namespaces was started by this lab (epmd, say): end it too.
        for ns in self._made:
            host = next(h for h in ("broker", *HOSTS) if self.ns(h) == ns)
            for pid in self.namespace_pids(host):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self._root_veth_made:
            _ip("link", "del", self.root_veth, check=False)
        for ns in reversed(self._made):
            _ip("netns", "del", ns, check=False)
        self._made.clear()
        shutil.rmtree(self.base, ignore_errors=True)


@contextlib.contextmanager
def net_lab(base: Path) -> Iterator[NetLab]:
    lab = NetLab(base)
    try:
        lab.create()
        yield lab
    finally:
        lab.destroy()
