"""Each role's Redis user, as the manifests render it, on a real Redis (issue 10, item 8).

The overlay is rendered with kubectl kustomize; the Redis pod's own init script
(k8s/base/redis/compose-acl.sh) writes the ACL file from the rendered rules and test Secrets; a
private redis-server loads it. Then each role's own product code (SessionStore, TurnWatch, the
health PING) does that role's job under that role's user, and everything else is refused:
another role's writes, another namespace's keys, administration, and any client that does not
authenticate.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

from fleet.settings import Settings
from fleet.state import (
    Exchange,
    ProviderOffer,
    SessionStore,
    TtsOffer,
    TtsOffers,
    TurnWatch,
    connect_redis,
    key_prefix,
    secret_hash,
)
from tests.deploy.manifests import OVERLAYS
from tests.deploy.test_cluster_rules import render_with
from tests.deploy.test_compose import rendered
from tests.deploy.test_manifests import built
from tests.private_services import PrivateRedis, private_redis
from voicefleet import deploy_names

ROLES = deploy_names.ROLES


@dataclass
class AclRedis:
    server: PrivateRedis
    namespace: str
    passwords: dict[str, str]  # user name -> password

    def url(self, user: str, password: str | None = None) -> str:
        secret = self.passwords[user] if password is None else password
        return f"redis://{user}:{secret}@127.0.0.1:{self.server.port}/0"

    def settings(self, role: str, namespace: str | None = None) -> Settings:
        return Settings(
            redis_url=self.url(f"vf-{role}"),
            namespace=self.namespace if namespace is None else namespace,
        )


def rendered_acl_configmap(
    docs: tuple[dict[str, Any], ...] | list[dict[str, Any]],
) -> dict[str, str]:
    (acl,) = (
        d
        for d in docs
        if d["kind"] == "ConfigMap"
        and d["metadata"]["name"].startswith(deploy_names.REDIS_ACL_CONFIGMAP)
    )
    data: dict[str, str] = acl["data"]
    return data


def compose_acl_file(data: dict[str, str], base: Path) -> tuple[Path, dict[str, str]]:
    """Run the rendered init script on the rendered rules and fresh test Secrets."""
    rules, users = base / "rules", base / "users"
    rules.mkdir()
    for key, value in data.items():
        (rules / key).write_text(value)
    passwords = {}
    for role in (*ROLES, "admin"):
        (users / role).mkdir(parents=True)
        password = secrets.token_hex(16)
        if role != "admin":
            (users / role / "username").write_text(f"vf-{role}")
        (users / role / "password").write_text(password)
        passwords["admin" if role == "admin" else f"vf-{role}"] = password
    out = base / "users.acl"
    result = subprocess.run(
        ["sh", str(rules / "compose-acl.sh"), str(rules), str(users), str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    # Only digests of the passwords are written.
    assert not any(password in text for password in passwords.values())
    return out, passwords


@pytest.fixture(scope="module", params=["", "acme"], ids=["no-namespace", "namespace-acme"])
def acl_redis(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AclRedis]:
    namespace: str = request.param
    base = tmp_path_factory.mktemp("redis-acl")
    if namespace:
        component = base / f"ns-{namespace}"
        component.mkdir()
        (component / "kustomization.yaml").write_text(
            json.dumps(deploy_names.namespace_component(namespace))
        )
        render = base / "render"
        render.mkdir()
        docs: Any = render_with(render, "one-box", component)
    else:
        docs = built("one-box")
    acl_file, passwords = compose_acl_file(rendered_acl_configmap(docs), base)
    with private_redis("--aclfile", str(acl_file)) as server:
        yield AclRedis(server, namespace, passwords)


@pytest.fixture
async def admin(acl_redis: AclRedis) -> AsyncIterator[redis.Redis]:
    client = redis.Redis.from_url(acl_redis.url("admin"), decode_responses=True)
    await client.acl_log_reset()
    yield client
    await client.aclose()


@pytest.fixture
async def stores(acl_redis: AclRedis) -> AsyncIterator[dict[str, SessionStore]]:
    """Each role's store, connected as that role's user."""
    made = {}
    for role in ROLES:
        settings = acl_redis.settings(role)
        made[role] = SessionStore(connect_redis(settings), settings)
    yield made
    for store in made.values():
        await store.redis.aclose()


async def test_each_role_does_its_job_under_its_own_user(
    acl_redis: AclRedis, admin: redis.Redis, stores: dict[str, SessionStore]
) -> None:
    gateway, stt, llm, tts = (stores[role] for role in ROLES)
    for store in stores.values():  # /readyz and the workers' health probe
        assert await store.redis.ping()
    watches = {role: TurnWatch(stores[role]) for role in ("stt", "llm", "tts")}
    for watch in watches.values():
        await watch.start()  # subscribes to the turn notices
    try:
        session = f"s{uuid.uuid4().hex[:8]}"
        # The gateway opens, resumes, keeps alive and takes turns of a session.
        assert not await gateway.open_session(session, "g1", "stream-1", secret_hash("secret"))
        assert await gateway.owned_by(session, "secret")
        assert not await gateway.keep_alive(session, "g1", "stream-1", secret_hash("secret"))
        await gateway.touch(session)
        woken = {role: watch.superseded(session, 0) for role, watch in watches.items()}
        assert await gateway.next_turn(session) == 1
        async with asyncio.timeout(5):
            for event in woken.values():
                await event.wait()  # every worker heard the gateway's notice
        await gateway.record_exchange(session, Exchange("hello", "hi there"))
        await gateway.record_exchange(session, Exchange("hello", "hi"), replaces_last=True)
        assert await gateway.current_turn(session) == 1
        # The STT worker checks the stream it holds and counts its failures.
        assert await stt.current_stream(session) == "stream-1"
        assert not await stt.stream_ended(session, "stream-1")
        assert await stt.count_delivery("stt-failure:stream-1") == 1
        # The LLM bridge reads the history and the turn, and counts its deliveries.
        assert await llm.history(session) == [Exchange("hello", "hi")]
        assert await watches["llm"].is_stale(session, 0)
        assert await llm.count_delivery("m-1") == 1
        # The TTS worker reads the turn and counts its deliveries.
        assert not await watches["tts"].is_stale(session, 1)
        assert await tts.count_delivery("m-2") == 1
        # The TTS worker publishes what it offers; the gateway reads it, and drops from the
        # index a worker whose record expired (here: deleted as the TTL would).
        local = ProviderOffer("local", "kokoro", "0.6.1", "ok", voices=("af_heart",))
        tts_offers = TtsOffers(tts.redis, tts.settings)
        gateway_offers = TtsOffers(gateway.redis, gateway.settings)
        await tts_offers.publish(TtsOffer("tts-1", "local", (local,)), 30)
        await tts_offers.publish(TtsOffer("tts-2", "local", (local,)), 30)
        assert [o.worker for o in await gateway_offers.current()] == ["tts-1", "tts-2"]
        await tts_offers.withdraw("tts-1")
        await admin.delete(f"{key_prefix(acl_redis.namespace)}:tts:offer:tts-2")
        assert await gateway_offers.current() == []
        # The gateway ends the stream and, later, the session.
        await gateway.end_stream(session, "stream-1")
        assert await stt.stream_ended(session, "stream-1")
        await gateway.delete_session(session)
        assert not await gateway.exists(session)
    finally:
        for watch in watches.values():
            await watch.stop()
    # Nothing of that was refused.
    assert await admin.acl_log() == []


async def refused(call: Any) -> None:
    with pytest.raises(NoPermissionError):
        await call


async def test_each_role_is_refused_everything_else(
    acl_redis: AclRedis, admin: redis.Redis, stores: dict[str, SessionStore]
) -> None:
    gateway, stt, llm, tts = (stores[role] for role in ROLES)
    session = f"s{uuid.uuid4().hex[:8]}"
    await gateway.open_session(session, "g1", "stream-1", secret_hash("secret"))
    await gateway.next_turn(session)
    await gateway.record_exchange(session, Exchange("hello", "hi"))
    p = key_prefix(acl_redis.namespace)
    info, turn, history = (f"{p}:session:{session}:{part}" for part in ("info", "turn", "history"))

    # Workers read sessions, never write them, and see only the parts they need.
    await refused(stt.redis.hset(info, "stream", "mine"))
    await refused(stt.redis.get(turn))
    await refused(stt.redis.lrange(history, 0, -1))
    await refused(llm.redis.rpush(history, "forged"))
    await refused(llm.redis.incr(turn))
    await refused(llm.redis.hget(info, "secret"))
    await refused(tts.redis.lrange(history, 0, -1))
    await refused(tts.redis.hget(info, "secret"))
    await refused(tts.redis.incr(turn))
    # Only the gateway announces turns; only workers listen. Delivery counters are the workers'.
    for worker in (stt, llm, tts):
        await refused(worker.redis.publish(worker.turn_channel, '{"session": "x", "turn": 9}'))
    await refused(gateway.redis.incr(f"{p}:deliveries:m-1"))
    # Offers are the TTS workers' to write; the gateway only reads them.
    await refused(gateway.redis.set(f"{p}:tts:offer:forged", "{}"))
    await refused(stt.redis.set(f"{p}:tts:offer:forged", "{}"))
    await refused(tts.redis.set(f"{p}:session:{session}:turn", "9"))
    # (a plain client: the pub/sub client reads the answer only later)
    plain: Any = gateway.redis
    await refused(plain.execute_command("SUBSCRIBE", gateway.turn_channel))

    # Another fleet's keys and channel (another namespace) are out of every role's reach.
    other = key_prefix("" if acl_redis.namespace else "acme")
    await refused(gateway.redis.hget(f"{other}:session:{session}:info", "secret"))
    await refused(gateway.redis.publish(f"{other}:turns", "{}"))
    await refused(stt.redis.hget(f"{other}:session:{session}:info", "stream"))
    await refused(llm.redis.lrange(f"{other}:session:{session}:history", 0, -1))
    await refused(tts.redis.get(f"{other}:session:{session}:turn"))
    await refused(tts.redis.incr(f"{other}:deliveries:m-1"))
    other_store = SessionStore(
        gateway.redis, acl_redis.settings("gateway", other_namespace(acl_redis))
    )
    await refused(other_store.open_session(session, "g1", "stream-1", secret_hash("secret")))

    # No role administers Redis or lists what is in it.
    for store in stores.values():
        await refused(store.redis.keys("*"))
        await refused(store.redis.flushall())
        await refused(store.redis.config_get("*"))
        await refused(store.redis.acl_list())
        await refused(store.redis.scan(0))
        await refused(store.redis.client_list())
    # A wrong password, or none, gets nothing at all.
    wrong = redis.Redis.from_url(acl_redis.url("vf-gateway", "wrong"))
    with pytest.raises(AuthenticationError):
        await wrong.ping()
    await wrong.aclose()
    anonymous = redis.Redis.from_url(f"redis://127.0.0.1:{acl_redis.server.port}/0")
    with pytest.raises((AuthenticationError, ResponseError)):
        await anonymous.get(turn)
    await anonymous.aclose()
    # The session is as the gateway left it.
    assert await gateway.history(session) == [Exchange("hello", "hi")]
    assert await gateway.current_stream(session) == "stream-1"
    assert len(await admin.acl_log()) > 0


def other_namespace(acl_redis: AclRedis) -> str:
    return "" if acl_redis.namespace else "acme"


# --- no password on a command line ----------------------------------------------------------------
def passes_a_secret(argument: str) -> bool:
    """Whether a command-line argument carries a password or its variable (a probe's `$(cat
    FILE)` into an environment variable is not one)."""
    return bool(re.search(r"requirepass|--pass\b|\$\(?\w*PASSWORD", argument))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_container_gets_a_password_on_its_command_line(overlay: str) -> None:
    for doc in built(overlay):
        if doc["kind"] not in ("Deployment", "StatefulSet"):
            continue
        pod = doc["spec"]["template"]["spec"]
        for spec in [*pod.get("initContainers", []), *pod["containers"]]:
            probes = [spec.get(p, {}).get("exec", {}) for p in ("readinessProbe", "livenessProbe")]
            arguments = [*spec.get("command", []), *spec.get("args", [])]
            arguments += [a for probe in probes for a in probe.get("command", [])]
            for argument in arguments:
                assert not passes_a_secret(str(argument)), (doc["metadata"]["name"], argument)


def test_compose_redis_gets_its_password_in_a_file_not_its_arguments() -> None:
    redis_service = rendered(("cpu",))["services"]["redis"]
    script = redis_service["command"][-1]
    server = script[script.index("exec redis-server") :]
    assert not passes_a_secret(server), server
    assert re.search(r"printf 'requirepass %s\\n' \"\$\$REDIS_PASSWORD\" > (\S+)", script)
    healthcheck = " ".join(redis_service["healthcheck"]["test"])
    assert "redis-cli" in healthcheck and "REDISCLI_AUTH=" in healthcheck
