"""Requests to the servers behind the workers: chat models and TTS providers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

# What a request that the server never answered fails with: it closed the connection before the
# request reached it (end of stream: RemoteProtocolError) or as it arrived (reset: ReadError,
# WriteError).
_UNANSWERED = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
# Each attempt may draw another pooled connection whose close is still on its way.
_ATTEMPTS = 3


@asynccontextmanager
async def streamed(
    client: httpx.AsyncClient, method: str, url: str, **request: Any
) -> AsyncIterator[httpx.Response]:
    """``client.stream(method, url, **request)``, sent again (twice at most) when the server
    closed the connection it went out on without answering (the pool then gives it another, or
    a new one).

    A request can leave on a pooled connection just as the server's close of it is under way:
    llama-server closes its end after every streamed reply, though it answers with keep-alive
    headers, and the pool may take the connection back before that close reaches it; servers
    also close connections that sat idle (llama-server and uvicorn after 5 s, as httpx's pool
    expires them). The server read none of the request, or dropped it with the connection, so
    sending it again costs nothing."""
    sent = client.build_request(method, url, **request)
    for _ in range(_ATTEMPTS - 1):
        try:
            response = await client.send(sent, stream=True)
            break
        except _UNANSWERED:
            continue
    else:
        response = await client.send(sent, stream=True)
    try:
        yield response
    finally:
        await response.aclose()
