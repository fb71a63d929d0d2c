"""Load generator: N simulated people talk to a fleet at once, several turns each.

Each client behaves like a browser: it streams its microphone continuously at real-time pace
(speech, then silence while it listens), and waits for the reply to finish playing before it
speaks again. Per turn it records, from the end of the user's speech: time to the final
transcript, time to first audio (TTFA), time to the last audio; and the outcome:

- ``ok``: a final transcript, then the whole reply (audio_start .. audio_end) and no error;
- ``lost``: the user's speech never produced a final transcript (what the user said is gone);
- ``failed``: a final transcript came, but then an `error` event, or no reply audio in time.

Against a fleet that is already running:

    python -m benchmarks.loadgen --url ws://127.0.0.1:8000/ws/audio --levels 1,5,10 --turns 3

Or start a private fleet (`voicefleet up` as a subprocess, in its own namespace, on free ports,
with its own chat server) and, with ``--kill K``, SIGKILL a random worker of it every K seconds;
`voicefleet up` restarts dead children with backoff, as a deployment's supervisor would:

    python -m benchmarks.loadgen --start-fleet --stt 2 --llm 2 --tts 2 --levels 5 --turns 4 \
        --kill 15 --csv benchmarks/results/kill.csv

Writes one CSV row per turn and prints p50/p95 per concurrency level and turns per second.
Everything is bounded: each awaited event by ``--patience``, each level by ``--level-timeout``;
a fleet it started is stopped and its namespace (queues, exchanges, Redis keys) deleted on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import httpx
import numpy as np
import websockets

from fleet.audio import INPUT_SAMPLE_RATE, OUTPUT_SAMPLE_RATE, float32_to_pcm16, resample
from fleet.settings import Settings, get_settings
from voicefleet.client import FRAME_BYTES, FRAME_SECONDS, Received, SessionRefused, VoiceClient
from voicefleet.namespaces import consumer_counts, delete_namespace
from workers.tts.providers import create_synthesizer

ROOT = Path(__file__).resolve().parent.parent

QUESTIONS = (
    "What is the capital of France?",
    "Can you name a famous painter?",
    "How far away is the moon?",
)


# --- a private fleet -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ppid_and_cmdline(pid: int) -> tuple[int, str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    # Field 4 of stat, after the parenthesized command name (which may contain spaces).
    ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
    return ppid, cmdline.replace(b"\0", b" ").decode(errors="replace").strip()


def children_of(parent: int) -> dict[int, str]:
    """pid -> command line of the direct children of ``parent`` (read from /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        info = _ppid_and_cmdline(int(entry.name))
        if info is not None and info[0] == parent:
            found[int(entry.name)] = info[1]
    return found


@dataclass
class KillRecord:
    at_s: float
    pid: int
    worker: str


@dataclass
class PrivateFleet:
    """`voicefleet up` in a subprocess, with its own namespace, ports and (optionally) chat server.

    Its logs go to ``<run_dir>/.run/logs`` (the runner writes them under its working directory),
    the runner's own output to ``<run_dir>/runner.log``.
    """

    stt: int = 1
    llm: int = 1
    tts: int = 1
    gateways: int = 1
    llm_url: str = ""  # empty: start a chat server of our own on a free port
    env_overrides: dict[str, str] = field(default_factory=dict)
    namespace: str = field(default_factory=lambda: f"lg{uuid.uuid4().hex[:10]}")
    gateway_port: int = field(default_factory=free_port)
    run_dir: Path = Path()
    runner: subprocess.Popen[bytes] | None = None
    chat_server: subprocess.Popen[bytes] | None = None
    kills: list[KillRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.run_dir == Path():
            self.run_dir = ROOT / ".run" / "bench" / self.namespace

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.gateway_port}/ws/audio"

    @property
    def settings(self) -> Settings:
        return Settings(namespace=self.namespace)

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "VF_NAMESPACE": self.namespace,
            "VF_GATEWAY_PORT": str(self.gateway_port),
            "VF_LLM_URL": self.llm_url,
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
            **self.env_overrides,
        }

    async def start(self, ready_within_s: float = 240.0) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + ready_within_s
        if not self.llm_url:
            port = free_port()
            self.llm_url = f"http://127.0.0.1:{port}/v1"
            self.chat_server = self._spawn(
                ["llm-server", "--port", str(port)], self.run_dir / "llm-server.log"
            )
            await self._wait_http(f"{self.llm_url}/models", deadline, self.chat_server)
        self.runner = self._spawn(
            [
                "up",
                *("--stt", str(self.stt), "--llm", str(self.llm), "--tts", str(self.tts)),
                *("--gateways", str(self.gateways)),
            ],
            self.run_dir / "runner.log",
        )
        await self._wait_http(f"http://127.0.0.1:{self.gateway_port}/readyz", deadline, self.runner)
        # The gateway is ready before the workers have loaded their models.
        want = {"stt": self.stt, "llm": self.llm, "tts": self.tts}
        while True:
            self._check(self.runner)
            counts = await consumer_counts(self.settings)
            if all(counts[k] >= n for k, n in want.items()):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"workers not consuming: {counts}; see {self.run_dir}")
            await asyncio.sleep(0.5)

    def _spawn(self, args: list[str], log_path: Path) -> subprocess.Popen[bytes]:
        with log_path.open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "voicefleet.cli", *args],
                env=self._env(),
                cwd=self.run_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _check(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is not None:
            raise RuntimeError(
                f"{process.args!r} exited with {process.returncode}; see logs in {self.run_dir}"
            )

    async def _wait_http(self, url: str, deadline: float, process: subprocess.Popen[bytes]) -> None:
        async with httpx.AsyncClient(timeout=2.0) as client:
            while time.monotonic() < deadline:
                self._check(process)
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(url)).status_code == 200:
                        return
                await asyncio.sleep(0.5)
        raise TimeoutError(f"{url} not ready; see logs in {self.run_dir}")

    def worker_pids(self, kinds: tuple[str, ...] = ("stt", "llm", "tts")) -> dict[int, str]:
        """pid -> "worker <kind>" for the runner's live worker children."""
        if self.runner is None:
            return {}
        found = {}
        for pid, cmdline in children_of(self.runner.pid).items():
            match = re.search(r"voicefleet\.cli worker (\w+)", cmdline)
            if match and match.group(1) in kinds:
                found[pid] = f"worker {match.group(1)}"
        return found

    def kill_random_worker(self, rng: random.Random, kinds: tuple[str, ...], at_s: float) -> None:
        pids = self.worker_pids(kinds)
        if not pids:
            print(f"  [{at_s:6.1f}s] kill: no live worker to kill", flush=True)
            return
        pid = rng.choice(sorted(pids))
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            self.kills.append(KillRecord(at_s, pid, pids[pid]))
            print(f"  [{at_s:6.1f}s] SIGKILL {pids[pid]} pid {pid}", flush=True)

    def restarts(self) -> list[str]:
        """The runner's restart lines (one per child it found dead)."""
        try:
            text = (self.run_dir / "runner.log").read_text(errors="replace")
        except OSError:
            return []
        return re.findall(r"voicefleet up: (\S+ exited with code \S+ after \d+ s)", text)

    async def speculations(self) -> str:
        """The gateway's count of speculative replies used and wasted (vf_speculations_total)."""
        async with httpx.AsyncClient(timeout=10) as http:
            text = (await http.get(f"http://127.0.0.1:{self.gateway_port}/metrics")).text
        counts = dict(re.findall(r'^vf_speculations_total\{outcome="(\w+)"\} (\S+)$', text, re.M))
        used, wasted = (int(float(counts.get(k, "0"))) for k in ("used", "wasted"))
        return f"speculations (first gateway) used={used} wasted={wasted}"

    async def stop(self) -> None:
        """SIGTERM the runner (it drains its children), kill leftovers, delete the namespace."""
        leftovers: dict[int, str] = {}
        if self.runner is not None:
            leftovers = children_of(self.runner.pid)
            if self.runner.poll() is None:
                self.runner.send_signal(signal.SIGTERM)
                try:
                    await asyncio.to_thread(self.runner.wait, 45)
                except subprocess.TimeoutExpired:
                    print("  runner did not stop in 45 s; killing it", flush=True)
                    self.runner.kill()
                    self.runner.wait()
            for pid in leftovers:  # children run in their own sessions: own process groups
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
        if self.chat_server is not None and self.chat_server.poll() is None:
            self.chat_server.terminate()
            try:
                await asyncio.to_thread(self.chat_server.wait, 10)
            except subprocess.TimeoutExpired:
                self.chat_server.kill()
                self.chat_server.wait()
        await delete_namespace(self.settings)


# --- simulated people ----------------------------------------------------------------------


@dataclass
class TurnRecord:
    level: int
    client: int
    turn: int
    outcome: str  # ok | lost | failed
    ok: bool
    error: str
    started_s: float  # end of speech, seconds since the run started (to line up with kills)
    final_s: float | None
    ttfa_s: float | None
    last_audio_s: float | None
    reply_audio_s: float
    stall_s: float = 0.0  # how long a client playing from the first audio at real time starves
    question: str = ""
    transcript: str = ""


def playback_stall(arrivals: list[tuple[float, float]]) -> float:
    """Seconds a player starting at the first chunk's arrival waits for audio not yet there.

    ``arrivals`` are (arrival time, seconds of audio) per chunk, in order. The player plays at
    real time and pauses whenever its buffer runs dry, until the next chunk arrives.
    """
    stalled = 0.0
    played_until: float | None = None
    for arrived, seconds in arrivals:
        if played_until is None:
            played_until = arrived
        elif arrived > played_until:
            stalled += arrived - played_until
            played_until = arrived
        played_until += seconds
    return stalled


async def synthesize_questions() -> list[bytes]:
    """The questions spoken by the fleet's own TTS provider, as 16 kHz PCM16."""
    synthesizer = await asyncio.to_thread(create_synthesizer, get_settings())
    spoken = []
    for text in QUESTIONS:
        pcm = b"".join([chunk async for chunk in synthesizer.stream(text, "af_heart")])
        audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
        spoken.append(float32_to_pcm16(resample(audio, synthesizer.sample_rate, INPUT_SAMPLE_RATE)))
    return spoken


class TurnError(Exception):
    """The fleet answered the turn with an error event."""


async def first_of(
    client: VoiceClient, kinds: tuple[str, ...], after: int, patience: float
) -> Received:
    waits = [asyncio.create_task(client.wait_for(k, after=after, timeout=patience)) for k in kinds]
    try:
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()
    results = [t.result() for t in done if not t.cancelled() and t.exception() is None]
    if not results:
        raise TimeoutError
    return min(results, key=lambda r: r.at)


class Microphone:
    """Streams queued speech, and silence whenever there is none, at real-time pace."""

    def __init__(self, client: VoiceClient) -> None:
        self.client = client
        self._speech = bytearray()
        self.speech_ended = asyncio.Event()
        self.speech_ended_at = 0.0

    def say(self, pcm: bytes) -> None:
        self.speech_ended.clear()
        self._speech.extend(pcm)

    async def run(self) -> None:
        next_at = time.monotonic()
        while True:
            if self._speech:
                frame = bytes(self._speech[:FRAME_BYTES])
                del self._speech[:FRAME_BYTES]
                if not self._speech:
                    self.speech_ended_at = time.monotonic()
                    self.speech_ended.set()
            else:
                frame = bytes(FRAME_BYTES)
            await self.client.send_bytes(frame)
            next_at += FRAME_SECONDS
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))


def _turn_errors(client: VoiceClient, after: int) -> list[str]:
    return [
        str(r.data.get("code"))
        for r in client.received[after:]
        if r.kind == "error" and isinstance(r.data, dict)
    ]


async def simulate_person(
    url: str,
    level: int,
    index: int,
    turns: int,
    questions: list[bytes],
    patience: float,
    run_started: float,
    records: list[TurnRecord],
) -> None:
    """Talk for ``turns`` turns; appends one record per turn to ``records`` as it goes."""
    client = VoiceClient(url)
    try:
        await client.connect()
    except (OSError, TimeoutError, websockets.WebSocketException) as exc:
        reason = exc.code if isinstance(exc, SessionRefused) else f"connect: {exc!r}"
        records.append(
            TurnRecord(level, index, 0, "failed", False, reason, 0.0, None, None, None, 0.0)
        )
        return
    microphone = Microphone(client)
    streaming = asyncio.create_task(microphone.run())
    try:
        for turn in range(turns):
            await asyncio.sleep(0.3 + 0.2 * index % 1.0)
            if streaming.done():
                raise ConnectionError("microphone stopped: connection closed")
            mark = len(client.received)
            number = (index + turn) % len(questions)
            microphone.say(questions[number])
            async with asyncio.timeout(60):
                await microphone.speech_ended.wait()
            ended = microphone.speech_ended_at
            record = TurnRecord(
                level, index, turn, "failed", False, "", ended - run_started, None, None, None, 0.0
            )
            record.question = QUESTIONS[number] if number < len(QUESTIONS) else ""
            records.append(record)
            phase = "no_final"
            try:
                final = await client.wait_for(
                    "transcript", final=True, after=mark, timeout=patience
                )
                record.final_s = final.at - ended
                assert isinstance(final.data, dict)
                record.transcript = str(final.data.get("text", ""))
                phase = "no_audio_start"
                start = await first_of(
                    client, ("audio_start", "error"), client.index_of(final), patience
                )
                if start.kind == "error":
                    raise TurnError(
                        str(start.data.get("code") if isinstance(start.data, dict) else "")
                    )
                assert isinstance(start.data, dict)
                phase = "no_audio"
                first = await client.wait_for(
                    "audio", after=client.index_of(start), timeout=patience
                )
                record.ttfa_s = first.at - ended
                phase = "no_audio_end"
                end = await client.wait_for(
                    "audio_end",
                    after=client.index_of(start),
                    timeout=patience,
                    turn=start.data["turn"],
                )
                record.last_audio_s = end.at - ended
                audio_bytes = sum(
                    len(r.data)
                    for r in client.received[client.index_of(start) : client.index_of(end)]
                    if isinstance(r.data, bytes)
                )
                record.reply_audio_s = audio_bytes / (OUTPUT_SAMPLE_RATE * 2)
                record.stall_s = playback_stall(
                    [
                        (r.at, len(r.data) / (OUTPUT_SAMPLE_RATE * 2))
                        for r in client.received[client.index_of(start) : client.index_of(end)]
                        if isinstance(r.data, bytes)
                    ]
                )
                errors = _turn_errors(client, mark)
                record.ok = not errors
                record.outcome = "ok" if record.ok else "failed"
                record.error = ";".join(errors)
                # Listen to the reply before speaking again, as a person would.
                await asyncio.sleep(max(0.0, first.at + record.reply_audio_s - time.monotonic()))
            except TimeoutError:
                record.error = phase
                record.outcome = "lost" if phase == "no_final" else "failed"
            except TurnError as exc:
                record.error = f"error:{exc}"
            if client.close_code is not None:
                raise ConnectionError(f"closed by the gateway ({client.close_code})")
    except (ConnectionError, websockets.WebSocketException) as exc:
        records.append(
            TurnRecord(
                level,
                index,
                len(records),
                "failed",
                False,
                f"connection: {exc}",
                0.0,
                None,
                None,
                None,
                0.0,
            )
        )
    finally:
        streaming.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), 10)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def summarize(level: int, records: list[TurnRecord], elapsed: float) -> str:
    ok = [r for r in records if r.ok]
    lost = sum(r.outcome == "lost" for r in records)
    failed = sum(r.outcome == "failed" for r in records)
    ttfa = [r.ttfa_s for r in ok if r.ttfa_s is not None]
    final = [r.final_s for r in ok if r.final_s is not None]
    last = [r.last_audio_s for r in ok if r.last_audio_s is not None]
    reply_s = sum(r.reply_audio_s for r in ok)
    stall_share = sum(r.stall_s for r in ok) / reply_s if reply_s else float("nan")
    return (
        f"sessions={level:3d} turns={len(records):4d} ok={len(ok):4d} lost={lost:3d} "
        f"failed={failed:3d} turns/s={len(ok) / elapsed:5.2f} | "
        f"final p50={percentile(final, 50):.2f}s p95={percentile(final, 95):.2f}s | "
        f"TTFA p50={percentile(ttfa, 50):.2f}s p95={percentile(ttfa, 95):.2f}s | "
        f"last audio p50={percentile(last, 50):.2f}s p95={percentile(last, 95):.2f}s | "
        f"stall {stall_share:.1%} of reply time"
    )


async def run_level(
    url: str,
    level: int,
    turns: int,
    questions: list[bytes],
    patience: float,
    level_timeout: float,
    run_started: float,
) -> list[TurnRecord]:
    started = time.monotonic()
    records: list[TurnRecord] = []
    people = [
        asyncio.create_task(
            simulate_person(url, level, i, turns, questions, patience, run_started, records)
        )
        for i in range(level)
    ]
    _, pending = await asyncio.wait(people, timeout=level_timeout)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=15)
        print(f"  level {level}: stopped {len(pending)} clients at --level-timeout", flush=True)
    elapsed = time.monotonic() - started
    print(summarize(level, records, elapsed), flush=True)
    return records


async def killer(
    fleet: PrivateFleet, every: float, kinds: tuple[str, ...], seed: int, run_started: float
) -> None:
    rng = random.Random(seed)
    while True:
        await asyncio.sleep(every)
        fleet.kill_random_worker(rng, kinds, time.monotonic() - run_started)


async def run_levels(args: argparse.Namespace) -> tuple[list[TurnRecord], PrivateFleet | None]:
    questions = await synthesize_questions()
    if args.cut < 1.0:
        # Whole PCM16 samples: a user who trails off mid-sentence.
        questions = [q[: int(len(q) * args.cut) // 2 * 2] for q in questions]
    fleet: PrivateFleet | None = None
    records: list[TurnRecord] = []
    kill_task: asyncio.Task[None] | None = None
    try:
        url = args.url
        if args.start_fleet:
            fleet = PrivateFleet(
                args.stt, args.llm, args.tts, args.gateways, args.llm_url,
                {"VF_LLM_TEMPERATURE": str(args.temperature)} if args.temperature >= 0 else {},
            )  # fmt: skip
            print(f"starting a fleet in namespace {fleet.namespace}, logs in {fleet.run_dir}")
            started = time.monotonic()
            await fleet.start()
            url = fleet.ws_url
            print(f"fleet up in {time.monotonic() - started:.0f} s at {url}", flush=True)
        run_started = time.monotonic()
        if args.kill > 0:
            if fleet is None:
                raise SystemExit("--kill needs --start-fleet (it kills the fleet's workers)")
            kill_task = asyncio.create_task(
                killer(fleet, args.kill, tuple(args.kill_kinds.split(",")), args.seed, run_started)
            )
        for level in args.levels:
            records += await run_level(
                url, level, args.turns, questions, args.patience, args.level_timeout, run_started
            )
            if fleet is not None:
                print(f"  so far: {await fleet.speculations()}", flush=True)
    finally:
        if kill_task is not None:
            kill_task.cancel()
        if fleet is not None:
            print("stopping the fleet and deleting its namespace", flush=True)
            await fleet.stop()
    return records, fleet


def write_csv(records: list[TurnRecord], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[f.name for f in fields(TurnRecord)])
        writer.writeheader()
        writer.writerows(asdict(r) for r in records)
    print(f"wrote {len(records)} turns to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--url", default="ws://127.0.0.1:8000/ws/audio")
    parser.add_argument(
        "--levels", type=lambda s: [int(x) for x in s.split(",")], default=[1], help="e.g. 1,5,10"
    )
    parser.add_argument("--turns", type=int, default=3, help="turns per simulated person")
    parser.add_argument("--patience", type=float, default=60.0, help="per awaited event (s)")
    parser.add_argument("--level-timeout", type=float, default=900.0, help="per level (s)")
    parser.add_argument("--csv", default="", help="write per-turn records here")
    parser.add_argument(
        "--cut",
        type=float,
        default=1.0,
        help="speak only this share of each question (a user who trails off mid-sentence, where\n"
        "Smart Turn mostly expects more and the turn ends at VF_STT_SILENCE_TIMEOUT_S)",
    )
    fleet = parser.add_argument_group("a private fleet (--start-fleet)")
    fleet.add_argument("--start-fleet", action="store_true", help="run `voicefleet up` itself")
    fleet.add_argument("--stt", type=int, default=1)
    fleet.add_argument("--llm", type=int, default=1)
    fleet.add_argument("--tts", type=int, default=1)
    fleet.add_argument("--gateways", type=int, default=1)
    fleet.add_argument("--llm-url", default="", help="chat server; default: start one")
    fleet.add_argument(
        "--temperature", type=float, default=-1.0, help="VF_LLM_TEMPERATURE (default: setting)"
    )
    fleet.add_argument("--kill", type=float, default=0.0, help="SIGKILL a random worker every K s")
    fleet.add_argument("--kill-kinds", default="stt,llm,tts", help="worker kinds to kill")
    fleet.add_argument("--seed", type=int, default=1, help="of the choice of victims")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} at {time.strftime('%F %T')}", flush=True)
    records, private = asyncio.run(run_levels(args))
    if args.csv:
        write_csv(records, Path(args.csv))
    failures = sorted({r.error for r in records if not r.ok})
    if failures:
        print("failed/lost turns:", failures)
    if private is not None and args.kill > 0:
        lost = sum(r.outcome == "lost" for r in records)
        failed = sum(r.outcome == "failed" for r in records)
        print(
            f"kills: {len(private.kills)} "
            f"({', '.join(f'{k.worker}@{k.at_s:.0f}s' for k in private.kills)}); "
            f"turns lost {lost}, failed {failed}, ok {sum(r.ok for r in records)}"
        )
        print("runner restarts:", private.restarts())
    print(f"load average {os.getloadavg()[0]:.2f} at {time.strftime('%F %T')}", flush=True)


if __name__ == "__main__":
    main()
