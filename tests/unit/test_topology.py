"""The routing table: every message kind has a route, a keyed route finds its key, and each
queue type gets the arguments it supports."""

from __future__ import annotations

import dataclasses

import pytest

from fleet.contracts import MESSAGE_TYPES, AudioChunk, TtsRequest, TurnRequest
from fleet.settings import Settings
from fleet.topology import (
    ROUTES,
    TOPOLOGY,
    TTS_MAX_PRIORITY,
    Names,
    Route,
    broker_nodes,
    dead_letter_queue_arguments,
    tts_priority,
)


def test_every_message_kind_has_a_route() -> None:
    assert set(ROUTES) == set(MESSAGE_TYPES.values())


def test_every_message_of_a_keyed_route_carries_the_key() -> None:
    for cls, route in ROUTES.items():
        key = TOPOLOGY[route].key
        if key:
            assert key in {f.name for f in dataclasses.fields(cls)}, (cls.KIND, route)


def test_keyed_routes_key_by_their_field_and_queue_routes_by_the_queue_name() -> None:
    names = Names("ns")
    audio = AudioChunk("session-1", "stream-1", 0, b"")
    turn = TurnRequest("session-1", 1, "hi")
    assert TOPOLOGY[Route.AUDIO].routing_key(names, audio) == "stream-1"
    assert TOPOLOGY[Route.LLM_TURNS].routing_key(names, turn) == "ns.llm.turns"
    assert names.llm_turns == "ns.llm.turns"


def test_the_first_sentence_of_a_turn_jumps_the_tts_queue() -> None:
    spec = TOPOLOGY[Route.TTS_JOBS]
    assert spec.priority is not None
    first, second = (spec.priority(TtsRequest("s", 1, n, "x")) for n in (0, 1))
    assert first == tts_priority(0) == spec.max_priority > second
    assert all((spec.priority is None) == (spec.max_priority == 0) for spec in TOPOLOGY.values())


def test_quorum_work_queues_are_replicated_without_the_classic_priority_argument() -> None:
    names = Names("ns")
    classic = Settings(work_queue_type="classic")
    quorum = Settings(work_queue_type="quorum")
    tts = TOPOLOGY[Route.TTS_JOBS]
    # Classic queues are declared as before the setting existed: no type argument.
    assert "x-queue-type" not in tts.queue_arguments(names, classic)
    assert tts.queue_arguments(names, classic)["x-max-priority"] == TTS_MAX_PRIORITY
    for route in (Route.STT_SESSIONS, Route.LLM_TURNS, Route.TTS_JOBS):
        arguments = TOPOLOGY[route].queue_arguments(names, quorum)
        assert arguments["x-queue-type"] == "quorum"
        assert "x-max-priority" not in arguments  # RabbitMQ 3.x refuses it on a quorum queue
    assert dead_letter_queue_arguments(quorum)["x-queue-type"] == "quorum"
    assert TOPOLOGY[Route.TRANSCRIPTS].queue_arguments(names, quorum)["x-queue-type"] == "stream"


def test_only_the_first_sentence_is_high_priority_on_a_two_level_quorum_queue() -> None:
    # RabbitMQ 4 quorum queues serve priorities above 4 first.
    assert tts_priority(0) > 4
    assert all(tts_priority(n) <= 4 for n in range(1, 6))
    assert [tts_priority(n) for n in range(4)] == sorted(
        (tts_priority(n) for n in range(4)), reverse=True
    )


def test_a_cluster_is_given_as_comma_separated_node_urls() -> None:
    settings = Settings(
        amqp_url="amqp://u:p@node-a:5672/vf, amqp://u:p@node-b:5672/vf?heartbeat=3",
        amqp_heartbeat_s=7,
    )
    nodes = broker_nodes(settings)
    assert [(url.host, url.query["heartbeat"]) for url in nodes] == [
        ("node-a", "7"),
        ("node-b", "3"),
    ]


@pytest.mark.parametrize("bad", ["", "amqp://u:p@node-a/,", "http://node-a/", "node-a:5672"])
def test_a_node_list_with_a_bad_entry_is_a_clear_error(bad: str) -> None:
    with pytest.raises(ValueError, match="VF_AMQP_URL"):
        broker_nodes(Settings(amqp_url=bad))
