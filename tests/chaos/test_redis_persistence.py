"""Redis restarts: with the deployment profiles' persistence a conversation is all there after.

A private Redis (own port, own data directory) runs with the persistence options of the
Kubernetes manifests' Redis (append-only file, fsync every second; compose gives the same, both
checked by tests/deploy), holds a conversation (its record, turn counter and history) and is
stopped or killed and started again: the conversation is there after the restart.
Without those options (the chaos tests' Redis) the same restart forgets it: what losing Redis
costs without persistence (docs/deploy.md, "Redis").
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from fleet.settings import Settings
from fleet.state import Exchange, SessionStore, connect_redis
from tests.prerequisites import require
from tests.private_services import PrivateRedis, private_redis, redis_unavailable_reason

ROOT = Path(__file__).resolve().parents[2]
REDIS_MANIFEST = ROOT / "k8s" / "base" / "redis" / "redis.yaml"
PERSISTENCE_OPTIONS = ("--appendonly", "--appendfsync", "--save")
SESSION = "sess-persisted"
EXCHANGES = [
    Exchange("What is the capital of France?", "The capital of France is Paris."),
    Exchange("And of Germany?", "Berlin.", interrupted=True),
]


def profile_persistence_args() -> list[str]:
    """The persistence options the deployment's Redis runs with (not its paths or ACLs)."""
    statefulset = next(
        doc
        for doc in yaml.safe_load_all(REDIS_MANIFEST.read_text())
        if doc["kind"] == "StatefulSet"
    )
    args: list[str] = statefulset["spec"]["template"]["spec"]["containers"][0]["args"]
    chosen = []
    for option, value in zip(args[::2], args[1::2], strict=True):
        if option in PERSISTENCE_OPTIONS:
            chosen += [option, value]
    return chosen


async def hold_a_conversation(store: SessionStore) -> None:
    await store.open_session(SESSION, "gateway-1", "stream-1", "digest")
    for exchange in EXCHANGES:
        await store.next_turn(SESSION)
        await store.record_exchange(SESSION, exchange)


@pytest.fixture
async def stores() -> AsyncIterator[list[SessionStore]]:
    """The stores a test opens, closed after it."""
    opened: list[SessionStore] = []
    yield opened
    for store in opened:
        await store.redis.aclose()


def _store(redis: PrivateRedis, stores: list[SessionStore]) -> SessionStore:
    settings = Settings(namespace="persist", redis_url=redis.url)
    store = SessionStore(connect_redis(settings), settings)
    stores.append(store)
    return store


@pytest.mark.parametrize("how", ["stopped", "killed"])
async def test_a_conversation_is_back_after_a_redis_restart_with_the_profiles_persistence(
    stores: list[SessionStore], how: str
) -> None:
    require("chaos", redis_unavailable_reason())
    args = profile_persistence_args()
    assert "--appendonly" in args, f"the deployment's Redis keeps no append-only file: {args}"
    with private_redis(*args) as redis:
        await hold_a_conversation(_store(redis, stores))
        # Stopped (SIGTERM): a pod or container stopped. Killed (SIGKILL: a crash, an OOM kill):
        # no snapshot at shutdown; what was acknowledged is in the append-only file (written
        # before the reply; fsync every second matters only if the machine itself goes).
        redis.stop() if how == "stopped" else redis.kill()
        redis.start()
        store = _store(redis, stores)
        assert await store.exists(SESSION)
        assert await store.current_turn(SESSION) == len(EXCHANGES)
        assert await store.history(SESSION) == EXCHANGES


async def test_without_persistence_a_redis_restart_forgets_the_conversation(
    stores: list[SessionStore],
) -> None:
    require("chaos", redis_unavailable_reason())
    with private_redis() as redis:
        await hold_a_conversation(_store(redis, stores))
        redis.stop()
        redis.start()
        store = _store(redis, stores)
        assert not await store.exists(SESSION)
        assert await store.current_turn(SESSION) == 0
        assert await store.history(SESSION) == []
