"""The routing table: every message kind has a route, and a keyed route finds its key."""

from __future__ import annotations

import dataclasses

from fleet.contracts import MESSAGE_TYPES, AudioChunk, TtsRequest, TurnRequest
from fleet.topology import ROUTES, TOPOLOGY, Names, Route, tts_priority


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
