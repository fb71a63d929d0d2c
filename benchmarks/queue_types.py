"""What a replicated work queue costs per hop: classic versus quorum queues (VF_WORK_QUEUE_TYPE).

Publish -> consume round trips through fleet.topology.Bus (publisher confirms, persistent, as the
fleet publishes) for the messages that go through work queues: ``session.open`` (once per
session), ``turn.request`` and ``tts.request`` (on every turn's critical path: two of its six
broker hops). Each queue type is measured

- on one node (VF_AMQP_URL, the shared broker by default);
- with ``--cluster``, on a private three-node cluster started here (needs root, as the chaos
  tests do), twice: clients connected to the node that leads the queues, and clients connected
  to the two other nodes (publisher on one, consumer on the other), the usual case in a cluster.

    python -m benchmarks.queue_types --cluster --csv benchmarks/results/queue-types.csv
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator
from typing import Literal

import numpy as np
from aio_pika.abc import AbstractIncomingMessage

from benchmarks.overhead import write_rows
from fleet import contracts
from fleet.settings import Settings, get_settings
from fleet.topology import Bus, Route
from tests.private_services import private_rabbitmq_cluster
from voicefleet.namespaces import delete_namespace

QueueType = Literal["classic", "quorum"]
QUEUE_TYPES: tuple[QueueType, ...] = ("classic", "quorum")
ROUTES = (Route.STT_SESSIONS, Route.LLM_TURNS, Route.TTS_JOBS)


def work_messages(session: str) -> list[tuple[str, contracts.Message]]:
    return [
        ("session.open", contracts.SessionOpen(session, "stream-1", "gateway-1")),
        ("turn.request", contracts.TurnRequest(session, 1, "What is the capital of France?")),
        ("tts.request", contracts.TtsRequest(session, 1, 0, "The capital of France is Paris.")),
    ]


async def measure(
    target: str,
    queue_type: QueueType,
    declare_url: str,
    publish_url: str,
    consume_url: str,
    samples: int,
) -> list[dict[str, object]]:
    """Round trips of each work message; the queues are declared (and so led) from
    ``declare_url``."""

    def settings(url: str) -> Settings:
        return Settings(namespace=namespace, amqp_url=url, work_queue_type=queue_type)

    namespace = f"qt{uuid.uuid4().hex[:10]}"
    await (await Bus.connect(settings(declare_url), "queue-types-declare")).close()
    publisher = await Bus.connect(settings(publish_url), "queue-types-publisher")
    consumer = await Bus.connect(settings(consume_url), "queue-types-consumer")
    arrived: asyncio.Queue[float] = asyncio.Queue()

    async def on_message(incoming: AbstractIncomingMessage) -> None:
        arrived.put_nowait(time.perf_counter())
        await incoming.ack()

    rows: list[dict[str, object]] = []
    try:
        channel = await consumer.channel(prefetch=64)
        for route in ROUTES:
            await (await consumer.work_queue(channel, route)).consume(on_message)
        for label, message in work_messages("s-" + uuid.uuid4().hex[:8]):
            rtts, confirms = [], []
            for _ in range(samples):
                started = time.perf_counter()
                await publisher.publish(message)
                confirms.append(time.perf_counter() - started)
                rtts.append(await asyncio.wait_for(arrived.get(), 5) - started)
                await asyncio.sleep(0.002)
            rtt_ms, confirm_ms = np.array(rtts) * 1000, np.array(confirms) * 1000
            rows.append(
                {
                    "target": target,
                    "queue_type": queue_type,
                    "message": label,
                    "rtt_p50_ms": round(float(np.percentile(rtt_ms, 50)), 3),
                    "rtt_p95_ms": round(float(np.percentile(rtt_ms, 95)), 3),
                    "confirm_p50_ms": round(float(np.percentile(confirm_ms, 50)), 3),
                    "samples": samples,
                }
            )
    finally:
        await publisher.close()
        await consumer.close()
        await delete_namespace(settings(declare_url))
    return rows


@contextlib.contextmanager
def placements(cluster: bool) -> Iterator[list[tuple[str, str, str, str]]]:
    """(target, declare URL, publish URL, consume URL) of each placement measured."""
    one_node = get_settings().amqp_url
    if not cluster:
        yield [("one node", one_node, one_node, one_node)]
        return
    with private_rabbitmq_cluster(3) as nodes:
        leader, second, third = (node.url for node in nodes.nodes)
        yield [
            ("one node", one_node, one_node, one_node),
            ("3 nodes, clients on the leader", leader, leader, leader),
            ("3 nodes, clients on followers", leader, second, third),
        ]


def load_average() -> str:
    """The 1-minute load average: the machine is shared, so each run says how busy it was."""
    with open("/proc/loadavg") as handle:
        return handle.read().split()[0]


async def run(args: argparse.Namespace) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    print(f"load average at the start: {load_average()}")
    with placements(args.cluster) as targets:
        for target, declare, publish, consume in targets:
            for queue_type in QUEUE_TYPES:
                rows += await measure(target, queue_type, declare, publish, consume, args.samples)
    for row in rows:
        print(
            f"  {row['target']:32s} {row['queue_type']:8s} {row['message']:13s} publish->consume "
            f"p50 {row['rtt_p50_ms']:.2f} ms p95 {row['rtt_p95_ms']:.2f} ms | confirm p50 "
            f"{row['confirm_p50_ms']:.2f} ms"
        )
    per_turn = {
        (str(r["target"]), str(r["queue_type"])): 0.0
        for r in rows
        if r["message"] == "turn.request"
    }
    for row in rows:
        if row["message"] in ("turn.request", "tts.request"):
            p50 = row["rtt_p50_ms"]
            assert isinstance(p50, float)
            per_turn[(str(row["target"]), str(row["queue_type"]))] += p50
    for (target, kind), total in per_turn.items():
        print(f"  a turn's two work-queue hops, {target}, {kind}: {total:.2f} ms (p50 sum)")
    print(f"load average at the end: {load_average()}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--cluster", action="store_true", help="also on a private 3-node cluster")
    parser.add_argument("--csv", default="", help="write the rows here")
    args = parser.parse_args()
    rows = asyncio.run(run(args))
    if args.csv:
        write_rows(args.csv, rows)


if __name__ == "__main__":
    main()
