"""Shared fixtures: every test gets its own namespace on the shared RabbitMQ and Redis.

``Settings(namespace=...)`` prefixes every queue, exchange and Redis key, so tests never see each
other (or a fleet running on the same machine). What a test declares or writes under its
namespace is deleted at teardown; exclusive queues vanish with their connections.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from fleet.settings import Settings
from fleet.state import SessionStore, connect_redis
from fleet.topology import Bus
from voicefleet.namespaces import delete_namespace


@pytest.fixture
def settings() -> Settings:
    return Settings(namespace=f"t{uuid.uuid4().hex[:10]}", log_json=False)


@pytest.fixture
async def bus(settings: Settings) -> AsyncIterator[Bus]:
    """A connected Bus with the namespaced topology declared; torn down with the test."""
    connection = await Bus.connect(settings, f"test-{settings.namespace}")
    try:
        yield connection
    finally:
        await connection.close()
        await delete_namespace(settings)


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[SessionStore]:
    """A SessionStore on the shared Redis; every key under the namespace is deleted afterwards."""
    client = connect_redis(settings)
    try:
        yield SessionStore(client, settings)
    finally:
        await client.aclose()
        await delete_namespace(settings)
