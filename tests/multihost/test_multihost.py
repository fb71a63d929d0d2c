"""Several boxes: the broker on one host, workers on two others, and a host that drops off the net.

The hosts are Linux network namespaces on one machine (tests/netns.py): separate network stacks
joined by a bridge, so every hop between a worker and the broker crosses a real (virtual) link
that the test can cut. The client talks to the gateway from the test process's own namespace.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

import pytest

from tests.multihost.conftest import FOLLOW_UP, QUESTION, WORKER_HEARTBEAT_S, MultiHostFleet
from tests.speech import pcm, silence, speech, words
from tests.voice_turns import audio_between
from voicefleet.client import Received, VoiceClient

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

# README: a host cut off from the broker loses its sessions "within about twice
# VF_AMQP_HEARTBEAT_S": twice the heartbeat for the broker to notice, then a moment for the lease
# to reach another worker and be announced.
TAKEOVER_BOUND_S = 2 * WORKER_HEARTBEAT_S + 3
# After the last reply frame would have played; the gateway counts playback on its own clock.
PLAYED_OUT_MARGIN_S = 0.5


def _host(worker: str) -> str:
    """``stt-hostA`` -> ``hostA``."""
    return worker.split("-", 1)[1]


def _timestamp(event: dict[str, object]) -> float:
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


async def _keep_talking_silence(client: VoiceClient, stop: asyncio.Event) -> None:
    """A live microphone: silence keeps flowing until told to stop."""
    while not stop.is_set():
        await client.stream_silence(0.5)


async def _full_turn(client: VoiceClient, after: int) -> tuple[dict[str, object], int, bytes]:
    """The next non-empty final transcript after ``after``, then its reply, start to end."""
    final = await client.wait_for("transcript", final=True, timeout=60, after=after)
    while not (isinstance(final.data, dict) and str(final.data["text"]).strip()):
        after = client.index_of(final) + 1
        final = await client.wait_for("transcript", final=True, timeout=60, after=after)
    start = await client.wait_for("audio_start", timeout=60, after=client.index_of(final))
    assert isinstance(final.data, dict) and isinstance(start.data, dict)
    turn = int(start.data["turn"])
    end = await client.wait_for("audio_end", timeout=90, turn=turn)
    audio = audio_between(client, start, end)
    return final.data, turn, audio


def _first(
    items: list[Received], kind: str, data: dict[str, object] | None, **match: object
) -> Received:
    return next(
        r
        for r in items
        if r.kind == kind
        and isinstance(r.data, dict)
        and (data is None or r.data == data)
        and all(r.data.get(k) == v for k, v in match.items())
    )


def _assistant_text(client: VoiceClient, turn: int) -> str:
    return "".join(str(e["text"]) for e in client.events("assistant_text") if e["turn"] == turn)


async def test_a_voice_turn_crosses_hosts(multihost: MultiHostFleet) -> None:
    print(f"\nlab and fleet up in {multihost.started_s:.1f}s")
    client = VoiceClient(multihost.ws_url)
    await client.connect()
    try:
        await client.stream(pcm(silence(0.3), speech(QUESTION), silence(2.0)))
        final, turn, audio = await _full_turn(client, 0)
        assert {"capital", "france"} <= words(str(final["text"])), final
        assert len(audio) > 24000 * 2 * 0.5, "less than half a second of reply audio"
        assert _assistant_text(client, turn).strip()
        assert not client.events("error"), client.events("error")
    finally:
        await client.close()

    session = client.session_id
    served = {
        "stt": await multihost.wait_for_worker("stt", "session_held", session),
        "llm": await multihost.wait_for_worker("llm", "turn_started", session),
        "tts": await multihost.wait_for_worker("tts", "sentence_started", session),
    }
    # The broker's own record of who is connected from where: each worker that served the turn
    # is a client on another host's address, not on the broker host (nor on loopback).
    lab = multihost.lab
    connections = multihost.amqp_connections()
    for worker in served.values():
        seen = connections[f"voicefleet-{worker}"]
        assert seen["peer_host"] == lab.address(_host(worker)), (worker, seen)
        assert seen["peer_host"] != lab.broker_address
        assert seen["heartbeat"] == WORKER_HEARTBEAT_S, (worker, seen)
    gateway = connections["voicefleet-gateway-broker"]
    assert lab.host_of(str(gateway["peer_host"])) == "broker", gateway
    print(f"turn served by {served} on {sorted({_host(w) for w in served.values()})}; "
          f"broker and gateway on {lab.broker_address}")  # fmt: skip


async def test_cut_off_host_is_taken_over(multihost: MultiHostFleet) -> None:
    lab = multihost.lab
    client = VoiceClient(multihost.ws_url)
    await client.connect()
    session = client.session_id
    holder = await multihost.wait_for_worker("stt", "session_held", session, patience=10)
    cut_host = _host(holder)
    survivor = next(h for h in ("hostA", "hostB") if h != cut_host)
    talking = asyncio.Event()
    silence_task: asyncio.Task[None] | None = None
    try:
        # A first exchange, served wherever the broker put it.
        await client.stream(pcm(silence(0.3), speech(QUESTION), silence(2.0)))
        final, first_turn, _ = await _full_turn(client, 0)
        assert {"capital", "france"} <= words(str(final["text"])), final

        # Pull the cable of the host holding the session's speech recognizer, then talk on.
        mark = len(client.received)
        cut_wall, cut_at = time.time(), time.monotonic()
        lab.cut(cut_host)
        await client.stream(pcm(speech(FOLLOW_UP), silence(1.0)))
        silence_task = asyncio.create_task(_keep_talking_silence(client, talking))

        taker = await multihost.wait_for_worker(
            "stt", "session_held", session, patience=60, redelivered=True
        )
        held = multihost.log_event(taker, "session_held", session)
        final, turn, audio = await _full_turn(client, mark)
        final_at = _first(client.received[mark:], "transcript", final).at
        first_audio_at = _first(client.received[mark:], "audio_start", None, turn=turn).at
        talking.set()
        await silence_task

        assert _host(taker) == survivor, (taker, cut_host)
        assert turn > first_turn
        # The follow-up was spoken while the link was down, so all of it was replayed to the new
        # owner: nothing the user said is lost.
        assert {"capital", "germany"} <= words(str(final["text"])), final
        assert len(audio) > 24000 * 2 * 0.5, "less than half a second of reply audio"
        assert _assistant_text(client, turn).strip()
        assert not client.events("error"), client.events("error")
        for kind, event in (("llm", "turn_started"), ("tts", "sentence_started")):
            workers = multihost.workers_that_logged(kind, event, session, turn=turn)
            assert workers == [f"{kind}-{survivor}"], (kind, workers)

        takeover_s = _timestamp(held) - cut_wall
        print(
            f"\ncut {cut_host} (held by {holder}); {taker} took the session over "
            f"{takeover_s:.2f}s after the cut; final transcript {final_at - cut_at:.2f}s and "
            f"first reply audio {first_audio_at - cut_at:.2f}s after the cut"
        )
        assert takeover_s < TAKEOVER_BOUND_S, takeover_s
    finally:
        talking.set()
        if silence_task is not None and not silence_task.done():
            silence_task.cancel()
        await asyncio.gather(silence_task or asyncio.sleep(0), return_exceptions=True)
        await client.close()
        lab.mend(cut_host)


async def test_healed_host_does_not_serve_a_taken_over_session(multihost: MultiHostFleet) -> None:
    """The cable goes back in: the old owner must not come back as a second owner of the stream.

    aio-pika's robust connection restores a queue's bindings on reconnect: unless the old STT
    owner forgets the sessions it held when its connection was lost (and prunes those bindings),
    it re-binds the stream, the audio exchange delivers the stream's audio to both owners, and
    every utterance is transcribed twice (two finals, two turns, a barge-in on the reply).
    """
    lab = multihost.lab
    client = VoiceClient(multihost.ws_url)
    await client.connect()
    session = client.session_id
    holder = await multihost.wait_for_worker("stt", "session_held", session, patience=10)
    cut_host = _host(holder)
    talking = asyncio.Event()
    silence_task: asyncio.Task[None] | None = None
    mended = False
    try:
        # The cable is pulled before the user says anything: all of it goes to the new owner.
        lab.cut(cut_host)
        await client.stream(pcm(silence(0.3), speech(QUESTION), silence(1.0)))
        silence_task = asyncio.create_task(_keep_talking_silence(client, talking))
        taker = await multihost.wait_for_worker(
            "stt", "session_held", session, patience=60, redelivered=True
        )
        assert _host(taker) != cut_host
        final, turn, audio = await _full_turn(client, 0)
        assert {"capital", "france"} <= words(str(final["text"])), final
        played_out_at = _first(client.received, "audio_start", None, turn=turn).at + len(audio) / (
            24000 * 2
        )

        restored = multihost.log_count(holder, "broker_connection_restored")
        lab.mend(cut_host)
        mended = True
        # The old owner is back on the broker with its channels restored and what it no longer
        # holds unbound (fleet/topology.py logs this once both are done).
        await multihost.wait_for_log(holder, "broker_connection_restored", restored, patience=60)
        # Speak only once the reply has played out, so that the follow-up is no barge-in: the
        # client's playback is a clock, not an event (bounded by the reply's length).
        await asyncio.sleep(max(0.0, played_out_at + PLAYED_OUT_MARGIN_S - time.monotonic()))

        mark = len(client.received)
        talking.set()
        await silence_task
        await client.stream(pcm(speech(FOLLOW_UP), silence(2.0)))
        final, _, _ = await _full_turn(client, mark)
        await client.stream_silence(2.0)  # room for a duplicate to show up
        finals = [
            r.data["text"]
            for r in client.received[mark:]
            if r.kind == "transcript" and isinstance(r.data, dict) and r.data["final"]
            and str(r.data["text"]).strip()
        ]  # fmt: skip
        assert len(finals) == 1, f"one utterance, several final transcripts: {finals}"
        assert {"capital", "germany"} <= words(str(final["text"])), final
        assert not client.events("audio_cancel"), "a duplicate transcript barged in on the reply"
    finally:
        talking.set()
        if silence_task is not None and not silence_task.done():
            silence_task.cancel()
        await asyncio.gather(silence_task or asyncio.sleep(0), return_exceptions=True)
        await client.close()
        if not mended:
            lab.mend(cut_host)
