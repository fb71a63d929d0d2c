"""Looking at and removing one namespace of a shared broker and Redis.

Tests and benchmarks run whole fleets side by side on one RabbitMQ and one Redis, each under its
own ``VF_NAMESPACE``; these are the operations they need on it.
"""

from __future__ import annotations

import contextlib

import aio_pika

from fleet.settings import Settings
from fleet.state import connect_redis
from fleet.topology import Names, broker_nodes, connect_to_nodes


async def consumer_counts(settings: Settings) -> dict[str, int]:
    """How many workers consume each work queue (0 for a queue not declared yet)."""
    names = Names(settings.namespace)
    counts = {}
    async with await connect_to_nodes(broker_nodes(settings), {}) as connection:
        for kind, queue in (
            ("stt", names.stt_sessions),
            ("llm", names.llm_turns),
            ("tts", names.tts_jobs),
        ):
            counts[kind] = 0
            # A passive declare of a missing queue closes its channel: one channel per queue.
            with contextlib.suppress(aio_pika.exceptions.AMQPError):
                async with connection.channel() as channel:
                    declared = await channel.declare_queue(queue, passive=True)
                    counts[kind] = declared.declaration_result.consumer_count or 0
    return counts


async def delete_namespace(settings: Settings) -> None:
    """Delete the namespace's shared queues and exchanges and every Redis key under it."""
    if not settings.namespace:
        raise ValueError("refusing to delete the default (empty) namespace")
    names = Names(settings.namespace)
    async with await connect_to_nodes(broker_nodes(settings), {}) as connection:
        queues = (
            names.stt_sessions,
            names.llm_turns,
            names.tts_jobs,
            names.transcripts_stream,
            names.dead_letter_queue,
        )
        exchanges = (names.events_exchange, names.audio_exchange, names.dead_letter_exchange)
        for name in queues:
            # A failed delete closes its channel: one channel per delete.
            with contextlib.suppress(aio_pika.exceptions.AMQPError):
                async with connection.channel() as channel:
                    await channel.queue_delete(name)
        for name in exchanges:
            with contextlib.suppress(aio_pika.exceptions.AMQPError):
                async with connection.channel() as channel:
                    await channel.exchange_delete(name)
    client = connect_redis(settings)
    try:
        keys = [key async for key in client.scan_iter(match=f"{settings.namespace}:*", count=500)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()
