"""OpenAICompatibleChat against a real llama.cpp server that this module starts and stops."""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing

import httpx
import pytest

from fleet.model_paths import model_paths
from fleet.settings import Settings
from workers.llm_bridge.chat import ChatError, OpenAICompatibleChat

SERVER_START_TIMEOUT_S = 60.0
PACE_PIECES = 20  # pieces of a long reply read to learn how fast this server generates
SYSTEM = {"role": "system", "content": "You are a friendly voice assistant."}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def llm_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.fail("llama-cpp-python is not installed (pip install 'voicefleet[llm-server]')")
    gguf = model_paths(Settings()).chat_gguf
    if not gguf.is_file():
        pytest.fail(f"chat model missing at {gguf}; run `voicefleet models` first")
    port = _free_port()
    # A file, not a pipe: the model loader logs more than a pipe buffer holds, and nobody
    # reads the pipe while we wait, so the server would block on its own log.
    log_path = tmp_path_factory.mktemp("llama") / "server.log"
    log = log_path.open("wb")
    # --interrupt_requests False: by default the server cuts the stream it is generating as
    # soon as another request waits, which would make the back-to-back requests below flaky.
    server = subprocess.Popen(
        [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(gguf), "--model_alias", "smollm2",
            "--host", "127.0.0.1", "--port", str(port),
            "--n_ctx", "2048", "--n_threads", "2", "--interrupt_requests", "False",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if server.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                pytest.fail(f"llama.cpp server exited with {server.returncode}: {tail}")
            try:
                if httpx.get(f"{url}/models", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama.cpp server not ready after {SERVER_START_TIMEOUT_S} s")
            time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


@pytest.fixture
async def chat(llm_url: str) -> AsyncIterator[OpenAICompatibleChat]:
    async with OpenAICompatibleChat(llm_url, "smollm2", "none", timeout=30.0) as model:
        yield model


async def test_stream_yields_deltas_of_a_reply(chat: OpenAICompatibleChat) -> None:
    first_token: list[float] = []
    messages = [SYSTEM, {"role": "user", "content": "Tell me about Paris in two sentences."}]
    deltas = [
        delta
        async for delta in chat.stream(
            messages, max_tokens=40, temperature=0.0, on_first_token=first_token.append
        )
    ]
    assert len(deltas) >= 5
    assert all(deltas)
    assert "".join(deltas).strip()
    assert len(first_token) == 1
    assert first_token[0] > 0.0


async def test_closing_early_frees_the_server(chat: OpenAICompatibleChat) -> None:
    # Uninterrupted, this reply runs for a thousand tokens. The server generates one reply at a
    # time, so the next request is answered before the rest of this one could have been
    # generated only if closing the stream really stopped it. The comparison is with this
    # server's own pace, measured on the first pieces, not with a fixed time.
    counting = [{"role": "user", "content": "Count from 1 to 500, separated by commas."}]
    read = 0
    async with aclosing(chat.stream(counting, max_tokens=1000, temperature=0.0)) as stream:
        async for _ in stream:
            if read == 0:
                first_at = time.perf_counter()
            read += 1
            if read == PACE_PIECES:
                break
    seconds_per_piece = (time.perf_counter() - first_at) / (PACE_PIECES - 1)
    rest_of_it_s = (1000 - PACE_PIECES) * seconds_per_piece

    started = time.perf_counter()
    hello = [SYSTEM, {"role": "user", "content": "Say hello."}]
    async with aclosing(chat.stream(hello, max_tokens=5, temperature=0.0)) as stream:
        assert [delta async for delta in stream]
    answered_s = time.perf_counter() - started
    assert answered_s < rest_of_it_s / 4, (answered_s, rest_of_it_s)


async def test_unreachable_server_raises_chat_error_without_waiting_out_the_timeout() -> None:
    url = f"http://127.0.0.1:{_free_port()}/v1"
    # A refused connection is reported as soon as it is refused, not after the request timeout.
    async with OpenAICompatibleChat(url, "smollm2", "none", timeout=3600.0) as model:
        with pytest.raises(ChatError, match="unreachable") as caught:
            async with asyncio.timeout(60):
                async for _ in model.stream([SYSTEM], max_tokens=5, temperature=0.0):
                    pass
    assert caught.value.status is None


async def test_http_error_carries_the_status(chat: OpenAICompatibleChat) -> None:
    with pytest.raises(ChatError, match="HTTP 500") as caught:
        async for _ in chat.stream(
            [{"role": "developer", "content": "hi"}], max_tokens=5, temperature=0.0
        ):
            pass
    assert caught.value.status == 500
