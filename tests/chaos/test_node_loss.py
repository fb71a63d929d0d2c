"""A three-node RabbitMQ cluster loses the node that leads the work queues while sessions talk.

Three private nodes on this machine (own names, ports and databases, one Erlang cookie of their
own) form a cluster; the fleet runs with ``VF_WORK_QUEUE_TYPE=quorum`` and every node in
``VF_AMQP_URL``. The work queues are declared from the first node, so it leads them, and the
workers are connected to it; the gateway is connected to another node. Several sessions are in
the middle of a turn (one waiting for its reply, others speaking) when the first node is killed:
every turn completes, no utterance is lost (each is in the conversation's history), and the
workers reconnect to the survivors. The figures (turns failed, how long until every worker was
back, how long until the last turn in flight ended) are printed for docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import pytest
import structlog

from fleet.contracts import TtsRequest
from fleet.settings import Settings
from fleet.topology import NACKED_PUBLISH_PATIENCE_S, Bus, Names, Route, decode_incoming
from tests.chaos.turns import QUESTION, SECOND_QUESTION, outcome, voice_turn
from tests.fleet_processes import Fleet, running_fleet
from tests.prerequisites import require
from tests.private_services import (
    PrivateRabbitMQ,
    PrivateRabbitMQCluster,
    private_rabbitmq,
    private_rabbitmq_cluster,
    rabbitmq_unavailable_reason,
)
from tests.speech import pcm, silence, speech
from voicefleet.client import VoiceClient

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

SESSIONS = 3
# Sessions start speaking this far apart, so that when the node goes one is waiting for its
# reply and the others are at different points of their utterance.
STAGGER_S = 1.5
OUTCOME_PATIENCE_S = 120.0
WORKERS = ("stt-1", "llm-1", "tts-1")


@dataclass
class ClusterFleet:
    cluster: PrivateRabbitMQCluster
    fleet: Fleet


async def _declare_from(url: str, namespace: str) -> None:
    """Declare the fleet's topology through one node: a quorum queue's leader is the node of
    the client that declared it."""
    bus = await Bus.connect(
        Settings(namespace=namespace, amqp_url=url, work_queue_type="quorum"), "test-declare"
    )
    await bus.close()


@pytest.fixture(scope="module")
def cluster_fleet() -> Iterator[ClusterFleet]:
    require("chaos", rabbitmq_unavailable_reason())
    with private_rabbitmq_cluster(3) as cluster:
        namespace = f"t{uuid.uuid4().hex[:10]}"
        first, *others = cluster.nodes
        asyncio.run(_declare_from(first.url, namespace))
        with running_fleet(
            "node-loss",
            namespace=namespace,
            amqp_url=cluster.urls,  # the workers connect to the first node
            work_queue_type="quorum",
            drain_timeout_s="3",  # a short teardown: nothing is left to drain by then
            role_env={"gateway": {"VF_AMQP_URL": ",".join(n.url for n in [*others, first])}},
        ) as fleet:
            yield ClusterFleet(cluster, fleet)


def _connection_names(cluster: PrivateRabbitMQCluster) -> dict[str, str]:
    """Each client connection's name -> the node it is connected to."""
    ports = {f":{node.port}": node.node for node in cluster.nodes}
    out = cluster.running()[0].rabbitmqctl(
        "list_connections", "name", "client_properties", "--formatter", "json"
    )
    placement = {}
    for row in json.loads(out):
        props = {p[0]: p[2] for p in row["client_properties"]}
        # The connection's own name is "client address -> node address".
        node_address = str(row["name"]).rsplit("-> ", 1)[1]
        node = next(n for port, n in ports.items() if node_address.endswith(port))
        placement[str(props.get("connection_name", ""))] = node
    return placement


async def _staggered_turn(client: VoiceClient, delay: float) -> None:
    await asyncio.sleep(delay)
    await client.stream(pcm(silence(0.3), speech(SECOND_QUESTION), silence(2.5)))


async def test_losing_the_node_that_leads_the_work_queues_loses_no_turn(
    cluster_fleet: ClusterFleet,
) -> None:
    cluster, fleet = cluster_fleet.cluster, cluster_fleet.fleet
    names = Names(fleet.settings.namespace)
    work_queues = {names.stt_sessions, names.llm_turns, names.tts_jobs, names.dead_letter_queue}
    queues = {str(q["name"]): q for q in cluster.queues() if q["name"] in work_queues}
    assert {q["type"] for q in queues.values()} == {"quorum"}, queues
    leader = cluster.node_named(str(queues[names.llm_turns]["leader"]))
    assert leader is cluster.nodes[0], "the work queues are led by the node they were declared on"
    placement = _connection_names(cluster)
    on_leader = {name for name, node in placement.items() if node == leader.node}
    assert {f"voicefleet-{w}" for w in WORKERS} <= on_leader, placement

    clients = [VoiceClient(fleet.ws_url) for _ in range(SESSIONS)]
    try:
        for client in clients:
            await client.connect()
        await asyncio.gather(*(voice_turn(client, QUESTION) for client in clients))

        marks = [len(client.received) for client in clients]
        talking = [
            asyncio.create_task(_staggered_turn(client, index * STAGGER_S))
            for index, client in enumerate(clients)
        ]
        # The first session has finished speaking; the others are still at it.
        await clients[0].wait_for("transcript", final=True, timeout=60, after=marks[0])
        lost_at, lost_wall = time.monotonic(), time.time()
        await asyncio.to_thread(leader.kill)
        await asyncio.gather(*talking)

        async with asyncio.timeout(OUTCOME_PATIENCE_S):
            while not all(outcome(c, m) for c, m in zip(clients, marks, strict=True)):  # noqa: ASYNC110 - polls the clients' records
                await asyncio.sleep(0.1)
        last_turn_s = time.monotonic() - lost_at
        outcomes = [outcome(c, m) for c, m in zip(clients, marks, strict=True)]
        failed = sum(result != "completed" for result in outcomes)
        # Shown in full if the test fails (an assertion message is cut short).
        print(f"{names.tts_jobs} on the surviving nodes:\n{_queue_events(cluster, names.tts_jobs)}")
        assert failed == 0, (outcomes, fleet.logs())

        # The workers reconnected, to the survivors.
        restored_s = max(_restored_after(fleet, worker, lost_wall) for worker in WORKERS)
        placement = _connection_names(cluster)
        assert {f"voicefleet-{w}" for w in (*WORKERS, "gateway-1")} <= set(placement), placement
        fleet.check_alive()

        # Every session goes on, and every utterance is in its conversation's history.
        await asyncio.gather(*(voice_turn(client, QUESTION) for client in clients))
        for client in clients:
            assert client.session_id is not None
            history = await fleet.history(client.session_id)
            assert len(history) == 3, history
            assert "sky" in history[1].user.lower(), history
        leaders = {str(q["leader"]) for q in cluster.queues() if q["name"] in work_queues}
        assert leader.node not in leaders, leaders
        print(
            f"node lost with {SESSIONS} sessions mid-turn: turns failed {failed}/{SESSIONS}; "
            f"every worker reconnected {restored_s:.1f}s after; the last turn in flight ended "
            f"{last_turn_s:.1f}s after"
        )
    finally:
        for client in clients:
            await client.close()


def _queue_events(cluster: PrivateRabbitMQCluster, queue: str) -> str:
    """What the surviving nodes logged about ``queue`` (its leader elections, refusals)."""
    lines = [
        f"{node.node}: {line}"
        for node in cluster.running()
        for log in sorted((node.base / "log").glob("*.log"))
        for line in log.read_text(errors="replace").splitlines()
        if f"'{queue}'" in line
    ]
    return "\n".join(lines[-40:])


def _restored_after(fleet: Fleet, worker: str, lost_wall: float) -> float:
    """Seconds from the node's loss to the worker's log of its restored connection (the log
    files of earlier runs are appended to: only events after the loss count)."""
    for event in fleet.processes[worker].log_events():
        at = _epoch(str(event.get("timestamp", "1970-01-01T00:00:00Z")))
        if event.get("event") == "broker_connection_restored" and at >= lost_wall:
            return at - lost_wall
    raise AssertionError(f"{worker} did not reconnect after the node was lost:\n{fleet.logs()}")


def _epoch(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


@pytest.fixture
def broker() -> Iterator[PrivateRabbitMQ]:
    require("chaos", rabbitmq_unavailable_reason())
    with private_rabbitmq() as broker:
        yield broker


async def test_a_publish_the_queue_refuses_for_a_moment_is_sent_again(
    broker: PrivateRabbitMQ,
) -> None:
    """A quorum queue nacks publishes while it elects a new leader. Made deterministic here with
    a real nack of another cause: a full queue that rejects publishes (a policy on a private
    broker) until a job is taken from it."""
    settings = Settings(
        namespace=f"t{uuid.uuid4().hex[:10]}",
        amqp_url=broker.url,
        # A classic queue rejects exactly at its length limit (a quorum queue only past it).
        work_max_length=1,
    )
    # Set before the queue is declared, so that it applies from the first publish.
    pattern = f"^{settings.namespace}\\.tts\\.jobs$"
    reject = '{"overflow":"reject-publish"}'
    broker.rabbitmqctl("set_policy", "--apply-to", "queues", "full", pattern, reject)
    bus = await Bus.connect(settings, "test-nacked")
    try:
        await bus.publish(TtsRequest("sess-a", 1, 0, "The first job."))
        with structlog.testing.capture_logs() as logs:
            second = asyncio.create_task(
                bus.publish(TtsRequest("sess-b", 1, 0, "Refused at first."))
            )
            # The queue is full: the broker nacks the second publish, again and again.
            while not any(e["event"] == "publish_nacked" for e in logs):
                assert not second.done(), second
                await asyncio.sleep(0.05)
        channel = await bus.channel(prefetch=0)
        queue = await bus.work_queue(channel, Route.TTS_JOBS)
        first = await queue.get(timeout=5)
        await first.ack()
        await asyncio.wait_for(second, NACKED_PUBLISH_PATIENCE_S)
        taken = await queue.get(timeout=5)
        job = decode_incoming(taken)
        assert isinstance(job, TtsRequest) and job.session_id == "sess-b", job
        await taken.ack()
    finally:
        await bus.close()
