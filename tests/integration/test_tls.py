"""`amqps://` and `rediss://` URLs work (issue 10, item 8; docs/deploy.md, "TLS to RabbitMQ and
Redis").

A private RabbitMQ with a TLS listener and a private Redis with a TLS port, both with server
certificates from a certificate authority made here with openssl. A real worker runtime
(fleet.worker.start_runtime) connects over both, serves a job published over TLS, keeps session
state and hears turn notices, and its readiness probe says ready. The CA is given in the URLs
(`cafile=` for the broker, `ssl_ca_certs=` for Redis); without it the connection is refused,
because the server's certificate is verified.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as redis
from redis.exceptions import ConnectionError as RedisConnectionError

from fleet.contracts import TurnRequest
from fleet.settings import Settings
from fleet.state import Exchange, TurnWatch, secret_hash
from fleet.topology import Bus, Route
from fleet.worker import start_runtime
from tests.deploy.test_worker_health import aprobe
from tests.prerequisites import require
from tests.private_services import (
    PrivateRabbitMQ,
    PrivateRedis,
    free_port,
    rabbitmq_unavailable_reason,
    redis_unavailable_reason,
)


@dataclass(frozen=True)
class Pki:
    ca: Path
    cert: Path
    key: Path


def openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def make_pki(base: Path) -> Pki:
    """A CA and a server certificate for 127.0.0.1 and localhost, signed by it."""
    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=voicefleet test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=base,
    )  # fmt: skip
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=localhost",
        cwd=base,
    )  # fmt: skip
    (base / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
    )
    openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-out", "server.pem", "-extfile", "server.ext",
        cwd=base,
    )  # fmt: skip
    for name in ("server.key", "ca.key"):
        (base / name).chmod(0o644)  # the broker may run as another user than the test
    return Pki(base / "ca.pem", base / "server.pem", base / "server.key")


@dataclass
class TlsServices:
    broker: PrivateRabbitMQ
    redis_server: PrivateRedis
    amqps_port: int
    rediss_port: int
    pki: Pki

    def amqps_url(self, *, with_ca: bool = True) -> str:
        query = f"?cafile={self.pki.ca}" if with_ca else ""
        return f"amqps://guest:guest@localhost:{self.amqps_port}/{query}"

    def rediss_url(self, *, with_ca: bool = True) -> str:
        query = f"?ssl_ca_certs={self.pki.ca}" if with_ca else ""
        return f"rediss://127.0.0.1:{self.rediss_port}/0{query}"


@pytest.fixture(scope="module")
def tls_services() -> Iterator[TlsServices]:
    require("tls", rabbitmq_unavailable_reason() or redis_unavailable_reason())
    base = Path(tempfile.mkdtemp(prefix="vf-tls-"))
    pki = make_pki(base)
    amqps_port, rediss_port = free_port(), free_port()
    (base / "broker").mkdir()
    (base / "broker" / "rabbitmq.conf").write_text(
        f"listeners.ssl.default = 127.0.0.1:{amqps_port}\n"
        f"ssl_options.cacertfile = {pki.ca}\n"
        f"ssl_options.certfile = {pki.cert}\n"
        f"ssl_options.keyfile = {pki.key}\n"
        "ssl_options.verify = verify_none\n"
        "ssl_options.fail_if_no_peer_cert = false\n"
    )
    broker = PrivateRabbitMQ(base / "broker")
    (base / "redis").mkdir()
    redis_server = PrivateRedis(
        base / "redis",
        extra_args=(
            "--tls-port", str(rediss_port),
            "--tls-cert-file", str(pki.cert),
            "--tls-key-file", str(pki.key),
            "--tls-ca-cert-file", str(pki.ca),
            "--tls-auth-clients", "no",
        ),
    )  # fmt: skip
    try:
        broker.start()
        redis_server.start()
        yield TlsServices(broker, redis_server, amqps_port, rediss_port, pki)
    finally:
        broker.kill()
        redis_server.kill()
        shutil.rmtree(base, ignore_errors=True)


async def test_a_worker_serves_over_amqps_and_rediss(tls_services: TlsServices) -> None:
    health = free_port()
    settings = Settings(
        amqp_url=tls_services.amqps_url(),
        redis_url=tls_services.rediss_url(),
        namespace=f"t{uuid.uuid4().hex[:10]}",
        health_port=health,
        log_json=False,
        drain_timeout_s=1.0,
    )
    received: list[TurnRequest] = []
    served = asyncio.Event()

    async def handle(request: TurnRequest) -> None:
        received.append(request)
        served.set()

    async with start_runtime(settings, "llm", "tls-worker") as runtime:
        serving = asyncio.create_task(
            runtime.serve_jobs(Route.LLM_TURNS, TurnRequest, handle, 1, gave_up=handle)
        )
        await runtime.consuming.wait()
        # Ready: broker over TLS up, Redis over TLS answering.
        assert await aprobe(health, "/readyz") == (200, "ready\n")

        # A job published over TLS (its own connection) is served (and counted in Redis).
        publisher = await Bus.connect(settings, "tls-publisher")
        try:
            await publisher.publish(TurnRequest("s-tls", 1, "hello over TLS"))
            async with asyncio.timeout(20):
                await served.wait()
        finally:
            await publisher.close()
        assert received == [TurnRequest("s-tls", 1, "hello over TLS")]

        # Session state and turn notices over TLS.
        store = runtime.store
        await store.open_session("s-tls", "g1", "stream-1", secret_hash("secret"))
        woken = runtime.turns.superseded("s-tls", 0)
        assert await store.next_turn("s-tls") == 1
        async with asyncio.timeout(5):
            await woken.wait()
        await store.record_exchange("s-tls", Exchange("hello", "hi"))
        assert await store.history("s-tls") == [Exchange("hello", "hi")]
        assert isinstance(runtime.turns, TurnWatch)

        runtime.stopping.set()
        await serving
        await store.delete_session("s-tls")


async def test_the_server_certificate_is_verified(tls_services: TlsServices) -> None:
    """Without the CA the connections fail: TLS here is verified, not merely encrypted."""
    settings = Settings(amqp_url=tls_services.amqps_url(with_ca=False), namespace="tls-no-ca")
    with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
        async with asyncio.timeout(20):
            await Bus.connect(settings, "tls-no-ca")
    client = redis.Redis.from_url(tls_services.rediss_url(with_ca=False))
    with pytest.raises(RedisConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        await client.ping()
    await client.aclose()
    # And the same CA given in the URL is all it takes.
    client = redis.Redis.from_url(tls_services.rediss_url())
    assert await client.ping()
    await client.aclose()
