"""Any one process can die mid-work, and the user loses nothing.

A fleet with two workers of each kind; the worker serving the session is SIGKILLed (as by a crash
or an out-of-memory kill) or SIGTERMed (as by a rolling restart) at the worst moment.
"""

from __future__ import annotations

import asyncio
import difflib
import signal
from collections.abc import Iterator

import pytest

from tests.fleet_processes import Fleet, running_fleet
from tests.speech import pcm, silence, speech, spoken_words, transcribe_reply, words
from voicefleet.client import VoiceClient

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

QUESTION = "What is the capital of France?"
STORY = "Tell me a story about a brave knight."


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    with running_fleet(
        "e2e-failover",
        stt=2,
        llm=2,
        tts=2,
        gateways=2,
        llm_max_tokens="110",
        llm_system_prompt="You are a storyteller. Tell stories of five or six sentences.",
        drain_timeout_s="15",
    ) as running:
        yield running


@pytest.fixture(autouse=True)
def every_worker_running(fleet: Fleet) -> Iterator[None]:
    """A test may kill a process; the next one starts with the full fleet again."""
    yield
    fleet.restore()


def reply_audio(client: VoiceClient, turn: int) -> bytes:
    start = next(r for r in client.received if r.kind == "audio_start" and r.data["turn"] == turn)  # type: ignore[index]
    end = next(r for r in client.received if r.kind == "audio_end" and r.data["turn"] == turn)  # type: ignore[index]
    span = client.received[client.index_of(start) : client.index_of(end)]
    return b"".join(r.data for r in span if isinstance(r.data, bytes))


def assert_heard_once(client: VoiceClient, turn: int) -> None:
    """The reply audio says the reply's text once: nothing doubled, nothing missing."""
    text = "".join(e["text"] for e in client.events("assistant_text") if e["turn"] == turn)
    said = spoken_words(text)
    heard = spoken_words(transcribe_reply(reply_audio(client, turn)))
    assert said, "no reply text"
    assert 0.75 <= len(heard) / len(said) <= 1.3, (text, heard)
    assert difflib.SequenceMatcher(a=said, b=heard).ratio() >= 0.7, (said, heard)


def redelivered(fleet: Fleet, event: str, session_id: str, victim: str) -> bool:
    """Whether another worker started a job (turn, or sentence) that the victim had started."""

    def jobs(name: str) -> set[object]:
        return {
            e.get("sentence")
            for e in fleet.processes[name].log_events()
            if e.get("event") == event and e.get("session_id") == session_id
        }

    others = fleet.workers_that_logged(victim.split("-")[0], event, session_id)
    return any(jobs(victim) & jobs(name) for name in others if name != victim)


async def ask_for_a_story(client: VoiceClient) -> None:
    await client.stream(pcm(silence(0.3), speech(STORY), silence(2.0)))


async def test_stt_worker_killed_mid_utterance_loses_nothing(fleet: Fleet) -> None:
    client = VoiceClient(fleet.ws_url)
    await client.connect()
    try:
        audio = pcm(silence(0.3), speech(QUESTION), silence(3.0))
        cut = (int(16000 * 0.3) + len(audio) // 6) // 2 * 2  # a third of the way into the words
        await client.stream(audio[:cut])
        owner = await fleet.wait_for_worker("stt", "session_held", client.session_id)
        fleet.processes[owner].kill()
        await client.stream(audio[cut:])

        final = await client.wait_for("transcript", final=True, timeout=30)
        assert isinstance(final.data, dict)
        assert {"what", "capital", "france"} <= words(final.data["text"]), final.data
        taken_over = fleet.workers_that_logged("stt", "session_held", client.session_id)
        assert len(taken_over) == 2, "another STT worker should have taken the lease"
        await client.wait_for("audio_end", timeout=60)
        assert client.events("error") == []
    finally:
        await client.close()


@pytest.mark.parametrize("kind", ["llm", "tts"])
async def test_job_worker_killed_mid_turn_reply_completes_once(fleet: Fleet, kind: str) -> None:
    client = VoiceClient(fleet.ws_url)
    await client.connect()
    try:
        await ask_for_a_story(client)
        event = "turn_started" if kind == "llm" else "sentence_started"
        victim = await fleet.wait_for_worker(kind, event, client.session_id)
        fleet.processes[victim].kill()

        start = await client.wait_for("audio_start", timeout=60)
        assert isinstance(start.data, dict)
        turn = start.data["turn"]
        await client.wait_for("audio_end", timeout=120, turn=turn)
        assert redelivered(fleet, event, client.session_id, victim), (
            f"the {kind} job the victim held should have gone to another worker"
        )
        assert client.events("error") == []
        assert_heard_once(client, turn)
    finally:
        await client.close()


@pytest.mark.parametrize("kind", ["llm", "tts"])
async def test_sigterm_lets_a_job_worker_finish_its_turn(fleet: Fleet, kind: str) -> None:
    client = VoiceClient(fleet.ws_url)
    await client.connect()
    try:
        await ask_for_a_story(client)
        event = "turn_started" if kind == "llm" else "sentence_started"
        draining = fleet.processes[await fleet.wait_for_worker(kind, event, client.session_id)]
        draining.signal(signal.SIGTERM)

        start = await client.wait_for("audio_start", timeout=60)
        assert isinstance(start.data, dict)
        await client.wait_for("audio_end", timeout=120, turn=start.data["turn"])
        assert client.events("error") == []
        assert_heard_once(client, start.data["turn"])
        assert draining.process is not None
        assert await asyncio.to_thread(draining.process.wait, 30) == 0
    finally:
        await client.close()


async def test_sigterm_hands_stt_sessions_to_another_worker(fleet: Fleet) -> None:
    client = VoiceClient(fleet.ws_url)
    await client.connect()
    try:
        await client.stream(pcm(silence(0.3), speech(QUESTION), silence(2.0)))
        await client.wait_for("transcript", final=True, timeout=30)
        owner = await fleet.wait_for_worker("stt", "session_held", client.session_id)
        draining = fleet.processes[owner]
        draining.signal(signal.SIGTERM)
        assert draining.process is not None
        assert await asyncio.to_thread(draining.process.wait, 30) == 0

        # The next utterance of the same conversation is served by the other worker.
        mark = len(client.received)
        await client.stream(pcm(speech("And what about Germany?"), silence(2.0)))
        final = await client.wait_for("transcript", final=True, after=mark, timeout=30)
        assert isinstance(final.data, dict)
        assert "germany" in words(final.data["text"]), final.data
        assert len(fleet.workers_that_logged("stt", "session_held", client.session_id)) == 2
    finally:
        await client.close()


async def talk(client: VoiceClient, text: str) -> dict[str, object]:
    """Say ``text``; return the final transcript once the spoken reply to it has ended."""
    mark = len(client.received)
    await client.stream(pcm(silence(0.3), speech(text), silence(2.0)))
    final = await client.wait_for("transcript", final=True, after=mark, timeout=30)
    start = await client.wait_for("audio_start", after=client.index_of(final), timeout=60)
    assert isinstance(start.data, dict) and isinstance(final.data, dict)
    await client.wait_for("audio_end", timeout=120, turn=start.data["turn"])
    return final.data


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["killed", "stopped"])
async def test_client_resumes_on_another_gateway(fleet: Fleet, stop: signal.Signals) -> None:
    first = VoiceClient(fleet.ws_url_of(0))
    await first.connect()
    gateway = fleet.processes["gateway-1"]
    try:
        await talk(first, QUESTION)
        gateway.signal(stop)
        await first.wait_for("closed", timeout=30)
    finally:
        await first.close()
    assert gateway.process is not None
    exit_code = await asyncio.to_thread(gateway.process.wait, 30)
    if stop is signal.SIGTERM:
        assert exit_code == 0
        assert first.close_code in (1001, 1012), first.close_code

    again = VoiceClient(fleet.ws_url_of(1))
    ready = await again.connect(sessionId=first.session_id)
    try:
        assert ready["resumed"] is True
        final = await talk(again, "And what about Germany?")
        assert "germany" in words(str(final["text"]))
    finally:
        await again.close()
    history = await fleet.history(first.session_id)
    assert [("capital" in h.user.lower(), "germany" in h.user.lower()) for h in history] == [
        (True, False),
        (False, True),
    ], history
