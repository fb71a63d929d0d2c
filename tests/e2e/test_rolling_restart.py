"""A rolling restart of every worker, while people are talking, completes every turn."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator

import pytest

from tests.fleet_processes import Fleet, FleetProcess, running_fleet
from tests.role_processes import logged
from tests.speech import pcm, silence, speech
from voicefleet.client import VoiceClient

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]

QUESTIONS = ("What is the capital of France?", "How far away is the moon?")


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    # The assertion is that work in hand finishes within the drain deadline, so each job is
    # bounded: under CI load SmolLM2 generated 2.7 to 4.5 tokens a second (llama-server's timings),
    # and a reply of the default 160 tokens in hand outlasted a 30 s drain.
    with running_fleet(
        "e2e-rolling", stt=2, llm=2, tts=2, drain_timeout_s="45", llm_max_tokens="48"
    ) as running:
        yield running


async def converse(fleet: Fleet, index: int, restarting: asyncio.Event) -> list[str]:
    """Turns until the restart is over; the outcome of each ("ok", or what went wrong)."""
    client = VoiceClient(fleet.ws_url)
    await client.connect()
    outcomes = []
    try:
        turn = 0
        while restarting.is_set() or turn < 2:
            mark = len(client.received)
            question = QUESTIONS[(index + turn) % len(QUESTIONS)]
            await client.stream(pcm(silence(0.3), speech(question), silence(2.0)))
            try:
                final = await client.wait_for("transcript", final=True, after=mark, timeout=45)
                start = await client.wait_for(
                    "audio_start", after=client.index_of(final), timeout=90
                )
                assert isinstance(start.data, dict)
                await client.wait_for("audio_end", timeout=90, turn=start.data["turn"])
                errors = client.events("error")
                outcomes.append("ok" if not errors else f"errors {errors}")
            except TimeoutError:
                outcomes.append(f"timeout in turn {turn}")
            turn += 1
    finally:
        await client.close()
    return outcomes


async def restart(process: FleetProcess) -> list[object]:
    """SIGTERM, a clean exit, a fresh start; what the process logged while it stopped."""
    since = len(process.log_events())
    process.signal(signal.SIGTERM)
    assert process.process is not None
    assert await asyncio.to_thread(process.process.wait, 90) == 0, process.tail()
    stopping = process.log_events()[since:]
    # What it held it finished (a job) or handed back between utterances (an STT session)
    # before its drain deadline, not cut off there for the broker to redeliver.
    assert not [
        e for e in stopping if e.get("event") == "drain_deadline_passed"
        or e.get("reason") == "drain deadline"
    ], process.tail()  # fmt: skip
    restarted_at = len(process.log_events())
    process.start()
    await logged(process, "serving", since=restarted_at, patience=60)
    return [e.get("event") for e in stopping]


async def test_rolling_restart_under_load_completes_every_turn(fleet: Fleet) -> None:
    restarting = asyncio.Event()
    restarting.set()
    people = [asyncio.create_task(converse(fleet, i, restarting)) for i in range(3)]
    await asyncio.sleep(3)
    stopped = {}
    for name in ("stt-1", "llm-1", "tts-1", "stt-2", "llm-2", "tts-2"):
        stopped[name] = await restart(fleet.processes[name])
    restarting.clear()
    outcomes = [o for person in await asyncio.gather(*people) for o in person]
    assert outcomes and all(o == "ok" for o in outcomes), outcomes
    # Under load some job worker was stopped with work in hand, and finished it (above).
    assert any("draining" in events for events in stopped.values()), stopped
