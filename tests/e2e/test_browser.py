"""The browser client against the real fleet: headless Chromium with a fake microphone.

The microphone plays a WAV of Kokoro asking a question; the page must show what the user said and
receive the spoken reply. A screenshot of the finished turn is kept in artifacts/browser/.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fleet.engines import KOKORO_VOICES
from tests.browser import CHROMIUM_NAMES, Browser, CdpError, find_chromium, write_wav
from tests.fleet_processes import ARTIFACTS, Fleet
from tests.prerequisites import require
from tests.relay import Relay
from tests.speech import RATE, silence, speech

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.timeout(600)]

QUESTION = "What is the capital of France?"
TURN_TIMEOUT = 90.0
REPLY_RATE = 24000
SCREENSHOT = ARTIFACTS / "browser" / "voice-turn.png"

# What the test needs from window.voicefleet on each poll (events are only read on failure).
SNAPSHOT = (
    "window.voicefleet && {state: voicefleet.state, sessionId: voicefleet.sessionId, "
    "transcripts: voicefleet.transcripts, turns: voicefleet.turns, "
    "errors: voicefleet.errors, closes: voicefleet.closes, sent: voicefleet.sent, "
    "eventTypes: voicefleet.events.map((e) => e.type + (e.turn === undefined ? '' : ':' + e.turn))}"
)


def normalized(text: str) -> str:
    return " ".join(text.split()).casefold()


def finished_turn(snapshot: dict[str, Any]) -> dict[str, Any] | None:
    """The first turn that answered a final transcript with audio, through to audio_end."""
    if not any(t.get("final") and t.get("text") for t in snapshot["transcripts"]):
        return None
    ended = {e for e in snapshot["eventTypes"] if e.startswith("audio_end:")}
    turns: list[dict[str, Any]] = snapshot["turns"]
    for turn in turns:
        done = turn["audioEndAt"] is not None and f"audio_end:{turn['turn']}" in ended
        if turn["audioBytes"] > 0 and done:
            return turn
    return None


def require_chromium() -> None:
    missing = f"no Chromium on PATH (looked for {', '.join(CHROMIUM_NAMES)})"
    require("browser", None if find_chromium() else missing)


async def test_browser_shows_transcript_and_plays_reply(fleet: Fleet, tmp_path: Path) -> None:
    require_chromium()
    wav = write_wav(
        tmp_path / "question.wav",
        np.concatenate([silence(0.5), speech(QUESTION), silence(4.0)]),
        RATE,
    )
    started = time.monotonic()
    snapshot: dict[str, Any] = {}
    turn: dict[str, Any] | None = None
    page_text = ""
    events: Any = None
    provider_line = ""
    voices: list[str] = []
    browser = Browser(fake_audio=wav, log_path=ARTIFACTS / "browser" / "chromium.log")

    def evidence(message: str) -> str:
        return (
            f"{message}\n"
            f"console: {json.dumps(browser.console, indent=1)}\n"
            f"exceptions: {json.dumps(browser.exceptions, indent=1)}\n"
            f"window.voicefleet (summary): {json.dumps(snapshot, indent=1)[:6000]}\n"
            f"window.voicefleet.events: {json.dumps(events)[:8000]}\n"
            f"page text: {page_text!r}\n"
            f"fleet logs:\n{fleet.logs()}"
        )

    async with browser:
        try:
            await browser.navigate(f"{fleet.http_url}/?autostart=1&new=1")
            await browser.wait_for("window.voicefleet !== undefined", seconds=15)
            deadline = time.monotonic() + TURN_TIMEOUT
            while time.monotonic() < deadline:
                snapshot = await browser.evaluate_json(SNAPSHOT)
                if (turn := finished_turn(snapshot)) is not None:
                    break
                if snapshot["state"] == "error" or browser.exceptions:
                    break
                await asyncio.sleep(0.25)
            if turn is not None:
                # The picture is taken once the page shows the finished turn's figures.
                await browser.wait_for("document.body.innerText.includes('TTFA')", seconds=10)
            page_text = await browser.evaluate("document.body.innerText") or ""
            events = await browser.evaluate_json("voicefleet.events")
            # What the fleet speaks with, as GET /tts/providers said at page load.
            provider_line = await browser.wait_for(
                "voicefleet.tts && voicefleet.tts.workers.length"
                " && document.getElementById('tts-provider').textContent",
                seconds=10,
            )
            voices = await browser.evaluate_json(
                "[...document.getElementById('voice').options].map((o) => o.value)"
            )
            await browser.screenshot(SCREENSHOT)
        except (CdpError, TimeoutError) as exc:
            pytest.fail(evidence(f"driving the page failed: {exc!r}"))
    elapsed = time.monotonic() - started

    assert turn is not None, evidence(f"no finished reply turn within {TURN_TIMEOUT:.0f}s")
    finals = [t["text"] for t in snapshot["transcripts"] if t.get("final") and t.get("text")]
    transcript = finals[0]
    words = set(re.findall(r"[a-z]+", transcript.lower()))
    assert {"capital", "france"} <= words, evidence(f"transcript {transcript!r}")
    assert normalized(transcript) in normalized(page_text), evidence(
        f"transcript {transcript!r} not shown on the page"
    )
    assert turn["userText"] == transcript, evidence("the reply is not attached to the question")
    assert turn["audioBytes"] > REPLY_RATE, evidence(  # > 0.5 s of 24 kHz PCM16
        f"only {turn['audioBytes']} bytes of reply audio"
    )
    assert not turn["cancelled"], evidence("the reply was cancelled")
    assert turn["assistantText"].strip(), evidence("no assistant text")
    error_events = [e for e in events or [] if e.get("type") == "error"]
    assert not error_events and not snapshot["errors"], evidence("the server sent errors")
    ttfa = turn["ttfaMs"]
    assert isinstance(ttfa, int | float) and ttfa > 0, evidence(f"ttfaMs {ttfa!r}")
    assert "TTFA" in page_text, evidence("TTFA not shown on the page")
    problems = [c for c in browser.console if c.split(":", 1)[0] in ("error", "assert")]
    assert not browser.exceptions and not problems, evidence("JavaScript errors on the page")
    # The page shows the provider the TTS worker speaks with (its own Kokoro), its version and
    # health, and offers the voices it has.
    kokoro = importlib.metadata.version("kokoro-onnx")
    assert provider_line == f"Voice: kokoro {kokoro} (local) · ok", evidence(provider_line)
    assert voices == list(KOKORO_VOICES), evidence(f"voice picker: {voices}")

    print(
        f"\nbrowser turn: transcript={transcript!r} reply={turn['assistantText']!r} "
        f"ttfaMs={ttfa} audio={turn['audioBytes'] / 2 / REPLY_RATE:.1f}s "
        f"frames={turn['audioFrames']} elapsed={elapsed:.1f}s screenshot={SCREENSHOT}\n"
        f"console: {browser.console}"
    )


async def test_the_page_reconnects_by_itself_and_resumes_its_conversation(
    fleet: Fleet, tmp_path: Path
) -> None:
    """Behind a load balancer (a relay) in front of two gateways, the page's gateway is stopped
    (SIGTERM: it closes with 1012); with nobody pressing anything, the page connects again,
    reaches the other gateway and resumes the same conversation."""
    require_chromium()
    wav = write_wav(tmp_path / "quiet.wav", silence(1.0), RATE)
    first_gateway = fleet.processes["gateway-1"]
    with fleet.extra_gateway("gateway-other") as other_url:
        other_port = int(other_url.split(":")[2].split("/")[0])
        balancer = Relay("127.0.0.1", fleet.gateway_ports[0])
        balancer.start()
        browser = Browser(fake_audio=wav, log_path=ARTIFACTS / "browser" / "chromium-reconnect.log")
        try:
            async with browser:
                await browser.navigate(f"http://127.0.0.1:{balancer.port}/?autostart=1&new=1")
                session_id = await browser.wait_for(
                    "window.voicefleet && voicefleet.state === 'ready' && voicefleet.sessionId",
                    seconds=30,
                )
                balancer.upstream = ("127.0.0.1", other_port)
                await asyncio.to_thread(first_gateway.stop)
                resumed = await browser.wait_for(
                    "voicefleet.closes.length > 0 && voicefleet.state === 'ready' && "
                    "voicefleet.resumed && JSON.stringify(voicefleet.closes.map((c) => c.code))",
                    seconds=60,
                )
                assert json.loads(resumed)[0] == 1012, resumed
                assert await browser.evaluate("voicefleet.sessionId") == session_id
        finally:
            balancer.stop()
            await asyncio.to_thread(fleet.restore)
