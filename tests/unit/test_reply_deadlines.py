"""The LLM bridge gives each piece it sends to TTS its deadline (fleet/deadlines.py)."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from fleet.contracts import Message, TtsRequest, TurnRequest
from fleet.deadlines import speech_seconds
from fleet.settings import Settings
from fleet.worker import Runtime
from workers.llm_bridge.main import LlmBridge

REPLY = [
    "Sure, here is a story. ",
    "Once upon a time, a small grey cat lived in a quiet village by the sea. ",
    "Every morning she walked down to the harbour. ",
    "The end.",
]


class ScriptedChat:
    async def stream(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        max_tokens: int,
        temperature: float,
        seed: int | None = None,
        on_first_token: Callable[[float], None] | None = None,
    ) -> AsyncGenerator[str, None]:
        for delta in REPLY:
            yield delta

    async def aclose(self) -> None:
        pass


@dataclass
class Recorder:
    published: list[Message] = field(default_factory=list)

    async def publish(self, message: Message, **_: Any) -> None:
        self.published.append(message)


@dataclass
class NoHistory:
    async def history(self, _: str) -> list[Any]:
        return []


@dataclass
class StubRuntime:
    settings: Settings
    bus: Recorder = field(default_factory=Recorder)
    store: NoHistory = field(default_factory=NoHistory)


@pytest.mark.parametrize("speed", [1.0, 1.5])
async def test_each_piece_is_due_when_the_pieces_before_it_have_played(speed: float) -> None:
    runtime = StubRuntime(Settings(tts_speed=speed, llm_first_piece_words=0))
    bridge = LlmBridge(cast(Runtime, runtime), ScriptedChat())
    before = time.time()
    await bridge._stream_reply(TurnRequest("sess-1", 1, "Tell me a story."))
    after = time.time()
    pieces = [m for m in runtime.bus.published if isinstance(m, TtsRequest)]
    assert len(pieces) >= 3, pieces
    assert before <= pieces[0].deadline <= after
    for n, piece in enumerate(pieces):
        ahead = sum(speech_seconds(p.text, speed) for p in pieces[:n])
        assert piece.deadline == pytest.approx(pieces[0].deadline + ahead)
