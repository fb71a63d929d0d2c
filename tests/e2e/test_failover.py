"""Any one process can die mid-work, and the user loses nothing.

A fleet with two workers of each kind; the worker serving the session is SIGKILLed (as by a crash
or an out-of-memory kill) or SIGTERMed (as by a rolling restart) at the worst moment.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Iterator

import pytest

from fleet.contracts import AudioOut
from tests.event_tap import EventTap, tapping
from tests.fleet_processes import Fleet, running_fleet
from tests.replies import (
    HeardReply,
    assert_heard_as_without_fault,
    assert_heard_each_chunk_once,
    heard_reply,
)
from tests.speech import pcm, silence, speech, words
from voicefleet.client import VoiceClient

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

QUESTION = "What is the capital of France?"
STORY = "Tell me a story about a brave knight."
# Long enough for a bridge to finish streaming a whole story on 2 busy cores (it can take a
# minute there, with Kokoro synthesizing alongside), so a stopped worker finishes its job.
DRAIN_TIMEOUT_S = 120


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
        # Greedy: the same turn asked again is answered word for word the same, so a turn hit
        # by a fault can be compared with the same turn without one.
        llm_temperature="0",
        drain_timeout_s=str(DRAIN_TIMEOUT_S),
    ) as running:
        yield running


@pytest.fixture(autouse=True)
def every_worker_running(fleet: Fleet) -> Iterator[None]:
    """A test may kill a process; the next one starts with the full fleet again."""
    yield
    fleet.restore()


def jobs_started(fleet: Fleet, name: str, event: str, session_id: str) -> set[object]:
    """The jobs (a turn; or sentence numbers) that worker ``name`` logged starting."""
    return {
        e.get("sentence")
        for e in fleet.processes[name].log_events()
        if e.get("event") == event and e.get("session_id") == session_id
    }


def redone_elsewhere(fleet: Fleet, event: str, session_id: str, worker: str) -> set[object]:
    """The jobs of ``worker`` that another worker of its kind started too (redelivered)."""
    kind = worker.split("-")[0]
    mine = jobs_started(fleet, worker, event, session_id)
    return {
        job
        for name in fleet.workers_that_logged(kind, event, session_id)
        if name != worker
        for job in mine & jobs_started(fleet, name, event, session_id)
    }


def logged(fleet: Fleet, name: str, event: str, session_id: str | None = None) -> bool:
    return any(
        e.get("event") == event and (session_id is None or e.get("session_id") == session_id)
        for e in fleet.processes[name].log_events()
    )


Fault = Callable[[VoiceClient, EventTap], Awaitable[None]]


async def tell_a_story(fleet: Fleet, fault: Fault | None = None) -> HeardReply:
    """Ask for the story in a new session; ``fault`` runs while the question is being spoken
    and the reply made, and returns once it has struck."""
    client = VoiceClient(fleet.ws_url)
    await client.connect()
    async with tapping(fleet.settings, client.session_id) as tap:
        asking = asyncio.create_task(client.stream(pcm(silence(0.3), speech(STORY), silence(2.0))))
        try:
            if fault is not None:
                await fault(client, tap)
            await asking
            start = await client.wait_for("audio_start", timeout=90)
            assert isinstance(start.data, dict)
            reply = await heard_reply(client, tap, start.data["turn"], timeout=150)
            assert client.events("error") == []
            return reply
        finally:
            asking.cancel()
            await client.close()


@pytest.fixture(scope="module")
async def story_without_fault(fleet: Fleet) -> HeardReply:
    """The story turn as heard when nothing fails: what every faulted turn must sound like."""
    reply = await tell_a_story(fleet)
    assert len(reply.sentences) >= 3, reply.text
    assert reply.redone_chunks == reply.redone_deltas == 0
    assert_heard_each_chunk_once(reply)
    return reply


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


async def test_llm_bridge_killed_mid_stream_reply_is_heard_as_without_fault(
    fleet: Fleet, story_without_fault: HeardReply
) -> None:
    victim = ""

    async def kill_the_bridge_mid_stream(client: VoiceClient, tap: EventTap) -> None:
        nonlocal victim
        victim = await fleet.wait_for_worker("llm", "turn_started", client.session_id, 60)
        # Once a sentence has gone to TTS the reply is streaming: text and sentences that the
        # retried turn sends again.
        await fleet.wait_for_worker("tts", "sentence_started", client.session_id, 60)
        fleet.processes[victim].kill()

    reply = await tell_a_story(fleet, kill_the_bridge_mid_stream)
    session = reply.session_id
    assert not logged(fleet, victim, "turn_streamed", session), (
        "the bridge had finished the reply before it was killed: nothing was tested"
    )
    assert redone_elsewhere(fleet, "turn_started", session, victim), (
        "the turn the killed bridge held should have gone to the other bridge"
    )
    assert reply.redone_deltas > 0, "the retried turn should have sent its text again"
    assert_heard_as_without_fault(reply, story_without_fault)


async def test_tts_worker_killed_mid_sentence_reply_is_heard_as_without_fault(
    fleet: Fleet, story_without_fault: HeardReply
) -> None:
    victim, cut = "", -1

    async def kill_a_worker_mid_sentence(client: VoiceClient, tap: EventTap) -> None:
        nonlocal victim, cut
        session = client.session_id
        await tap.wait_for(AudioOut, timeout=90)  # the reply is playing
        async with asyncio.timeout(60):
            # The workers' logs say which sentences they started; the tap, which they sent.
            while not victim:
                sent = {m.sentence for m in tap.of(AudioOut)}
                for name in fleet.workers_that_logged("tts", "sentence_started", session):
                    unsent = jobs_started(fleet, name, "sentence_started", session) - sent
                    if unsent:
                        fleet.processes[name].kill()
                        victim, cut = name, min(s for s in unsent if isinstance(s, int))
                        break
                else:
                    await asyncio.sleep(0.02)

    reply = await tell_a_story(fleet, kill_a_worker_mid_sentence)
    session = reply.session_id
    assert cut in redone_elsewhere(fleet, "sentence_started", session, victim), (
        f"sentence {cut}, cut off by the kill, should have gone to the other worker"
    )
    assert_heard_as_without_fault(reply, story_without_fault)


@pytest.mark.parametrize("kind", ["llm", "tts"])
async def test_sigterm_lets_a_job_worker_finish_its_job(
    fleet: Fleet, kind: str, story_without_fault: HeardReply
) -> None:
    event = "turn_started" if kind == "llm" else "sentence_started"
    stopped, since = "", 0

    async def stop_the_worker_holding_a_job(client: VoiceClient, tap: EventTap) -> None:
        nonlocal stopped, since
        stopped = await fleet.wait_for_worker(kind, event, client.session_id, 60)
        since = len(fleet.processes[stopped].log_events())
        fleet.processes[stopped].signal(signal.SIGTERM)

    reply = await tell_a_story(fleet, stop_the_worker_holding_a_job)
    process = fleet.processes[stopped]
    assert process.process is not None
    assert await asyncio.to_thread(process.process.wait, DRAIN_TIMEOUT_S + 30) == 0
    after_sigterm = [e.get("event") for e in process.log_events()[since:]]
    # It had the job in hand when told to stop, and finished it before its drain deadline.
    assert "draining" in after_sigterm, after_sigterm
    assert "drain_deadline_passed" not in after_sigterm, after_sigterm
    session = reply.session_id
    assert not redone_elsewhere(fleet, event, session, stopped), (
        "the stopped worker handed its job on instead of finishing it"
    )
    if kind == "llm":
        assert logged(fleet, stopped, "turn_streamed", session)
    assert_heard_as_without_fault(reply, story_without_fault)


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
    ready = await again.connect(sessionId=first.session_id, resumeSecret=first.resume_secret)
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
