"""A TCP relay that keeps a copy of what clients send through it.

In front of the chat server it shows what the fleet asked the model (``chat_messages``), byte
for byte relayed; ``refuse()`` makes it drop every connection, as a chat server that went away
would, and ``accept()`` ends that. ``hold_after_first_sentence`` stops each streamed reply once its
first sentence has passed, as a model slower than speech would, until ``release()``.

In front of gateways it is a load balancer: new connections go to whatever ``upstream`` is when
they arrive.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
from typing import Any

_HEADER_END = b"\r\n\r\n"
_EVENT_END = re.compile(rb"\n\n(?:\r\n)?")
_REQUEST_LINE = re.compile(rb"[A-Z]+ /")
_CONTENT = re.compile(rb'"content"\s*:\s*("(?:[^"\\]|\\.)*")')
# A sentence end and the start of two more words: enough for any sentence cutter to let it go.
_FIRST_SENTENCE_PASSED = re.compile(r"[.!?][\"')\]]*\s+\S+\s+\S")


class Relay:
    upstream: tuple[str, int]  # where new connections go (may be changed at any time)
    whole_replies: bool = False  # hold each response until it is complete (may be changed)
    hold_after_first_sentence: bool = False  # see the module's docstring (may be changed)
    # The next request is dropped unanswered and its connection closed, as a server closing a
    # connection just as a request arrives on it does (may be changed; cleared when done).
    drop_next_request: bool = False

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._sent: list[bytearray] = []  # client -> server bytes, one buffer per connection
        self._open: set[socket.socket] = set()
        self._refusing = False
        self._held: dict[socket.socket, bytearray] = {}  # client -> reply bytes not yet passed on
        self._thread = threading.Thread(target=self._accept, name="chat-tap", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._drop_connections()

    def refuse(self) -> None:
        """From now on, every connection is closed at once (existing ones too)."""
        self._refusing = True
        self._drop_connections()

    def accept(self) -> None:
        self._refusing = False

    def release(self) -> None:
        """Pass on what ``hold_after_first_sentence`` held, and stop holding."""
        self.hold_after_first_sentence = False
        with self._lock:
            held, self._held = self._held, {}
        for client, data in held.items():
            with contextlib.suppress(OSError):
                client.sendall(data)

    def requests(self) -> list[dict[str, Any]]:
        """The JSON bodies of every request relayed so far, in the order connections opened."""
        with self._lock:
            streams = [bytes(buffer) for buffer in self._sent]
        bodies = []
        for data in streams:
            while (head_end := data.find(_HEADER_END)) >= 0:
                head = data[:head_end].decode("latin-1").lower().split("\r\n")
                length = next(
                    (int(h.split(":", 1)[1]) for h in head if h.startswith("content-length:")), 0
                )
                body = data[head_end + len(_HEADER_END) : head_end + len(_HEADER_END) + length]
                data = data[head_end + len(_HEADER_END) + length :]
                with contextlib.suppress(ValueError):
                    bodies.append(json.loads(body))
        return bodies

    def chat_messages(self) -> list[list[dict[str, str]]]:
        """The ``messages`` of every chat request relayed so far."""
        return [b["messages"] for b in self.requests() if isinstance(b.get("messages"), list)]

    def _drop_connections(self) -> None:
        with self._lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._refusing:
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            buffer = bytearray()
            with self._lock:
                self._sent.append(buffer)
                self._open.update((client, server))
            threading.Thread(target=self._pump, args=(client, server, buffer), daemon=True).start()
            threading.Thread(target=self._pump_back, args=(server, client), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, keep: bytearray | None) -> None:
        try:
            while data := source.recv(65536):
                if keep is not None:
                    with self._lock:
                        if self.drop_next_request and _REQUEST_LINE.match(data):
                            self.drop_next_request = False
                            return
                        keep.extend(data)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._open.discard(source)
            source.close()

    def _pump_back(self, server: socket.socket, client: socket.socket) -> None:
        """Server to client: at once, one whole response at a time (``whole_replies``), or up to
        the end of a reply's first sentence (``hold_after_first_sentence``)."""
        held = bytearray()
        reply_text = ""
        try:
            while data := server.recv(65536):
                held.extend(data)
                if self.hold_after_first_sentence:
                    reply_text = self._pass_on_first_sentence(client, held, reply_text)
                elif not self.whole_replies or _response_complete(held):
                    client.sendall(held)
                    held.clear()
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                client.sendall(held)
            for sock in (server, client):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._open.discard(server)
                self._held.pop(client, None)
            server.close()

    def _pass_on_first_sentence(self, client: socket.socket, new: bytearray, text: str) -> str:
        """Send ``new`` event by event until the reply's text has a first sentence; hold the rest
        for ``release()``. Returns the reply's text so far."""
        with self._lock:
            if client in self._held:
                self._held[client].extend(new)
                new.clear()
                return text
            if new.startswith(b"HTTP/"):
                text = ""  # the next response on a kept-alive connection
            passed = 0
            for end in _EVENT_END.finditer(new):
                event = bytes(new[passed : end.end()])
                for quoted in _CONTENT.findall(event):
                    with contextlib.suppress(ValueError):
                        text += str(json.loads(quoted))
                passed = end.end()
                if _FIRST_SENTENCE_PASSED.search(text):
                    self._held[client] = bytearray(new[passed:])
                    break
            else:
                passed = len(new)  # the start of an event that will be passed on whole
            client.sendall(new[:passed])
            new.clear()
            return text


def _response_complete(data: bytearray) -> bool:
    """Whether ``data`` ends with the end of an HTTP response (a streamed one is chunked)."""
    head_end = data.find(_HEADER_END)
    if head_end < 0:
        return False
    if b"transfer-encoding: chunked" not in bytes(data[:head_end]).lower():
        return True  # an error or other plain response: nothing to hold it back for
    return data.endswith(b"\r\n0\r\n\r\n")
