"""Fleet overhead: the same engines in one process versus through the fleet, on the same audio.

Top-down. Both modes run the same sessions (the same Kokoro-spoken questions, streamed in 100 ms
frames at real-time pace on the same schedule), against the same chat server, with the same
prompt at temperature 0, so both produce the same replies and the engines' cost cancels out:

- ``inprocess``: per session a StreamingTranscriber (one SttEngines shared by all sessions, as in
  an STT worker) -> on the final transcript, OpenAICompatibleChat streamed through a
  SentenceBuffer -> each piece to the synthesizer (at most ``tts_concurrency`` at once, first
  pieces first then earliest deadline, as a TTS worker does: fleet/deadlines.py) -> fixed 200 ms
  chunks. Timed: end of
  speech -> first chunk of the first piece.
- ``fleet``: a private `voicefleet up` (1 gateway, 1 worker of each kind, one STT worker holding
  every session) and a WebSocket client per session. Timed at the client: end of speech -> first
  reply audio frame.

The difference of the two is what the broker hops, the gateway, the WebSocket and the
processes cost per turn. On a 2-core machine at 10 sessions it also contains CPU contention
between processes (see docs/benchmarks.md).

Bottom-up (``transport``): publish -> consume round trips through fleet.topology.Bus (publisher
confirms, as the fleet publishes) for each message kind on a turn's critical path, at its real
size, idle and under the audio traffic of N sessions, plus Redis round trips; with the hop
counts of a turn, an estimate of the transport's share.

    python -m benchmarks.overhead --modes inprocess,fleet,transport --levels 1,10 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np

from benchmarks.loadgen import (
    QUESTIONS,
    ROOT,
    PrivateFleet,
    free_port,
    synthesize_questions,
)
from fleet import contracts
from fleet.audio import INPUT_SAMPLE_RATE, OUTPUT_SAMPLE_RATE, silence
from fleet.deadlines import EarliestFirst, ReplyClock, tts_rank
from fleet.settings import Settings, get_settings
from fleet.state import connect_redis
from fleet.topology import Bus, Route, decode_incoming
from voicefleet.client import FRAME_BYTES, FRAME_SECONDS, VoiceClient
from voicefleet.namespaces import delete_namespace
from workers.llm_bridge.chat import OpenAICompatibleChat
from workers.llm_bridge.conversation import build_messages
from workers.llm_bridge.sentences import SentenceBuffer
from workers.stt.transcriber import FinalTranscript, StreamingTranscriber, SttEngines
from workers.tts.chunks import speech_chunks
from workers.tts.providers import SpeechSynthesizer, create_synthesizer

LEAD_S = 0.5  # silence before the question
MAX_TURN_S = 120.0  # bound on one turn (speech end -> reply played)


@dataclass
class TurnTiming:
    mode: str
    level: int
    session: int
    round: int
    question: str
    final_s: float | None = None
    first_piece_s: float | None = None  # in-process only: end of speech -> first TTS piece
    ttfa_s: float | None = None
    reply: str = ""
    error: str = ""


class Microphone:
    """Plays (lead silence, question) in frames at real-time pace, then silence until stopped."""

    def __init__(self, question: bytes) -> None:
        pcm = silence(LEAD_S, INPUT_SAMPLE_RATE) + question
        pcm += bytes(-len(pcm) % FRAME_BYTES)
        self.frames = [pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm), FRAME_BYTES)]
        self.last_speech = len(self.frames) - 1  # the index of the last frame of the question
        self.speech_end = 0.0  # when that frame was sent
        self.done = asyncio.Event()

    async def play(self, delay: float, send: Callable[[int, bytes], Awaitable[None]]) -> None:
        await asyncio.sleep(delay)
        started = time.monotonic()
        seq = 0
        while not self.done.is_set():
            frame = self.frames[seq] if seq < len(self.frames) else bytes(FRAME_BYTES)
            if seq == self.last_speech:
                self.speech_end = time.monotonic()
            await send(seq, frame)
            seq += 1
            await asyncio.sleep(max(0.0, started + seq * FRAME_SECONDS - time.monotonic()))


def stagger(session: int) -> float:
    return 0.3 + 0.2 * session % 1.0  # as the load generator staggers its people


# --- in process ----------------------------------------------------------------------------


@dataclass
class Engines:
    settings: Settings
    stt: SttEngines
    chat: OpenAICompatibleChat
    synthesizer: SpeechSynthesizer
    tts_slots: EarliestFirst
    llm_slots: asyncio.Semaphore


async def inprocess_turn(
    engines: Engines, timing: TurnTiming, question: bytes, delay: float
) -> None:
    settings = engines.settings
    transcriber = StreamingTranscriber(engines.stt, settings, "en")
    microphone = Microphone(question)
    inbox: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
    first_chunk_at: float | None = None
    audio_s = 0.0

    async def hear(seq: int, frame: bytes) -> None:
        inbox.put_nowait((seq, frame))

    async def speak(index: int, piece: str, deadline: float) -> None:
        nonlocal first_chunk_at, audio_s
        chunks = speech_chunks(
            engines.synthesizer, piece, settings.tts_voice, settings.tts_chunk_ms
        )
        async with engines.tts_slots.slot(tts_rank(index, deadline, time.time())):
            async for pcm, _ in chunks:
                if index == 0 and first_chunk_at is None:
                    first_chunk_at = time.monotonic()
                    timing.ttfa_s = first_chunk_at - microphone.speech_end
                audio_s += len(pcm) / 2 / OUTPUT_SAMPLE_RATE

    async def reply(text: str) -> None:
        messages = build_messages(settings.llm_system_prompt, [], text)
        pieces = SentenceBuffer(
            settings.llm_first_clause_chars, first_piece_words=settings.llm_first_piece_words
        )
        spoken: list[asyncio.Task[None]] = []
        texts: list[str] = []
        clock = ReplyClock(settings.tts_speed)

        def dispatch(new: list[str]) -> None:
            for piece in new:
                if not spoken:
                    timing.first_piece_s = time.monotonic() - microphone.speech_end
                deadline = clock.deadline(piece)
                spoken.append(asyncio.create_task(speak(len(spoken), piece, deadline)))
                texts.append(piece)

        async with (
            engines.llm_slots,
            contextlib.aclosing(
                engines.chat.stream(
                    messages,
                    max_tokens=settings.llm_max_tokens,
                    temperature=settings.llm_temperature,
                    seed=0,
                )
            ) as deltas,
        ):
            async for delta in deltas:
                dispatch(pieces.push(delta))
        dispatch(pieces.flush())
        timing.reply = " ".join(texts)
        await asyncio.gather(*spoken)

    mic = asyncio.create_task(microphone.play(delay, hear))
    try:
        async with asyncio.timeout(MAX_TURN_S):
            while True:
                seq, frame = await inbox.get()
                events = await transcriber.feed(seq, frame)
                final = next((e for e in events if isinstance(e, FinalTranscript)), None)
                if final is not None and final.text.strip() and seq >= microphone.last_speech:
                    timing.final_s = time.monotonic() - microphone.speech_end
                    # Keep transcribing the open microphone while the reply is produced.
                    replying = asyncio.create_task(reply(final.text.strip()))
                    while not replying.done():
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(FRAME_SECONDS):
                                seq, frame = await inbox.get()
                                await transcriber.feed(seq, frame)
                    replying.result()
                    break
            if first_chunk_at is not None:  # listen to the reply, as the client does
                await asyncio.sleep(max(0.0, first_chunk_at + audio_s - time.monotonic()))
    except TimeoutError:
        timing.error = "timeout"
    finally:
        microphone.done.set()
        mic.cancel()


async def run_inprocess(
    args: argparse.Namespace, questions: list[bytes], llm_url: str
) -> list[TurnTiming]:
    settings = get_settings().model_copy(update={"llm_temperature": 0.0})
    stt = await asyncio.to_thread(SttEngines.load, settings)
    synthesizer = await asyncio.to_thread(create_synthesizer, settings)
    chat = OpenAICompatibleChat(llm_url, settings.llm_model, settings.llm_api_key, 60.0)
    engines = Engines(
        settings, stt, chat, synthesizer,
        EarliestFirst(settings.tts_concurrency), asyncio.Semaphore(settings.llm_concurrency),
    )  # fmt: skip
    try:
        return await run_rounds(
            "inprocess",
            args,
            questions,
            lambda t, pcm, delay: inprocess_turn(engines, t, pcm, delay),
        )
    finally:
        await chat.aclose()
        stt.close()


async def run_rounds(
    mode: str,
    args: argparse.Namespace,
    questions: list[bytes],
    turn: Callable[[TurnTiming, bytes, float], Awaitable[None]],
) -> list[TurnTiming]:
    """A warm-up turn, then ``args.rounds`` rounds of ``level`` simultaneous turns per level."""
    await turn(TurnTiming("warm-up", 0, 0, 0, QUESTIONS[0]), questions[0], 0.0)
    timings: list[TurnTiming] = []
    for level in args.levels:
        for rnd in range(args.rounds):
            batch = [
                TurnTiming(mode, level, s, rnd, QUESTIONS[(s + rnd) % len(QUESTIONS)])
                for s in range(level)
            ]
            await asyncio.gather(
                *(
                    turn(t, questions[(t.session + rnd) % len(questions)], stagger(t.session))
                    for t in batch
                )
            )
            timings += batch
        report(mode, level, [t for t in timings if t.level == level])
    return timings


# --- through the fleet ---------------------------------------------------------------------


async def fleet_turn(url: str, timing: TurnTiming, question: bytes, delay: float) -> None:
    microphone = Microphone(question)
    client = VoiceClient(url)
    await client.connect()
    mic = asyncio.create_task(microphone.play(delay, lambda _, frame: client.send_bytes(frame)))
    try:
        final = await client.wait_for("transcript", final=True, timeout=MAX_TURN_S)
        timing.final_s = final.at - microphone.speech_end
        start = await client.wait_for("audio_start", timeout=MAX_TURN_S)
        first = await client.wait_for("audio", after=client.index_of(start), timeout=MAX_TURN_S)
        timing.ttfa_s = first.at - microphone.speech_end
        end = await client.wait_for("audio_end", after=client.index_of(start), timeout=MAX_TURN_S)
        audio_s = sum(
            len(r.data) for r in client.received[client.index_of(start) : client.index_of(end)]
            if isinstance(r.data, bytes)
        ) / (2 * OUTPUT_SAMPLE_RATE)  # fmt: skip
        timing.reply = "".join(str(e.get("text", "")) for e in client.events("assistant_text"))
        errors = client.events("error")
        timing.error = ";".join(str(e.get("code")) for e in errors)
        await asyncio.sleep(max(0.0, first.at + audio_s - time.monotonic()))
    except TimeoutError:
        timing.error = "timeout"
    finally:
        microphone.done.set()
        mic.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), 10)


async def run_fleet(
    args: argparse.Namespace, questions: list[bytes], llm_url: str
) -> list[TurnTiming]:
    # One STT worker holding every session: the same single Whisper as the in-process run.
    fleet = PrivateFleet(
        1, 1, 1, 1, llm_url,
        {"VF_LLM_TEMPERATURE": "0", "VF_STT_MAX_SESSIONS": str(max(args.levels) + 2)},
    )  # fmt: skip
    try:
        print(f"starting a fleet in namespace {fleet.namespace}", flush=True)
        await fleet.start()
        return await run_rounds(
            "fleet", args, questions, lambda t, pcm, delay: fleet_turn(fleet.ws_url, t, pcm, delay)
        )
    finally:
        await fleet.stop()


# --- transport, bottom-up ------------------------------------------------------------------


def critical_path_messages(session: str, stream: str) -> list[tuple[str, contracts.Message]]:
    text = "What is the capital of France?"
    return [
        ("audio.chunk 3200 B", contracts.AudioChunk(session, stream, 1, bytes(FRAME_BYTES))),
        ("transcript.final", contracts.TranscriptFinal(session, text, 42)),
        ("turn.request", contracts.TurnRequest(session, 1, text, "af_heart", "en")),
        ("assistant.delta", contracts.AssistantDelta(session, 1, 0, " Paris")),
        ("tts.request", contracts.TtsRequest(session, 1, 0, "The capital of France is Paris.")),
        (
            "audio.out 9600 B",
            contracts.AudioOut(session, 1, 0, 0, False, bytes(9600), "The capital of France."),
        ),
    ]


async def run_transport(args: argparse.Namespace) -> list[dict[str, object]]:
    settings = Settings(namespace=f"ov{uuid.uuid4().hex[:10]}")
    publisher = await Bus.connect(settings, "overhead-publisher")
    consumer = await Bus.connect(settings, "overhead-consumer")
    rows: list[dict[str, object]] = []
    background: list[asyncio.Task[None]] = []
    try:
        session, stream = "s-" + uuid.uuid4().hex[:8], "st-" + uuid.uuid4().hex[:8]
        channel = await consumer.channel(prefetch=64)
        arrived: asyncio.Queue[float] = asyncio.Queue()

        async def on_message(incoming: object) -> None:
            from aio_pika.abc import AbstractIncomingMessage

            assert isinstance(incoming, AbstractIncomingMessage)
            decode_incoming(incoming)
            arrived.put_nowait(time.perf_counter())
            await incoming.ack()

        events_q = await consumer.exclusive_queue(channel, f"{settings.namespace}.ov-events")
        await events_q.bind(await consumer.exchange(channel, Route.EVENTS), session)
        audio_q = await consumer.exclusive_queue(channel, f"{settings.namespace}.ov-audio")
        await audio_q.bind(await consumer.exchange(channel, Route.AUDIO), stream)
        for queue in (
            events_q,
            audio_q,
            await consumer.work_queue(channel, Route.LLM_TURNS),
            await consumer.work_queue(channel, Route.TTS_JOBS),
        ):
            await queue.consume(on_message)

        sink = await consumer.exclusive_queue(channel, f"{settings.namespace}.ov-sink")

        async def session_audio(index: int) -> None:
            """One other session's microphone: 10 frames a second, consumed elsewhere."""
            key = f"bg-{index}"
            await sink.bind(await consumer.exchange(channel, Route.AUDIO), key)
            seq = 0
            while True:
                await publisher.publish(
                    contracts.AudioChunk(key, key, seq, bytes(FRAME_BYTES)), mandatory=True
                )
                seq += 1
                await asyncio.sleep(FRAME_SECONDS)

        await sink.consume(lambda m: m.ack())
        redis = connect_redis(settings)
        for load in (0, *[n for n in args.levels if n > 1]):
            for task in background:
                task.cancel()
            background = [asyncio.create_task(session_audio(i)) for i in range(load)]
            await asyncio.sleep(1.0)
            for label, message in critical_path_messages(session, stream):
                mandatory = isinstance(message, contracts.AudioChunk)
                rtts, confirms = [], []
                for _ in range(args.samples):
                    started = time.perf_counter()
                    await publisher.publish(message, mandatory=mandatory)
                    confirms.append(time.perf_counter() - started)
                    rtts.append(await asyncio.wait_for(arrived.get(), 5) - started)
                    await asyncio.sleep(0.002)
                rows.append(summary_row(label, load, rtts, confirms))
            key = f"{settings.namespace}:ov:turn"
            rtts = []
            for _ in range(args.samples):
                started = time.perf_counter()
                await redis.incr(key)
                rtts.append(time.perf_counter() - started)
            rows.append(summary_row("redis INCR", load, rtts, rtts))
        await redis.aclose()
    finally:
        for task in background:
            task.cancel()
        await publisher.close()
        await consumer.close()
        await delete_namespace(settings)
    for row in rows:
        print(
            f"  {row['message']:18s} sessions={row['sessions']:<3} publish->consume "
            f"p50 {row['rtt_p50_ms']:.2f} ms p95 {row['rtt_p95_ms']:.2f} ms "
            f"p99 {row['rtt_p99_ms']:.2f} ms | publish (confirm) p50 {row['confirm_p50_ms']:.2f} ms"
        )
    return rows


def summary_row(
    label: str, load: int, rtts: list[float], confirms: list[float]
) -> dict[str, object]:
    ms = np.array(rtts) * 1000
    return {
        "message": label,
        "sessions": load,
        "rtt_p50_ms": float(np.percentile(ms, 50)),
        "rtt_p95_ms": float(np.percentile(ms, 95)),
        "rtt_p99_ms": float(np.percentile(ms, 99)),
        "confirm_p50_ms": float(np.percentile(np.array(confirms) * 1000, 50)),
    }


# --- shared ---------------------------------------------------------------------------------


def report(mode: str, level: int, timings: list[TurnTiming]) -> None:
    good = [t for t in timings if not t.error and t.ttfa_s is not None]
    ttfa = [t.ttfa_s for t in good if t.ttfa_s is not None]
    final = [t.final_s for t in good if t.final_s is not None]

    def pct(values: list[float], q: float) -> float:
        return float(np.percentile(values, q)) if values else float("nan")

    print(
        f"{mode:9s} sessions={level:3d} turns={len(timings)} ok={len(good)} | "
        f"final p50 {pct(final, 50):.3f} s | TTFA p50 {pct(ttfa, 50):.3f} s "
        f"p95 {pct(ttfa, 95):.3f} s mean {statistics.fmean(ttfa) if ttfa else float('nan'):.3f} s",
        flush=True,
    )


def spawn_chat_server(run_dir: Path, port: int) -> subprocess.Popen[bytes]:
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / "llm-server.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "voicefleet.cli", "llm-server", "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=run_dir,
        )  # fmt: skip


def write_rows(path_text: str, rows: list[dict[str, object]]) -> None:
    path = Path(path_text)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {len(rows)} rows to {path}")


async def start_chat_server(run_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    server = spawn_chat_server(run_dir, port)
    url = f"http://127.0.0.1:{port}/v1"
    async with httpx.AsyncClient(timeout=2) as client:
        for _ in range(240):
            if server.poll() is not None:
                raise RuntimeError(f"chat server exited; see {run_dir}/llm-server.log")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"{url}/models")).status_code == 200:
                    return server, url
            await asyncio.sleep(0.5)
    server.kill()
    raise TimeoutError("chat server not ready in 120 s")


def compare(timings: list[TurnTiming]) -> None:
    """Per turn (same level, session, round, question): fleet TTFA - in-process TTFA."""
    by_key = {(t.mode, t.level, t.session, t.round): t for t in timings}
    for level in sorted({t.level for t in timings if t.level}):
        diffs, same_reply = [], 0
        for (mode, lvl, session, rnd), fleet in by_key.items():
            if mode != "fleet" or lvl != level:
                continue
            local = by_key.get(("inprocess", lvl, session, rnd))
            if local is None or fleet.ttfa_s is None or local.ttfa_s is None:
                continue
            diffs.append((fleet.ttfa_s - local.ttfa_s) * 1000)
            same_reply += " ".join(fleet.reply.split()) == " ".join(local.reply.split())
        if diffs:
            print(
                f"sessions={level:3d}: fleet - in-process TTFA per turn, n={len(diffs)}: "
                f"median {statistics.median(diffs):+.0f} ms, "
                f"mean {statistics.fmean(diffs):+.0f} ms, "
                f"min {min(diffs):+.0f} ms, max {max(diffs):+.0f} ms; same reply text in "
                f"{same_reply}/{len(diffs)}"
            )


async def main_async(args: argparse.Namespace) -> None:
    timings: list[TurnTiming] = []
    modes = args.modes.split(",")
    if "inprocess" in modes or "fleet" in modes:
        questions = await synthesize_questions()
        server, url = await start_chat_server(ROOT / ".run" / "bench" / "overhead-chat")
        try:
            if "inprocess" in modes:
                timings += await run_inprocess(args, questions, url)
            if "fleet" in modes:
                timings += await run_fleet(args, questions, url)
        finally:
            server.terminate()
            server.wait(10)
        compare(timings)
        if args.csv and timings:
            write_rows(args.csv, [asdict(t) for t in timings])
    if "transport" in modes:
        rows = await run_transport(args)
        if args.transport_csv:
            write_rows(args.transport_csv, rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--modes", default="inprocess,fleet,transport")
    parser.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")], default=[1, 10])
    parser.add_argument("--rounds", type=int, default=3, help="turns per session per level")
    parser.add_argument("--samples", type=int, default=300, help="round trips per message kind")
    parser.add_argument("--csv", default="", help="per-turn timings")
    parser.add_argument("--transport-csv", default="", help="round-trip summary")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} at {time.strftime('%F %T')}", flush=True)
    asyncio.run(main_async(args))
    print(f"load average {os.getloadavg()[0]:.2f} at {time.strftime('%F %T')}", flush=True)


if __name__ == "__main__":
    main()
