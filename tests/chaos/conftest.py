"""One private RabbitMQ, one private Redis and one fleet on them, shared by the chaos tests.

The chaos tests kill and restart the broker and Redis, so they never use the shared ones. Each
test leaves the fleet serving again (that is what it proves), so the next test can reuse it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.fleet_processes import Fleet, running_fleet
from tests.prerequisites import require
from tests.private_services import (
    PrivateRabbitMQ,
    PrivateRedis,
    private_rabbitmq,
    private_redis,
    rabbitmq_unavailable_reason,
    redis_unavailable_reason,
)


@dataclass
class Chaos:
    fleet: Fleet
    broker: PrivateRabbitMQ
    redis: PrivateRedis


@pytest.fixture(scope="session")
def chaos() -> Iterator[Chaos]:
    require("chaos", rabbitmq_unavailable_reason() or redis_unavailable_reason())
    with (
        private_rabbitmq() as broker,
        private_redis() as redis,
        running_fleet(
            "chaos",
            amqp_url=broker.url,
            redis_url=redis.url,
            # Silent sessions are released sooner, so leases of dead streams do not linger.
            stt_idle_timeout_s="20",
        ) as fleet,
    ):
        yield Chaos(fleet, broker, redis)
