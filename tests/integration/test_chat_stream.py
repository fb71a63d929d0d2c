"""OpenAICompatibleChat against the real local chat server (`voicefleet llm-server`, llama.cpp),
which this module starts and stops."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing

import httpx
import pytest

from tests.relay import Relay
from tests.role_processes import local_chat_server
from workers.llm_bridge.chat import ChatError, OpenAICompatibleChat

PACE_PIECES = 20  # pieces of a long reply read to learn how fast this server generates
SYSTEM = {"role": "system", "content": "You are a friendly voice assistant."}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def llm_url() -> Iterator[str]:
    """The local chat server as deployed: several slots, generating replies together."""
    with local_chat_server() as (_, url):
        yield url


@pytest.fixture(scope="module")
def one_slot_llm_url() -> Iterator[str]:
    """The local chat server with one slot: it generates one reply at a time."""
    with local_chat_server(VF_LLM_SERVER_SLOTS="1") as (_, url):
        yield url


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


# Runs to max_tokens: a thousand tokens (counting does not: with the server's repeat penalty,
# SmolLM2 stops counting after a few numbers).
LONG_STORY = [{"role": "user", "content": "Tell me a long story about a knight and a dragon."}]
HELLO = [SYSTEM, {"role": "user", "content": "Say hello."}]


async def _pace(stream: AsyncIterator[str]) -> float:
    """Seconds per piece over the first pieces of ``stream`` (this server's own pace, so the
    comparisons below are with it, not with a fixed time)."""
    read = 0
    async for _ in stream:
        if read == 0:
            first_at = time.perf_counter()
        read += 1
        if read == PACE_PIECES:
            break
    assert read == PACE_PIECES, f"the reply ended after {read} pieces"
    return (time.perf_counter() - first_at) / (PACE_PIECES - 1)


async def _answer_s(chat: OpenAICompatibleChat) -> float:
    started = time.perf_counter()
    async with aclosing(chat.stream(HELLO, max_tokens=5, temperature=0.0)) as stream:
        assert [delta async for delta in stream]
    return time.perf_counter() - started


async def test_closing_early_frees_the_server(one_slot_llm_url: str) -> None:
    # Uninterrupted, this reply runs for a thousand tokens. The server generates one reply at a
    # time, so the next request is answered before the rest of this one could have been
    # generated only if closing the stream really stopped it.
    async with OpenAICompatibleChat(one_slot_llm_url, "smollm2", "none", timeout=30.0) as chat:
        async with aclosing(chat.stream(LONG_STORY, max_tokens=1000, temperature=0.0)) as stream:
            seconds_per_piece = await _pace(stream)
        answered_s = await _answer_s(chat)
    rest_of_it_s = (1000 - PACE_PIECES) * seconds_per_piece
    assert answered_s < rest_of_it_s / 4, (answered_s, rest_of_it_s)


async def test_a_reply_does_not_wait_for_another_users_long_reply(
    chat: OpenAICompatibleChat,
) -> None:
    # The long reply stays open and generating while a second user asks: a server that answers
    # one request at a time would answer only after the rest of the long one.
    async with aclosing(chat.stream(LONG_STORY, max_tokens=1000, temperature=0.0)) as stream:
        seconds_per_piece = await _pace(stream)
        answered_s = await _answer_s(chat)
        rest_of_it_s = (1000 - PACE_PIECES) * seconds_per_piece
        assert answered_s < rest_of_it_s / 4, (answered_s, rest_of_it_s)


async def test_a_request_on_a_connection_the_server_closed_is_sent_again(llm_url: str) -> None:
    # The server closes the connection the second request arrives on, unanswered. Whether that
    # connection is the first one, reused, or a new one is up to a race: llama-server closes its
    # end after each streamed reply, and the pool may take the connection back before the close
    # reaches it.
    relay = Relay("127.0.0.1", httpx.URL(llm_url).port or 80)
    relay.start()
    try:
        async with OpenAICompatibleChat(relay.url, "smollm2", "none", timeout=30.0) as chat:
            await _answer_s(chat)
            relay.drop_next_request = True
            await _answer_s(chat)
    finally:
        relay.stop()
    assert not relay.drop_next_request, "no request was dropped"
    assert len(relay.chat_messages()) == 2  # the first, and the second sent again


def test_chat_server_shows_no_conversations_in_flight_and_no_page(llm_url: str) -> None:
    root = llm_url.removesuffix("/v1")
    # /slots would list every slot's prompt: other users' conversations.
    assert httpx.get(f"{root}/slots", timeout=5).status_code == 501
    assert httpx.get(f"{root}/", timeout=5).status_code == 404
    assert httpx.get(f"{llm_url}/models", timeout=5).status_code == 200


def test_threads_setting_is_the_servers_thread_count() -> None:
    with local_chat_server(VF_LLM_SERVER_THREADS="1") as (server, _):
        assert "threadpool init, n_threads = 1" in server.log_path.read_text(errors="replace")


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
    # A user message without content is a bad request.
    with pytest.raises(ChatError, match="HTTP 400") as caught:
        async for _ in chat.stream([{"role": "user"}], max_tokens=5, temperature=0.0):
            pass
    assert caught.value.status == 400
