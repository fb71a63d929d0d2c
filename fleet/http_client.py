"""Requests to the servers behind the workers: chat models and TTS providers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx


@asynccontextmanager
async def streamed(
    client: httpx.AsyncClient, method: str, url: str, **request: Any
) -> AsyncIterator[httpx.Response]:
    """``client.stream(method, url, **request)``, sent again, once, when the server closed the
    connection it went out on without answering (the pool then gives it another, or a new one).

    A request can leave on a pooled connection just as the server's close of it is under way:
    llama-server closes its end after every streamed reply, though it answers with keep-alive
    headers, and the pool may take the connection back before that close reaches it; servers
    also close connections that sat idle (llama-server and uvicorn after 5 s, as httpx's pool
    expires them). The server read none of the request, or dropped it with the connection, so
    sending it again costs nothing."""
    sent = client.build_request(method, url, **request)
    try:
        response = await client.send(sent, stream=True)
    except httpx.RemoteProtocolError:
        response = await client.send(sent, stream=True)
    try:
        yield response
    finally:
        await response.aclose()
