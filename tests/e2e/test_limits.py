"""Limits that need a whole fleet: audio faster than real time, a client that stops reading, and
a client that leaves mid-reply (docs/security.md, "Limits" and "Bounded work")."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from datetime import datetime
from pathlib import Path

import aio_pika
import httpx
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from fleet.state import SessionStore, connect_redis
from fleet.topology import Names
from tests.fleet_processes import Fleet, FleetProcess
from tests.role_processes import logged
from tests.speech import pcm, silence, speech
from tests.voice_turns import LONG_REQUEST
from voicefleet.client import VoiceClient

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

FRAME = 3200  # 100 ms of 16 kHz PCM16
# What the LLM bridge logs when it is done with a turn.
TURN_OVER = ("turn_streamed", "turn_cancelled_mid_stream", "stale_turn_skipped")


def rss_bytes(process: FleetProcess) -> int:
    assert process.process is not None
    status = Path(f"/proc/{process.process.pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


async def flood(fleet: Fleet, seconds_of_audio: float, within_s: float) -> VoiceClient:
    """Send ``seconds_of_audio`` of audio in about ``within_s``; returns the closed client."""
    client = VoiceClient(fleet.ws_url)
    await client.connect()
    frames = int(seconds_of_audio / 0.1)
    with contextlib.suppress(websockets.ConnectionClosed):
        for index in range(frames):
            await client.send_bytes(b"\x00" * FRAME)
            if index % 10 == 9:  # pacing the flood, not waiting for anything
                await asyncio.sleep(within_s * 10 / frames)
    await client.wait_for("closed", timeout=30)
    await client.close()
    return client


async def test_sixty_seconds_of_audio_in_one_second_ends_in_1008_without_memory_growth(
    fleet: Fleet,
) -> None:
    gateway = fleet.processes["gateway-1"]
    await flood(fleet, 60, 1.0)  # the first pays for what any connection allocates once
    before = rss_bytes(gateway)

    client = await flood(fleet, 60, 1.0)
    await logged(gateway, "session_ended", session_id=client.session_id, patience=30)
    after = rss_bytes(gateway)

    assert [e["code"] for e in client.events("error")] == ["audio_too_fast"]
    assert client.close_code == 1008
    print(f"gateway RSS {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB")
    assert after - before < 10 * 2**20


class StalledClient:
    """A WebSocket client that sends but does not read, over a socket with a small receive
    buffer, until told to read again (websockets' sans-I/O protocol, so nothing reads for it)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, url: str):
        self.reader = reader
        self.writer = writer
        self.protocol = ClientProtocol(parse_uri(url), max_size=None)
        self.frames: list[Frame] = []

    @classmethod
    async def connect(cls, url: str) -> StalledClient:
        uri = parse_uri(url)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (uri.host, uri.port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
        client = cls(reader, writer, url)
        client.protocol.send_request(client.protocol.connect())
        await client._flush()
        while not any(isinstance(e, Response) for e in client.protocol.events_received()):
            client.protocol.receive_data(await reader.read(4096))
        return client

    async def _flush(self) -> None:
        self.writer.write(b"".join(self.protocol.data_to_send()))
        await self.writer.drain()

    async def send_text(self, text: str) -> None:
        self.protocol.send_text(text.encode())
        await self._flush()

    async def send_audio(self, audio: bytes) -> None:
        for index in range(0, len(audio), FRAME):
            self.protocol.send_binary(audio[index : index + FRAME])
            await self._flush()
            await asyncio.sleep(0.1)  # a microphone's pace

    async def read_to_the_end(self) -> None:
        """Read again: everything the server sent, up to its close."""
        async with asyncio.timeout(30):
            while data := await self.reader.read(1 << 16):
                self.protocol.receive_data(data)
                self.frames.extend(
                    e for e in self.protocol.events_received() if isinstance(e, Frame)
                )
                if self.protocol.close_rcvd is not None:
                    break
        self.writer.close()

    def texts(self) -> list[dict[str, object]]:
        return [json.loads(bytes(f.data)) for f in self.frames if f.opcode is Opcode.TEXT]


# The close frame waits up to VF_SEND_TIMEOUT_S for the client to read again. With 2 s, a test
# slowed by a loaded machine may start reading after that and find the connection dropped
# without it (as documented); with 120 s it is always there to read.
@pytest.mark.parametrize(
    ("limit", "close_frame_certain"),
    [
        ({"VF_SEND_TIMEOUT_S": "2"}, False),  # a send blocked that long
        ({"VF_SEND_QUEUE_MAX_BYTES": "65536", "VF_SEND_TIMEOUT_S": "120"}, True),  # that much
    ],
    ids=["send-timeout", "send-queue"],
)
async def test_a_client_that_stops_reading_is_closed_with_1013_and_its_session_freed(
    fleet: Fleet, limit: dict[str, str], close_frame_certain: bool
) -> None:
    # A small kernel send buffer, so that a reply or two fills what the kernel holds for it; and
    # keepalive pings (unanswered by a client that does not read) later than the limit under test.
    with fleet.extra_gateway(
        "gateway-slow", VF_SEND_BUFFER_BYTES="8192", VF_WS_PING_INTERVAL_S="300", **limit
    ) as url:
        gateway = fleet.processes["gateway-slow"]
        since = len(gateway.log_events())  # the log of an earlier run's gateway-slow
        client = await StalledClient.connect(url)
        await client.send_text(json.dumps({"type": "start", "format": "pcm_s16le",
                                           "sampleRate": 16000, "channels": 1}))  # fmt: skip
        talking = asyncio.create_task(
            client.send_audio(pcm(silence(0.3), speech(LONG_REQUEST), silence(60)))
        )
        try:
            await logged(gateway, "client_error", code="slow_client", patience=120, since=since)
        finally:
            talking.cancel()
            await asyncio.gather(talking, return_exceptions=True)
        await client.read_to_the_end()

        if close_frame_certain or client.protocol.close_rcvd is not None:
            assert client.protocol.close_rcvd is not None, (
                client.protocol.state,
                client.protocol.parser_exc,
                client.protocol.close_sent,
                len(client.frames),
            )
            assert client.protocol.close_rcvd.code == 1013
            assert client.protocol.close_rcvd.reason == "slow_client"
        ready = client.texts()[0]
        assert ready["type"] == "ready"
        session_id = str(ready["sessionId"])
        await logged(gateway, "session_ended", session_id=session_id, patience=30, since=since)
        store = SessionStore(connect_redis(fleet.settings), fleet.settings)
        try:
            assert await store.current_stream(session_id) is None  # its STT lease is void
        finally:
            await store.redis.aclose()
        assert gateway.process is not None and gateway.process.poll() is None


def logged_at(event: dict[str, object]) -> datetime:
    return datetime.fromisoformat(str(event["timestamp"]))


async def tts_idle(fleet: Fleet) -> bool:
    """Nothing waits in tts.jobs and the TTS worker has no job in hand."""
    async with await aio_pika.connect(fleet.settings.amqp_url) as connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(Names(fleet.settings.namespace).tts_jobs, passive=True)
        waiting = queue.declaration_result.message_count
    port = fleet.metrics_ports["tts-1"]
    async with httpx.AsyncClient(timeout=10) as http:
        text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    in_hand = sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "vf_jobs_in_flight"
        for sample in family.samples
    )
    return waiting == 0 and in_hand == 0


async def test_leaving_mid_reply_cancels_the_turn_no_tts_job_of_it_runs_afterwards(
    fleet: Fleet,
) -> None:
    gateway, llm, tts = (fleet.processes[name] for name in ("gateway-1", "llm-1", "tts-1"))
    client = VoiceClient(fleet.ws_url)
    await client.connect()
    talking = asyncio.create_task(
        client.stream(pcm(silence(0.3), speech(LONG_REQUEST), silence(60)))
    )
    try:
        start = await client.wait_for("audio_start", timeout=120)
    finally:
        talking.cancel()
        await asyncio.gather(talking, return_exceptions=True)
    assert isinstance(start.data, dict)
    turn = int(start.data["turn"])
    await client.close()  # gone mid-reply: the story has more sentences to come

    ended = logged_at(
        await logged(gateway, "session_ended", session_id=client.session_id, patience=30)
    )
    # The bridge is done with the turn (streamed, cut off, or skipped), and TTS with its jobs.
    async with asyncio.timeout(120):
        while not any(  # noqa: ASYNC110 - other processes' logs and queues: nothing to await
            e.get("session_id") == client.session_id
            and e.get("turn") == turn
            and e.get("event") in TURN_OVER
            for e in llm.log_events()
        ) or not await tts_idle(fleet):
            await asyncio.sleep(0.2)

    started = [
        e
        for e in tts.log_events()
        if e.get("event") == "sentence_started"
        and e.get("session_id") == client.session_id
        and e.get("turn") == turn
    ]
    assert started, "the reply's first sentence was synthesized"
    late = [e["sentence"] for e in started if logged_at(e) > ended]
    assert late == [], f"sentences of turn {turn} synthesized after the client left: {late}"
    print(f"turn {turn}: {len(started)} sentence(s) synthesized before the client left")
