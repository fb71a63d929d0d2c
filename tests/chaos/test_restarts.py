"""RabbitMQ or Redis restarts under a live session: every process reconnects and serves again.

The service is killed in the middle of a user's utterance and started again on the same port:
the broker with its database kept, Redis empty after two seconds down (no persistence: the
harshest case). The session in flight gets ``unavailable`` (1013) at once when the broker goes;
after a Redis restart it completes its turn or gets ``unavailable``, never hangs. /readyz goes
503 while the service is away and 200 after; then a new session and the old one (resumed by its
id if it was closed) each get a full voice turn, and no process has exited.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import websockets

from tests.chaos.conftest import Chaos
from tests.chaos.turns import QUESTION, SECOND_QUESTION, outcome, voice_turn, wait_ready
from tests.speech import pcm, silence, speech
from voicefleet.client import VoiceClient

pytestmark = [pytest.mark.timeout(300)]

REDIS_DOWN_S = 2.0
# From the service being back to the in-flight session hearing something: reconnecting takes
# about a second; the rest is what a turn of its own takes.
OUTCOME_PATIENCE_S = 45.0


@dataclass(frozen=True)
class Outage:
    restart: Callable[[Chaos], float]  # blocking; returns the seconds the service was down
    noticed_within_s: float
    recovered_within_s: float
    # What the session in flight may get. Losing the broker voids its STT lease, so it is told
    # `unavailable` at once (README); Redis is only needed at a turn's end, so a session whose
    # turn ends after Redis is back completes it.
    in_flight: tuple[str, ...]


OUTAGES = {
    "broker": Outage(
        lambda chaos: chaos.broker.restart(kill=True), 10.0, 30.0, ("error:unavailable",)
    ),
    "redis": Outage(
        lambda chaos: chaos.redis.restart(REDIS_DOWN_S),
        REDIS_DOWN_S + 1,
        15.0,
        ("completed", "error:unavailable"),
    ),
}


@pytest.mark.parametrize("service", sorted(OUTAGES))
async def test_restart_mid_utterance(chaos: Chaos, service: str) -> None:
    outage = OUTAGES[service]
    fleet = chaos.fleet
    first = VoiceClient(fleet.ws_url)
    await first.connect()
    second: VoiceClient | None = None
    resumed: VoiceClient | None = None
    try:
        await voice_turn(first, QUESTION)

        # Mid-utterance: the client keeps talking while the service goes away and comes back.
        mark = len(first.received)
        talking = asyncio.create_task(
            first.stream(pcm(silence(0.3), speech(SECOND_QUESTION), silence(4.0)))
        )
        # Mid-utterance: once the recognizer has heard some of it.
        await first.wait_for("transcript", final=False, timeout=30, after=mark)
        restart = asyncio.create_task(asyncio.to_thread(outage.restart, chaos))
        await wait_ready(fleet, ready=False, patience=outage.noticed_within_s)
        if outage.in_flight == ("error:unavailable",):
            # At once: while the service is still away.
            error = await first.wait_for("error", timeout=outage.noticed_within_s, after=mark)
            assert isinstance(error.data, dict) and error.data["code"] == "unavailable", error
        down_s = await restart
        back_at = time.monotonic()
        try:
            await talking
        except websockets.ConnectionClosed:
            # The gateway closed the connection: only after telling the client why.
            assert first.close_code == 1013, first.close_code
            assert [e["code"] for e in first.events("error")] == ["unavailable"]

        async with asyncio.timeout(OUTCOME_PATIENCE_S):
            while not outcome(first, mark):  # noqa: ASYNC110 - polls the client's record
                await asyncio.sleep(0.1)
        result = outcome(first, mark)
        assert result in outage.in_flight, (result, first.events("error"))
        outcome_s = time.monotonic() - back_at

        ready_s = await wait_ready(fleet, ready=True, patience=outage.recovered_within_s)
        fleet.check_alive()

        second = VoiceClient(fleet.ws_url)
        await second.connect()
        await voice_turn(second, QUESTION)

        if first.close_code is None:
            # The same connection goes on (after a Redis restart its gateway re-created its
            # record).
            await voice_turn(first, QUESTION)
        else:
            assert first.close_code == 1013, first.close_code
            resumed = VoiceClient(fleet.ws_url)
            again = await resumed.connect(
                sessionId=first.session_id, resumeSecret=first.resume_secret
            )
            if service == "broker":
                assert again["resumed"] is True, "the conversation outlives a broker restart"
            await voice_turn(resumed, QUESTION)
        fleet.check_alive()
        print(
            f"{service} down {down_s:.1f}s; in-flight outcome {result} {outcome_s:.1f}s after;"
            f" ready again {ready_s:.1f}s after"
        )
    finally:
        for client in (first, second, resumed):
            if client is not None:
                await client.close()
