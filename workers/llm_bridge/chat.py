"""Streaming chat completions from any OpenAI-compatible server (vLLM, llama.cpp server, hosted).

Why httpx with our own SSE reading instead of the `openai` SDK: the one thing this module must get
right is closing. When a turn goes stale the bridge abandons the stream, and the model server
frees its slot only when it sees the client disconnect. With httpx that is one visible step:
leaving `client.stream(...)` before the body is complete closes the connection. The SDK wraps
the same response in its own stream object, retries with backoff by default (slow failure when
the server is down) and, in recent releases, brings a second HTTP stack (httpx2) whose closing
behaviour we would have to trust rather than see. The chat-completions SSE format is small:
`data: {json}` lines ending with `data: [DONE]`.

Messages must use the roles `system`, `user` and `assistant`: llama.cpp server answers HTTP 500
to the newer `developer` role.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Protocol, Self

import httpx

from fleet.http_client import streamed

# A server that does not accept a connection within this is down for our purposes, whatever the
# (much longer) read timeout allows for a busy server to start answering.
_CONNECT_TIMEOUT_S = 5.0
# How much of an error body goes into the exception message.
_ERROR_BODY_CHARS = 300


class ChatError(Exception):
    """A chat request failed: server unreachable, HTTP error status, timeout or broken stream.

    `status` is the HTTP status when the server answered with one, else None.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ChatModel(Protocol):
    def stream(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        max_tokens: int,
        temperature: float,
        seed: int | None = None,
        on_first_token: Callable[[float], None] | None = None,
    ) -> AsyncGenerator[str, None]:
        """Stream the reply as text deltas (never empty strings).

        With a ``seed``, servers that honour it (vLLM, llama.cpp) sample the same reply again for
        the same request, so a turn retried after a worker died says what it had begun to say.

        The request is sent on the first iteration. `on_first_token` is called once with the
        seconds from sending the request to the first text delta. Closing the generator early
        (`aclose()`, or `contextlib.aclosing`, or cancelling the task that iterates it) ends
        the HTTP request, so the server stops generating. Raises ChatError.
        """
        ...

    async def aclose(self) -> None:
        """Release the connection pool."""
        ...


class OpenAICompatibleChat:
    """`ChatModel` for a `/chat/completions` endpoint with `stream: true`.

    `base_url` includes the API prefix, e.g. `http://127.0.0.1:8081/v1`. `timeout` bounds the
    wait for any single read (the response headers, then each event), not the whole reply.
    One instance serves many concurrent streams over a shared connection pool.
    """

    def __init__(self, base_url: str, model: str, api_key: str, timeout: float) -> None:
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._model = model
        self._timeout = timeout
        headers = {"Accept": "text/event-stream"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, _CONNECT_TIMEOUT_S)),
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def stream(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        max_tokens: int,
        temperature: float,
        seed: int | None = None,
        on_first_token: Callable[[float], None] | None = None,
    ) -> AsyncGenerator[str, None]:
        body: dict[str, object] = {
            "model": self._model,
            "messages": [dict(message) for message in messages],
            "max_tokens": max_tokens,
            "temperature": temperature,
            "stream": True,
        }
        if seed is not None:
            body["seed"] = seed
        started = time.perf_counter()
        first = True
        try:
            async with streamed(self._client, "POST", self._url, json=body) as response:
                if response.status_code >= 400:
                    raise await self._status_error(response)
                async for line in response.aiter_lines():
                    # The body ends right after [DONE]; reading on to its end (instead of
                    # breaking) lets the connection go back to the pool.
                    delta = self._delta(line)
                    if not delta:
                        continue
                    if first:
                        first = False
                        if on_first_token is not None:
                            on_first_token(time.perf_counter() - started)
                    yield delta
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise ChatError(f"chat server unreachable at {self._url}: {_describe(exc)}") from exc
        except httpx.TimeoutException as exc:
            raise ChatError(
                f"chat server at {self._url} sent nothing for {self._timeout:g} s"
            ) from exc
        except httpx.HTTPError as exc:
            raise ChatError(f"chat stream from {self._url} broke: {_describe(exc)}") from exc

    def _delta(self, line: str) -> str:
        """The text of one SSE line; empty for comments, keep-alives, role-only chunks, [DONE]."""
        if not line.startswith("data:"):
            return ""
        data = line[5:].strip()
        if not data or data == "[DONE]":
            return ""
        try:
            event = json.loads(data)
        except ValueError as exc:
            raise ChatError(
                f"chat server at {self._url} sent an unreadable event: {data[:80]!r}"
            ) from exc
        if not isinstance(event, dict):
            raise ChatError(f"chat server at {self._url} sent an unexpected event: {data[:80]!r}")
        if "error" in event:
            raise ChatError(f"chat server at {self._url} failed mid-stream: {_error_text(event)}")
        choices = event.get("choices") or []
        if not choices:
            return ""  # e.g. a trailing usage chunk
        content = (choices[0].get("delta") or {}).get("content")
        return content if isinstance(content, str) else ""

    async def _status_error(self, response: httpx.Response) -> ChatError:
        raw = (await response.aread()).decode("utf-8", "replace")
        try:
            detail = _error_text(json.loads(raw))
        except ValueError:
            detail = raw
        detail = " ".join(detail.split())
        return ChatError(
            f"chat server at {self._url} answered HTTP {response.status_code}: "
            f"{detail[:_ERROR_BODY_CHARS] or response.reason_phrase}",
            status=response.status_code,
        )


def _error_text(payload: Any) -> str:
    """The message of the error shapes OpenAI, vLLM and llama.cpp server send."""
    if isinstance(payload, dict):
        error = payload.get("error", payload.get("detail", payload.get("message")))
        if isinstance(error, dict):
            return str(error.get("message") or error)
        if error is not None:
            return str(error)
    return str(payload)


def _describe(exc: Exception) -> str:
    return str(exc) or type(exc).__name__
