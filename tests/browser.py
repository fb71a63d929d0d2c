"""Headless Chromium driven over the DevTools protocol, for browser end-to-end tests.

Chromium runs with a fake microphone (optionally fed from a WAV file) and permission prompts
auto-accepted, in a throwaway profile that is removed again on exit. Console messages and
uncaught exceptions of the page are collected in ``Browser.console`` and ``Browser.exceptions``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
import wave
from pathlib import Path
from typing import Any

import numpy as np
import websockets

from fleet.audio import FloatArray, float32_to_pcm16, resample

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> Path | None:
    """The first Chromium on PATH (Debian: chromium; Ubuntu: chromium-browser; or Chrome)."""
    for name in CHROMIUM_NAMES:
        if found := shutil.which(name):
            return Path(found)
    return None


FAKE_CAPTURE_RATE = 48000  # the rate Chromium's fake capture device handles best
COMMAND_TIMEOUT = 30.0  # seconds for one DevTools command


def write_wav(
    path: Path, samples: FloatArray, rate: int, out_rate: int = FAKE_CAPTURE_RATE
) -> Path:
    """Write float audio as a 16-bit PCM mono WAV at `out_rate` (resampled if needed)."""
    pcm = float32_to_pcm16(resample(np.asarray(samples, dtype=np.float32), rate, out_rate))
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(out_rate)
        out.writeframes(pcm)
    return path


class CdpError(RuntimeError):
    pass


class Browser:
    """One headless Chromium with one page, as an async context manager.

    ``fake_audio``: a WAV file played once as the microphone (then silence).
    ``log_path``: where Chromium's own stderr goes.
    """

    def __init__(
        self,
        *,
        fake_audio: Path | None = None,
        log_path: Path | None = None,
        window_size: tuple[int, int] = (1280, 900),
        startup_timeout: float = 30.0,
        chromium: Path | None = None,
    ) -> None:
        found = chromium or find_chromium()
        if found is None:
            raise FileNotFoundError(f"no Chromium on PATH (looked for {', '.join(CHROMIUM_NAMES)})")
        self.chromium = found
        self.fake_audio = fake_audio
        self.log_path = log_path
        self.window_size = window_size
        self.startup_timeout = startup_timeout
        self.console: list[str] = []  # "type: text" for every console.* call of the page
        self.exceptions: list[str] = []  # uncaught exceptions and unhandled rejections
        self._profile: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._ws: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 0

    def args(self, profile: Path) -> list[str]:
        width, height = self.window_size
        args = [
            str(self.chromium),
            "--headless=new",
            "--no-sandbox",  # Chromium refuses to run as root with its sandbox
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            f"--user-data-dir={profile}",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",  # Chromium picks a free port: see DevToolsActivePort
            f"--window-size={width},{height}",
            "--use-fake-device-for-media-stream",
            "--use-fake-ui-for-media-stream",
            "--autoplay-policy=no-user-gesture-required",
        ]
        if self.fake_audio is not None:
            args.append(f"--use-file-for-fake-audio-capture={self.fake_audio}%noloop")
        args.append("about:blank")
        return args

    async def __aenter__(self) -> Browser:
        self._profile = Path(tempfile.mkdtemp(prefix="vf-chromium-"))
        try:
            await self._launch()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _spawn(self) -> None:
        assert self._profile is not None
        stderr: Any = subprocess.DEVNULL
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            stderr = self.log_path.open("wb")
        try:
            self._process = subprocess.Popen(
                self.args(self._profile),
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                start_new_session=True,  # its own process group, so close() ends every child
            )
        finally:
            if stderr is not subprocess.DEVNULL:
                stderr.close()

    async def _launch(self) -> None:
        await asyncio.to_thread(self._spawn)
        ws_url = await self._page_websocket_url()
        self._ws = await websockets.connect(ws_url, max_size=64 * 1024 * 1024, ping_interval=None)
        self._reader = asyncio.create_task(self._read())
        for domain in ("Runtime", "Page"):
            await self.call(f"{domain}.enable")

    async def _page_websocket_url(self) -> str:
        assert self._profile is not None and self._process is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"chromium exited early with {self._process.returncode}")
            url = await asyncio.to_thread(_page_target, self._profile)
            if url is not None:
                return url
            await asyncio.sleep(0.1)
        raise TimeoutError(f"chromium's DevTools endpoint not up after {self.startup_timeout}s")

    async def _read(self) -> None:
        try:
            async for raw in self._ws:
                message = json.loads(raw)
                future = self._pending.pop(message.get("id", -1), None)
                if future is not None:
                    if not future.done():
                        future.set_result(message)
                else:
                    self._on_event(message.get("method", ""), message.get("params", {}))
        except websockets.ConnectionClosed:
            pass
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(CdpError("DevTools connection closed"))
            self._pending.clear()

    def _on_event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.consoleAPICalled":
            text = " ".join(
                str(arg.get("value", arg.get("description", arg.get("type"))))
                for arg in params.get("args", [])
            )
            self.console.append(f"{params.get('type')}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            description = details.get("exception", {}).get("description") or details.get("text")
            where = f"{details.get('url', '')}:{details.get('lineNumber', '?')}"
            self.exceptions.append(f"{description} at {where}")

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one DevTools command and return its result (raises CdpError on an error reply)."""
        if self._ws is None:
            raise CdpError("not connected")
        self._next_id += 1
        message_id = self._next_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[message_id] = future
        await self._ws.send(json.dumps({"id": message_id, "method": method, "params": params}))
        try:
            reply = await asyncio.wait_for(future, COMMAND_TIMEOUT)
        finally:
            self._pending.pop(message_id, None)
        if "error" in reply:
            raise CdpError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises are awaited)."""
        result = await self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise CdpError(
                f"{expression!r} threw: "
                f"{details.get('exception', {}).get('description') or details.get('text')}"
            )
        return result.get("result", {}).get("value")

    async def evaluate_json(self, expression: str) -> Any:
        """Evaluate `JSON.stringify(expression)` in the page and decode it here."""
        text = await self.evaluate(f"JSON.stringify({expression})")
        return None if text is None else json.loads(text)

    async def wait_for(self, expression: str, seconds: float = 30.0, every: float = 0.1) -> Any:
        """Poll a JavaScript expression until it is truthy; return its value."""
        deadline = time.monotonic() + seconds
        while True:
            with contextlib.suppress(CdpError):  # e.g. the page is between documents
                value = await self.evaluate(expression)
                if value:
                    return value
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{expression!r} still false after {seconds}s")
            await asyncio.sleep(every)

    async def navigate(self, url: str) -> None:
        result = await self.call("Page.navigate", url=url)
        if result.get("errorText"):
            raise CdpError(f"navigating to {url}: {result['errorText']}")

    async def screenshot(self, path: Path) -> Path:
        result = await self.call("Page.captureScreenshot", format="png")
        await asyncio.to_thread(_write_file, path, base64.b64decode(result["data"]))
        return path

    async def close(self) -> None:
        """Disconnect, end Chromium and all its children, and delete the profile directory."""
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.close(), 5)
            self._ws = None
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
            self._reader = None
        if self._process is not None:
            await asyncio.to_thread(_end_process_group, self._process)
            self._process = None
        if self._profile is not None:
            shutil.rmtree(self._profile, ignore_errors=True)
            self._profile = None


def _page_target(profile: Path) -> str | None:
    """The DevTools WebSocket URL of Chromium's page, once its endpoint is up."""
    try:
        port = int((profile / "DevToolsActivePort").read_text().splitlines()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as reply:
            targets = json.load(reply)
    except (OSError, ValueError, IndexError):  # not written yet / not listening yet
        return None
    for target in targets:
        if target.get("type") == "page" and target.get("webSocketDebuggerUrl"):
            return str(target["webSocketDebuggerUrl"])
    return None


def _write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _end_process_group(process: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM Chromium's process group (it was started in its own session), then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, grace)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(wait)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; make sure no child of the group outlives it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        return
