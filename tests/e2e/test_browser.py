"""The browser client against the real fleet: headless Chromium with a fake microphone.

The microphone plays a WAV of Kokoro asking a question; the page must show what the user said and
receive the spoken reply. A screenshot of the finished turn is kept in artifacts/browser/.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.browser import CHROMIUM, Browser, CdpError, write_wav
from tests.fleet_processes import ARTIFACTS, Fleet
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
    for turn in snapshot["turns"]:
        done = turn["audioEndAt"] is not None and f"audio_end:{turn['turn']}" in ended
        if turn["audioBytes"] > 0 and done:
            return turn
    return None


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is not installed")
async def test_browser_shows_transcript_and_plays_reply(fleet: Fleet, tmp_path: Path) -> None:
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
            # Let the last DOM updates (turn meta, stats) render before the picture is taken.
            await asyncio.sleep(0.5)
            page_text = await browser.evaluate("document.body.innerText") or ""
            events = await browser.evaluate_json("voicefleet.events")
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

    print(
        f"\nbrowser turn: transcript={transcript!r} reply={turn['assistantText']!r} "
        f"ttfaMs={ttfa} audio={turn['audioBytes'] / 2 / REPLY_RATE:.1f}s "
        f"frames={turn['audioFrames']} elapsed={elapsed:.1f}s screenshot={SCREENSHOT}\n"
        f"console: {browser.console}"
    )
