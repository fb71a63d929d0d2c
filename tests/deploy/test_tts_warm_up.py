"""A TTS worker is ready only once it has spoken: synthesis that fails on first use fails at start.

Kokoro's phonemizer loads espeak-ng from a copy it writes to the temporary directory, so a worker
whose /tmp does not allow executables (a tmpfs mounted ``noexec``, Docker's default for
``--tmpfs``) loads its models, consumes, and then fails every sentence: the user hears nothing.
The worker synthesizes one sentence before it takes jobs, so such a worker exits at start with
``tts_warm_up_failed`` and is never ready. Run here in a private mount namespace (``unshare -m``,
needs root) with TMPDIR on a tmpfs of its own, once ``noexec`` and once not, on the shared broker
and Redis under a namespace of its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fleet.settings import Settings
from tests.fleet_processes import free_port
from voicefleet.namespaces import delete_namespace

REPO = Path(__file__).resolve().parents[2]
START_S = 120.0  # model loading on a busy 2-core machine, with room to spare


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=3) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start_tts_worker(tmp: Path, mount_options: str, namespace: str, log: Path) -> tuple[str, str]:
    """Start `voicefleet worker tts` with TMPDIR on a fresh tmpfs mounted with `mount_options`;
    return what happened first ("ready" or "exited <code>") and its log."""
    assert os.geteuid() == 0, "this test needs root for a mount namespace (CI runs as root)"
    port = free_port()
    tmp.mkdir()
    script = (
        f"mount -t tmpfs -o {mount_options},size=64m tmpfs {shlex.quote(str(tmp))}"
        f" && exec {shlex.quote(sys.executable)} -m voicefleet.cli worker tts"
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "TMPDIR": str(tmp),
        "VF_NAMESPACE": namespace,
        "VF_HEALTH_PORT": str(port),
        "VF_METRICS_PORT": "0",
        "VF_LOG_JSON": "true",
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            code = process.poll()
            if code is not None:
                return f"exited {code}", log.read_text()
            if _ready(port):
                return "ready", log.read_text()
            time.sleep(0.5)
        return "neither", log.read_text()
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _events(log: str) -> list[str]:
    found = []
    for line in log.splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict):
            found.append(str(item.get("event")))
    return found


@pytest.fixture
async def namespace(settings: Settings) -> AsyncIterator[str]:
    try:
        yield settings.namespace
    finally:
        await delete_namespace(settings)


async def test_tts_worker_on_a_noexec_tmp_fails_at_start_and_is_never_ready(
    tmp_path: Path, namespace: str
) -> None:
    outcome, log = await asyncio.to_thread(
        start_tts_worker, tmp_path / "noexec", "noexec", namespace, tmp_path / "noexec.log"
    )
    assert outcome == "exited 1", log
    assert "tts_warm_up_failed" in _events(log), log
    assert "failed to map segment" in log, log  # espeak-ng's copy could not be loaded


async def test_tts_worker_on_an_exec_tmp_speaks_its_warm_up_and_gets_ready(
    tmp_path: Path, namespace: str
) -> None:
    outcome, log = await asyncio.to_thread(
        start_tts_worker, tmp_path / "exec", "exec", namespace, tmp_path / "exec.log"
    )
    assert outcome == "ready", log
    assert "tts_warmed_up" in _events(log), log
