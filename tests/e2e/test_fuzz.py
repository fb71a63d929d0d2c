"""Property-based fuzzing of a running fleet: the client protocol and every bus message kind.

Thousands of generated inputs go to the real processes (gateway, STT, LLM bridge, TTS) while a
normal session talks to the assistant alongside. Nothing may crash: every client input is
answered with a documented error code and close code (or accepted, when it is valid), every
delivery on a work queue is consumed or dead-lettered with a log line, the processes stay alive
and healthy with no traceback in their logs, and the normal session completes its turns.

Hypothesis runs in a thread and hands each example to the test's event loop, where the normal
session runs too. The inputs are derandomized: CI sends the same ones every run.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aio_pika
import httpx
import pytest
import websockets
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.contracts import MESSAGE_TYPES, SessionOpen, TranscriptFinal, TtsRequest, TurnRequest
from fleet.errors import ErrorCode
from fleet.state import SessionStore, connect_redis
from fleet.topology import ROUTES, Bus, Names, Route
from tests.fleet_processes import Fleet
from tests.fuzzing import (
    FUZZ_SETTINGS,
    Delivery,
    Frame,
    any_kind,
    any_session,
    conversations,
    deliveries,
    documented_close_codes,
    documented_errors,
    expect,
    mostly,
    valid_shaped,
)
from tests.speech import words
from tests.voice_turns import QUESTION, voice_turn
from voicefleet.client import VoiceClient

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

# Generated examples per target; each client example is a connection of 1-9 messages.
CLIENT_EXAMPLES = 1500
WORK_QUEUE_EXAMPLES = 1000  # per work queue
KEYED_EXAMPLES = 1000  # per keyed route (events to the gateway, audio to the STT worker)
MINIMUM_INPUTS = 10_000

# Sessions the fuzzed LLM and TTS jobs name; their turn counters are set far ahead, so that a
# valid-shaped job is stale (cheap to skip) unless its turn number is absurd.
STALE_SESSIONS = [f"fuzz{index}{uuid.uuid4().hex[:8]}" for index in range(3)]
TURN_AHEAD = 2**62

T = TypeVar("T")


@dataclass
class Outcome:
    errors: list[str]
    close_code: int | None
    ready: bool
    sent: int


async def converse(url: str, conversation: list[Frame]) -> Outcome:
    """Send the messages, then ``stop``; collect every error and the close code."""
    errors: list[str] = []
    ready = False
    async with websockets.connect(url, max_size=None, open_timeout=30, close_timeout=10) as ws:

        async def read() -> None:
            nonlocal ready
            with contextlib.suppress(websockets.ConnectionClosed):
                async for reply in ws:
                    if isinstance(reply, str):
                        event = json.loads(reply)
                        if event["type"] == "error":
                            errors.append(str(event["code"]))
                        ready |= event["type"] == "ready"

        reader = asyncio.create_task(read())
        sent = 0
        with contextlib.suppress(websockets.ConnectionClosed):
            for frame in conversation:
                if frame.kind == "raw_text":
                    assert isinstance(frame.data, bytes)
                    await ws.send(frame.data, text=True)
                else:
                    await ws.send(frame.data)
                sent += 1
            await ws.send(json.dumps({"type": "stop"}))
        async with asyncio.timeout(60):
            await reader
    return Outcome(errors, ws.close_code, ready, sent)


def check_answers(conversation: list[Frame], outcome: Outcome) -> None:
    """The answers are what docs/protocol.md promises for these messages."""
    documented = documented_errors()
    close_codes = documented_close_codes()
    for code in outcome.errors:
        assert code in documented, f"undocumented error code {code!r}"
        assert code != ErrorCode.INTERNAL, "an unexpected server error"
    if outcome.close_code == 1006 and any(f.refused_by_transport for f in conversation):
        # The WebSocket layer closes at once (1007, 1009) while the client's bytes still come,
        # so the client may see the connection reset before the close frame (docs/protocol.md).
        return
    assert outcome.close_code in close_codes, f"undocumented close code {outcome.close_code}"
    closing = [code for code in outcome.errors if documented[code] is not None]
    if closing:
        assert closing[-1] == outcome.errors[-1], "an error after the one that closed"
        assert outcome.close_code == documented[closing[-1]], (closing, outcome.close_code)
    elif outcome.close_code == 1007:
        # The WebSocket layer refuses a text frame that is not UTF-8, with no error event.
        assert any(frame.kind == "raw_text" for frame in conversation)
    elif outcome.close_code == 1009:
        # ... and a frame over 1 MiB, unread.
        assert any(frame.over_transport_limit for frame in conversation)
    else:
        assert outcome.close_code == 1000, "closed with no error event"
    if outcome.close_code == 1000:
        # Closed by our `stop` (or one in the conversation): every message before it was read.
        expectation = expect(conversation)
        assert len(outcome.errors) >= expectation.invalid, "a refused message got no answer"
        if expectation.all_valid:
            assert outcome.errors == [], "a valid conversation got errors"
        if expectation.opened:
            assert outcome.ready, "a valid start got no `ready`"


class Logs:
    """What the fleet's processes log from now on."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.offsets = {
            name: process.log_path.stat().st_size if process.log_path.exists() else 0
            for name, process in fleet.processes.items()
        }

    def text(self, name: str) -> str:
        process = self.fleet.processes[name]
        with process.log_path.open("rb") as log:
            log.seek(self.offsets.get(name, 0))
            return log.read().decode(errors="replace")

    def events(self, name: str) -> list[dict[str, Any]]:
        found = []
        for line in self.text(name).splitlines():
            with contextlib.suppress(ValueError):
                item = json.loads(line)
                if isinstance(item, dict):
                    found.append(item)
        return found

    def count(self, name: str, event: str) -> int:
        return sum(1 for e in self.events(name) if e.get("event") == event)

    def crashes(self) -> dict[str, list[str]]:
        """Lines with a traceback (an exception that was not handled as expected)."""
        found = {}
        for name in self.fleet.processes:
            lines = [line[:2000] for line in self.text(name).splitlines() if "Traceback" in line]
            if lines:
                found[name] = lines
        return found

    async def wait_for(self, name: str, event: str, at_least: int, patience: float = 60) -> int:
        async with asyncio.timeout(patience):
            # Another process writes the log: there is nothing to wait on but the file itself.
            while (found := self.count(name, event)) < at_least:  # noqa: ASYNC110
                await asyncio.sleep(0.2)
        return found


def check_fleet_healthy(fleet: Fleet) -> None:
    fleet.check_alive()
    for port in fleet.gateway_ports:
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).json()["status"] == "ok"
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10).status_code == 200


@dataclass
class NormalSession:
    """A well-behaved client talking to the assistant, turn after turn, during the fuzzing."""

    fleet: Fleet
    turns: list[tuple[str, str]] = field(default_factory=list)
    client: VoiceClient | None = None

    async def run(self, stop: asyncio.Event) -> None:
        self.client = VoiceClient(self.fleet.ws_url)
        await self.client.connect()
        while not stop.is_set() or not self.turns:
            turn = await voice_turn(self.client, QUESTION)
            self.turns.append((turn.heard, turn.reply))

    def check(self) -> None:
        assert self.client is not None
        assert self.turns, "the normal session completed no turn"
        for heard, reply in self.turns:
            assert {"capital", "france"} <= words(heard), heard
            assert reply.strip()
        assert self.client.events("error") == []
        assert self.client.close_code is None


def on_loop(loop: asyncio.AbstractEventLoop) -> Callable[[Awaitable[T]], T]:
    """Run a coroutine on the test's event loop from Hypothesis' thread, and wait for it."""

    def run(awaitable: Awaitable[T]) -> T:
        async def wrapped() -> T:
            return await awaitable

        return asyncio.run_coroutine_threadsafe(wrapped(), loop).result(timeout=300)

    return run


def print_totals(totals: Counter[str], started: float) -> None:
    lines = [f"  {name}: {count}" for name, count in sorted(totals.items())]
    print(f"\nfuzz totals after {time.monotonic() - started:.0f} s:\n" + "\n".join(lines))


async def test_fuzzing_the_client_protocol_and_the_bus(fleet: Fleet) -> None:
    started = time.monotonic()
    run = on_loop(asyncio.get_running_loop())
    logs = Logs(fleet)
    names = Names(fleet.settings.namespace)
    totals: Counter[str] = Counter()
    store = SessionStore(connect_redis(fleet.settings), fleet.settings)
    for session_id in STALE_SESSIONS:
        await store.redis.set(store._key(session_id, "turn"), TURN_AHEAD, ex=3600)

    stop_talking = asyncio.Event()
    normal = NormalSession(fleet)
    talking = asyncio.create_task(normal.run(stop_talking))
    connection = await aio_pika.connect_robust(fleet.settings.amqp_url)
    channel = await connection.channel(publisher_confirms=True)

    async def publish(delivery: Delivery, exchange: str, routing_key: str) -> str:
        message_id = uuid.uuid4().hex
        target = await channel.get_exchange(exchange) if exchange else channel.default_exchange
        await target.publish(
            aio_pika.Message(
                body=delivery.body,
                headers=delivery.headers,
                content_type=delivery.content_type,
                type=delivery.kind,
                correlation_id=delivery.session_id,
                message_id=message_id,
                priority=delivery.priority,
            ),
            routing_key=routing_key,
        )
        return message_id

    try:
        # --- (a) the client protocol: text and binary messages, in any order --------------------
        @settings(FUZZ_SETTINGS, max_examples=CLIENT_EXAMPLES)
        @given(conversation=conversations())
        def client_protocol(conversation: list[Frame]) -> None:
            outcome = run(converse(fleet.ws_url, conversation))
            totals["client connections"] += 1
            totals["client messages"] += outcome.sent
            for code in outcome.errors:
                totals[f"client answers: error {code}"] += 1
            totals[f"client answers: close {outcome.close_code}"] += 1
            check_answers(conversation, outcome)
            fleet.check_alive()

        await asyncio.to_thread(client_protocol)
        check_fleet_healthy(fleet)

        # --- (b) work queues: each delivery consumed, or dead-lettered with a log line ----------
        for route, expects, worker in (
            (Route.STT_SESSIONS, SessionOpen, "stt-1"),
            (Route.LLM_TURNS, TurnRequest, "llm-1"),
            (Route.TTS_JOBS, TtsRequest, "tts-1"),
        ):
            await _fuzz_work_queue(
                run, publish, logs, channel, totals, names.work_queue(route), expects.KIND, worker
            )
            fleet.check_alive()

        # --- (b) keyed routes: events to a live session's gateway, audio to its STT worker ------
        bus = await Bus.connect(fleet.settings, "fuzz")
        victim = Victim(fleet, store, bus, totals)
        await victim.start()
        for route, exchange, worker, malformed in (
            (Route.EVENTS, names.events_exchange, "gateway-1", "malformed_event_dropped"),
            (Route.AUDIO, names.audio_exchange, "stt-1", "malformed_audio_dropped"),
        ):
            await _fuzz_keyed_route(
                run, publish, logs, totals, victim, route, exchange, worker, malformed
            )
            fleet.check_alive()
        await victim.check_and_close()
        await bus.close()

        stop_talking.set()
        async with asyncio.timeout(240):
            await talking
        normal.check()
        check_fleet_healthy(fleet)
        crashes = logs.crashes()
        assert crashes == {}, json.dumps(crashes, indent=1)[:20000]
        totals["normal session: turns completed"] = len(normal.turns)
        inputs = sum(
            count
            for name, count in totals.items()
            if name.startswith(("client messages", "bus deliveries"))
        )
        totals["TOTAL generated inputs"] = inputs
        print_totals(totals, started)
        assert inputs >= MINIMUM_INPUTS
        # The generated inputs reached every kind of refusal the client protocol has.
        assert {"bad_message", "unknown_type", "already_started", "bad_frame"} <= {
            name.rpartition(" ")[2] for name in totals
        }
        for close in (1003, 1007, 1008, 1009):
            assert totals[f"client answers: close {close}"], f"no conversation closed with {close}"
    finally:
        stop_talking.set()
        talking.cancel()
        await asyncio.gather(talking, return_exceptions=True)
        if normal.client is not None:
            await normal.client.close()
        await connection.close()
        await store.redis.aclose()


Publish = Callable[[Delivery, str, str], Awaitable[str]]

# Mostly the kinds a gateway takes from its events route, and anything else.
EVENT_KINDS = mostly(
    st.sampled_from(sorted(k for k, c in MESSAGE_TYPES.items() if ROUTES[c] is Route.EVENTS)),
    any_kind,
)
# Audio for the stream's STT worker, and anything else on its route; not ``session.close``, which
# (valid-shaped) ends the stream and with it the route under test.
AUDIO_KINDS = st.sampled_from(["audio.chunk", "audio.replayed"]) | any_kind.filter(
    lambda kind: kind != "session.close"
)
# Half the keyed deliveries name the session under attack, the rest anything.
VICTIM_OR_ANY = st.booleans().flatmap(lambda ok: st.just("victim") if ok else any_session)


async def _fuzz_work_queue(
    run: Callable[[Awaitable[Any]], Any],
    publish: Publish,
    logs: Logs,
    channel: aio_pika.abc.AbstractChannel,
    totals: Counter[str],
    queue_name: str,
    kind: str,
    worker: str,
) -> None:
    dead: set[str] = set()
    kept: set[str] = set()
    stt = queue_name.endswith("stt.sessions")
    # LLM and TTS jobs name the sessions whose turns are far ahead (see STALE_SESSIONS).
    sessions = any_session if stt else st.sampled_from([*STALE_SESSIONS, ""]) | st.none()

    @settings(FUZZ_SETTINGS, max_examples=WORK_QUEUE_EXAMPLES)
    @given(delivery=deliveries(mostly(st.just(kind), any_kind), sessions))
    def work_queue(delivery: Delivery) -> None:
        message_id = run(publish(delivery, "", queue_name))
        totals[f"bus deliveries: {queue_name.partition('.')[2]}"] += 1
        (dead if delivery.outcome(kind) == "dead_letter" else kept).add(message_id)

    await asyncio.to_thread(work_queue)

    def lettered() -> set[str]:
        return {
            str(e.get("message_id"))
            for e in logs.events(worker)
            if e.get("event") == "dead_lettered"
        }

    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(120):
            while not dead <= lettered():  # noqa: ASYNC110 - another process writes the log
                await asyncio.sleep(0.5)
    assert dead <= lettered(), f"{worker}: not dead-lettered: {sorted(dead - lettered())[:10]}"
    assert not kept & lettered(), f"{worker}: valid jobs were dead-lettered"

    async def waiting() -> int:
        queue = await channel.declare_queue(queue_name, passive=True)
        return int(queue.declaration_result.message_count or 0)

    async with asyncio.timeout(120):
        while await waiting():  # noqa: ASYNC110 - the broker counts; there is no event to await
            await asyncio.sleep(0.5)
    totals[f"dead-lettered with a log line: {queue_name.partition('.')[2]}"] += len(dead)


async def _fuzz_keyed_route(
    run: Callable[[Awaitable[Any]], Any],
    publish: Publish,
    logs: Logs,
    totals: Counter[str],
    victim: Victim,
    route: Route,
    exchange: str,
    worker: str,
    malformed: str,
) -> None:
    surely_malformed = 0
    kinds = EVENT_KINDS if route is Route.EVENTS else AUDIO_KINDS

    # Valid-shaped: any kind of the route but the two that start real work (a takeover ends the
    # victim, whose successor starts a reply; a final transcript starts a reply): dozens of
    # replies would crowd the normal session out of the two CPUs. Both are malformed-fuzzed
    # still, and tested as valid in test_ownership.py and test_voice_loop.py.
    route_kinds = sorted(
        k
        for k, c in MESSAGE_TYPES.items()
        if ROUTES[c] is route and k not in ("session.taken_over", "transcript.final")
    )

    @settings(FUZZ_SETTINGS, max_examples=KEYED_EXAMPLES)
    @given(delivery=deliveries(kinds, VICTIM_OR_ANY, stale=False) | valid_shaped(route_kinds))
    def keyed(delivery: Delivery) -> None:
        nonlocal surely_malformed
        session_id, key = run(victim.target(route))
        if delivery.session_id == "victim":
            delivery = dataclasses.replace(delivery, session_id=session_id)
        run(publish(delivery, exchange, key))
        totals[f"bus deliveries: {exchange.partition('.')[2]}"] += 1
        surely_malformed += delivery.surely_malformed()

    before = logs.count(worker, malformed)
    await asyncio.to_thread(keyed)
    await logs.wait_for(worker, malformed, before + surely_malformed)
    totals[f"dropped with a log line: {malformed}"] += logs.count(worker, malformed) - before


@dataclass
class Victim:
    """The live session that fuzzed events and audio are routed to; a valid-shaped notice may end
    it (taken over, released for good), with a documented error: then a new one takes its place."""

    fleet: Fleet
    store: SessionStore
    bus: Bus
    totals: Counter[str]
    client: VoiceClient | None = None

    async def start(self) -> None:
        """A new session, with a turn in progress (as if the user had spoken), so that fuzzed
        replies can name its current turn."""
        self.client = VoiceClient(self.fleet.ws_url)
        await self.client.connect()
        await self.bus.publish(TranscriptFinal(self.client.session_id, "Say hello.", 0))

    async def target(self, route: Route) -> tuple[str, str]:
        """The session id, and the routing key of ``route`` that reaches it."""
        assert self.client is not None
        if self.client.close_code is not None:
            self._check()
            self.totals["victim sessions ended by a valid-shaped notice"] += 1
            await self.start()
            assert self.client is not None
        session_id = self.client.session_id
        if route is Route.EVENTS:
            return session_id, session_id
        return session_id, await self.store.current_stream(session_id) or ""

    def _check(self) -> None:
        assert self.client is not None
        documented = documented_errors()
        for code in (str(e["code"]) for e in self.client.events("error")):
            assert code in documented and code != ErrorCode.INTERNAL, code
            self.totals[f"victim answers: error {code}"] += 1
        assert self.client.close_code in {None, *documented_close_codes()}

    async def check_and_close(self) -> None:
        self._check()
        assert self.client is not None
        await self.client.close()
