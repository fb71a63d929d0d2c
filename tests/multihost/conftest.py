"""A fleet spread over three network-namespace "hosts" (see tests/netns.py).

- broker host: a RabbitMQ and a Redis of the lab's own, the chat server, the gateway;
- hostA and hostB: one STT, one LLM-bridge and one TTS worker each, reaching the broker host
  over the lab's bridge, never over loopback.

Worker connections ask RabbitMQ for a 2 s heartbeat (``VF_AMQP_HEARTBEAT_S=2``), so that the
broker notices a host whose cable was pulled within seconds instead of the default minute.
Logs go to ``artifacts/multihost/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import httpx
import pytest

from fleet.model_paths import model_paths
from fleet.settings import Settings
from fleet.topology import Names
from tests.fleet_processes import ARTIFACTS, check_alive, process_logs
from tests.netns import (
    AMQP_PORT,
    HOSTS,
    REDIS_PORT,
    NetLab,
    NetnsProcess,
    net_lab,
    netns_unavailable_reason,
)
from tests.prerequisites import require
from tests.speech import speech
from voicefleet.llm_server import server_argv

LOG_DIR = ARTIFACTS / "multihost"
GATEWAY_PORT = 8000  # the broker host's own network stack: no clash with anything on this machine
LLM_PORT = 8081
WORKER_HEARTBEAT_S = 2
KINDS = ("stt", "llm", "tts")

QUESTION = "What is the capital of France?"
FOLLOW_UP = "And what is the capital of Germany?"


@dataclass
class MultiHostFleet:
    lab: NetLab
    settings: Settings
    started_s: float  # how long the lab and the fleet took to come up

    @property
    def ws_url(self) -> str:
        return f"ws://{self.lab.broker_address}:{GATEWAY_PORT}/ws/audio"

    @property
    def processes(self) -> dict[str, NetnsProcess]:
        return self.lab.processes

    def workers_that_logged(
        self, kind: str, event: str, session_id: str, **match: object
    ) -> list[str]:
        return [
            name
            for name, process in self.processes.items()
            if name.startswith(f"{kind}-")
            and any(
                e.get("event") == event
                and e.get("session_id") == session_id
                and all(e.get(k) == v for k, v in match.items())
                for e in process.log_events()
            )
        ]

    async def wait_for_worker(
        self, kind: str, event: str, session_id: str, patience: float = 30.0, **match: object
    ) -> str:
        async with asyncio.timeout(patience):
            # Another process writes the log: there is nothing to wait on but the file itself.
            while not (names := self.workers_that_logged(kind, event, session_id, **match)):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        return names[0]

    def log_count(self, name: str, event: str) -> int:
        """How many times process ``name`` has logged ``event`` so far."""
        return sum(1 for e in self.processes[name].log_events() if e.get("event") == event)

    async def wait_for_log(self, name: str, event: str, since: int, patience: float) -> None:
        """Until process ``name`` has logged ``event`` more than ``since`` times."""
        async with asyncio.timeout(patience):
            # Another process writes the log: there is nothing to wait on but the file itself.
            while self.log_count(name, event) <= since:  # noqa: ASYNC110
                await asyncio.sleep(0.05)

    def log_event(self, name: str, event: str, session_id: str) -> dict[str, object]:
        return next(
            e
            for e in self.processes[name].log_events()
            if e.get("event") == event and e.get("session_id") == session_id
        )

    def amqp_connections(self) -> dict[str, dict[str, object]]:
        """The broker's view of its clients: connection name -> peer host and heartbeat."""
        out = self.lab.rabbitmqctl(
            "list_connections", "peer_host", "timeout", "client_properties", "--formatter", "json"
        )
        connections = {}
        for row in json.loads(out[out.index("[") :]):
            props = {p[0]: p[2] for p in row["client_properties"]}
            connections[str(props.get("connection_name", ""))] = {
                "peer_host": _address(row["peer_host"]),
                "heartbeat": row["timeout"],
            }
        return connections

    def logs(self) -> str:
        return process_logs(self.processes, lines=15)

    def check_alive(self) -> None:
        check_alive(self.processes)


def _address(peer: object) -> str:
    """rabbitmqctl's peer_host (a tuple of ints; IPv4-mapped IPv6 on a dual-stack listener)."""
    if isinstance(peer, list) and len(peer) == 4:
        return str(ipaddress.IPv4Address(bytes(peer)))
    if isinstance(peer, list) and len(peer) == 8:
        v6 = ipaddress.IPv6Address(b"".join(int(g).to_bytes(2, "big") for g in peer))
        return str(v6.ipv4_mapped or v6)
    return str(peer)


def _wait(what: str, ready: object, fleet: MultiHostFleet, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fleet.check_alive()
        with contextlib.suppress(Exception):
            if ready():  # type: ignore[operator]
                return
        time.sleep(0.2)
    raise TimeoutError(f"{what} not ready after {timeout}s\n{fleet.logs()}")


async def _consumer_counts(url: str, names: Names) -> list[int]:
    connection = await aio_pika.connect(url)
    async with connection:
        counts = []
        for queue in (names.stt_sessions, names.llm_turns, names.tts_jobs):
            try:
                async with connection.channel() as channel:
                    declared = await channel.declare_queue(queue, passive=True)
                    counts.append(declared.declaration_result.consumer_count or 0)
            except aio_pika.exceptions.ChannelClosed:
                counts.append(0)
        return counts


def _amqp_up(url: str, address: str) -> bool:
    with socket.create_connection((address, AMQP_PORT), timeout=1):
        pass  # the listener opens last in RabbitMQ's boot: until then, no connection attempts

    async def connect() -> None:
        connection = await aio_pika.connect(url, timeout=2)
        await connection.close()

    asyncio.run(connect())
    return True


@pytest.fixture(scope="module")
def multihost() -> Iterator[MultiHostFleet]:
    require("multihost", netns_unavailable_reason())
    if not model_paths(Settings()).chat_gguf.is_file():
        pytest.fail("the chat model is not assembled; run `voicefleet models`", pytrace=False)
    started = time.monotonic()
    shutil.rmtree(LOG_DIR, ignore_errors=True)
    with net_lab(Path(tempfile.mkdtemp(prefix="vf-netlab-"))) as lab:
        namespace = f"mh{uuid.uuid4().hex[:8]}"
        settings = Settings(namespace=namespace)
        fleet = MultiHostFleet(lab, settings, 0.0)
        broker = lab.broker_address
        amqp = f"amqp://guest:guest@{broker}:{AMQP_PORT}/"
        env = {
            **os.environ,
            "VF_NAMESPACE": namespace,
            "VF_AMQP_URL": amqp,
            "VF_REDIS_URL": f"redis://{broker}:{REDIS_PORT}/0",
            "VF_LLM_URL": f"http://{broker}:{LLM_PORT}/v1",
            "VF_LOG_JSON": "true",
            "VF_DRAIN_TIMEOUT_S": "3",
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
        }
        lab.start_rabbitmq(LOG_DIR)
        lab.start_redis(LOG_DIR)
        # `voicefleet llm-server` binds 127.0.0.1 only; on its own box it must take remote calls.
        llm_argv = server_argv(LLM_PORT, "0.0.0.0", settings)
        lab.start("llm-server", "broker", env, command=llm_argv, log_dir=LOG_DIR)
        _wait("RabbitMQ", lambda: _amqp_up(amqp, broker), fleet, timeout=60)

        worker_env = {**env, "VF_AMQP_HEARTBEAT_S": str(WORKER_HEARTBEAT_S)}
        for host in HOSTS:
            for kind in KINDS:
                name = f"{kind}-{host}"
                lab.start(name, host, {**worker_env, "VF_WORKER_ID": name}, "worker", kind,
                          log_dir=LOG_DIR)  # fmt: skip
        gateway_env = {
            **env,
            "VF_GATEWAY_HOST": "0.0.0.0",
            # The lab's network namespaces reach nothing but each other: no client auth here.
            "VF_ALLOW_ANONYMOUS": "true",
            "VF_GATEWAY_PORT": str(GATEWAY_PORT),
            "VF_WORKER_ID": "gateway-broker",
        }
        lab.start("gateway", "broker", gateway_env, "gateway", log_dir=LOG_DIR)
        # The spoken questions are made here, while the fleet loads its models.
        speech(QUESTION)
        speech(FOLLOW_UP)

        def http_ok(url: str) -> bool:
            return httpx.get(url, timeout=2, trust_env=False).status_code == 200

        _wait("chat server", lambda: http_ok(f"http://{broker}:{LLM_PORT}/v1/models"), fleet, 120)
        _wait("gateway", lambda: http_ok(f"http://{broker}:{GATEWAY_PORT}/readyz"), fleet, 60)
        names = Names(namespace)
        every_worker = len(HOSTS)
        _wait(
            "workers on both hosts",
            lambda: all(c >= every_worker for c in asyncio.run(_consumer_counts(amqp, names))),
            fleet,
            timeout=120,
        )
        fleet.started_s = time.monotonic() - started
        yield fleet
