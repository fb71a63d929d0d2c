"""`wyoming`: a Wyoming-protocol TTS server, as Home Assistant's voice pipeline uses them
(`wyoming-piper` and its kin), at ``VF_TTS_WYOMING_URL`` (``tcp://host:port``).

The protocol, as spoken here: each event is one line of JSON (``type``, and optionally ``data``
inline, ``data_length`` and ``payload_length``), then ``data_length`` bytes of JSON data, then
``payload_length`` bytes of payload. We send ``describe`` (answered by ``info``, which lists the
TTS programs, their versions and voices) and ``synthesize`` (answered by ``audio-start``,
``audio-chunk`` events whose payload is PCM, and ``audio-stop``). One connection per sentence.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from fleet.audio import OUTPUT_SAMPLE_RATE, PcmStreamResampler
from fleet.settings import Settings
from workers.tts.providers.base import ProviderUnavailable

_PROTOCOL_VERSION = "1.8.0"
# An event header line or data longer than this is not a TTS server talking.
_MAX_LINE = 1 << 20


@dataclass
class Event:
    type: str
    data: dict[str, object] = field(default_factory=dict)
    payload: bytes = b""


async def write_event(writer: asyncio.StreamWriter, event: Event) -> None:
    header: dict[str, object] = {"type": event.type, "version": _PROTOCOL_VERSION}
    data = json.dumps(event.data).encode() if event.data else b""
    if data:
        header["data_length"] = len(data)
    if event.payload:
        header["payload_length"] = len(event.payload)
    writer.write(json.dumps(header).encode() + b"\n" + data + event.payload)
    await writer.drain()


async def read_event(reader: asyncio.StreamReader) -> Event:
    line = await reader.readline()
    if not line:
        raise ProviderUnavailable("the wyoming server closed the connection")
    header = json.loads(line)
    data = dict(header.get("data") or {})
    data_length, payload_length = header.get("data_length") or 0, header.get("payload_length") or 0
    if data_length > _MAX_LINE or payload_length > 64 * _MAX_LINE:
        raise ProviderUnavailable(f"wyoming event too large: {header}")
    if data_length:
        data.update(json.loads(await reader.readexactly(data_length)))
    payload = await reader.readexactly(payload_length) if payload_length else b""
    return Event(str(header["type"]), data, payload)


class WyomingSynthesizer:
    """`SpeechSynthesizer` for a Wyoming TTS server; audio is resampled to the wire's rate."""

    name = "wyoming"
    # A name it does not list gets its default voice.
    any_voice = True
    sample_rate = OUTPUT_SAMPLE_RATE

    def __init__(self, url: str, timeout_s: float) -> None:
        parts = urlsplit(url)
        if parts.scheme != "tcp" or not parts.hostname or not parts.port:
            raise ValueError(f"VF_TTS_WYOMING_URL must be tcp://host:port, got {url!r}")
        self.url, self.host, self.port = url, parts.hostname, parts.port
        self.timeout_s = timeout_s
        self.version = ""
        self.voices: list[str] = []

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(self.host, self.port, limit=_MAX_LINE)

    async def _next(self, reader: asyncio.StreamReader) -> Event:
        async with asyncio.timeout(self.timeout_s):
            return await read_event(reader)

    async def connect(self) -> None:
        """Ask the server what it is (``describe``): its program, version and voices."""
        try:
            reader, writer = await asyncio.wait_for(self._open(), self.timeout_s)
        except (OSError, TimeoutError) as exc:
            raise ProviderUnavailable(f"wyoming server {self.url}: {exc!r}") from exc
        try:
            await write_event(writer, Event("describe"))
            while (event := await self._next(reader)).type != "info":
                pass
        except (OSError, EOFError, TimeoutError, ValueError, KeyError) as exc:
            raise ProviderUnavailable(f"wyoming server {self.url}: {exc!r}") from exc
        finally:
            writer.close()
        offered = event.data.get("tts")
        programs = [p for p in offered if isinstance(p, dict)] if isinstance(offered, list) else []
        if not programs:
            raise ProviderUnavailable(f"wyoming server {self.url} offers no TTS program")
        program = programs[0]
        self.version = f"{program.get('name')} {program.get('version')}"
        voices = program.get("voices")
        self.voices = [
            str(voice["name"])
            for voice in (voices if isinstance(voices, list) else [])
            if isinstance(voice, dict)
        ]

    async def stream(self, text: str, voice: str) -> AsyncIterator[bytes]:
        if not text.strip():
            raise ValueError("nothing to say: the text is empty")
        request: dict[str, object] = {"text": text}
        if voice in self.voices:
            # Other names (the worker's default is Kokoro's) get the server's default voice.
            request["voice"] = {"name": voice}
        try:
            reader, writer = await asyncio.wait_for(self._open(), self.timeout_s)
        except (OSError, TimeoutError) as exc:
            raise ProviderUnavailable(f"wyoming server {self.url}: {exc!r}") from exc
        resampler: PcmStreamResampler | None = None
        try:
            await write_event(writer, Event("synthesize", request))
            while (event := await self._next(reader)).type != "audio-stop":
                if event.type == "error":
                    raise ProviderUnavailable(f"wyoming server {self.url}: {event.data}")
                if event.type != "audio-chunk" or not event.payload:
                    continue
                if event.data.get("width", 2) != 2 or event.data.get("channels", 1) != 1:
                    raise ProviderUnavailable(f"wyoming audio is not 16-bit mono: {event.data}")
                rate = int(str(event.data.get("rate", OUTPUT_SAMPLE_RATE)))
                if rate == OUTPUT_SAMPLE_RATE:
                    yield event.payload
                    continue
                resampler = resampler or PcmStreamResampler(rate, OUTPUT_SAMPLE_RATE)
                if converted := resampler.feed(event.payload):
                    yield converted
            if resampler is not None and (tail := resampler.finish()):
                yield tail
        except (OSError, EOFError, TimeoutError, ValueError, KeyError) as exc:
            raise ProviderUnavailable(f"wyoming server {self.url} failed: {exc!r}") from exc
        finally:
            writer.close()


def from_settings(settings: Settings) -> WyomingSynthesizer:
    return WyomingSynthesizer(settings.tts_wyoming_url, settings.tts_provider_timeout_s)
