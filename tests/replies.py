"""One spoken reply as the user heard it, and the exact comparison of two hearings of one turn.

"No sentence is heard twice or missed" is checked against the same turn heard without a fault:
the fleet runs at temperature 0, so the chat model says the same thing each time, and Kokoro on
CPU synthesizes the same text to the same bytes each time (measured: see
tests/integration/test_kokoro_provider.py), so the two replies must be equal sentence by
sentence, chunk by chunk, byte for byte.

Two views are compared. The client's: the ``assistant_text`` pieces and the binary frames between
``audio_start`` and ``audio_end``. The fleet's: every ``audio.out`` the TTS workers sent for the
turn, read off the event exchange by an :class:`~tests.event_tap.EventTap` (copies included),
which names each frame's sentence and chunk.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from fleet.contracts import AssistantDelta, AudioOut, TurnDone
from tests.event_tap import EventTap
from voicefleet.client import Received, VoiceClient


@dataclass(frozen=True)
class SpokenSentence:
    index: int
    text: str
    chunks: tuple[bytes, ...]  # chunk 0 to the last, the first copy of each
    copies: int  # chunk messages the workers sent for it; more than len(chunks) if redone


@dataclass(frozen=True)
class HeardReply:
    session_id: str
    question: str  # the final transcript the turn answered
    turn: int
    deltas: tuple[str, ...]  # assistant_text pieces, in the order the client got them
    frames: tuple[bytes, ...]  # reply audio frames, in the order the client got them
    sentences: tuple[SpokenSentence, ...]  # what the TTS workers sent, in sentence order
    redone_deltas: int  # text pieces the LLM bridges sent more than once (a retried turn)

    @property
    def text(self) -> str:
        return "".join(self.deltas)

    @property
    def redone_chunks(self) -> int:
        """Chunks the workers sent more than once (a redelivered job), which the gateway drops."""
        return sum(s.copies - len(s.chunks) for s in self.sentences)


async def heard_reply(
    client: VoiceClient,
    tap: EventTap,
    turn: int,
    timeout: float,  # noqa: ASYNC109 - the patience for the reply's end, as in VoiceClient
) -> HeardReply:
    """The reply of ``turn``, once the client has its ``audio_end``."""
    end = await client.wait_for("audio_end", turn=turn, timeout=timeout)
    start = await client.wait_for("audio_start", turn=turn, timeout=1)
    span = client.received[client.index_of(start) + 1 : client.index_of(end)]
    finals = [
        r.data["text"]
        for r in client.received[: client.index_of(start)]
        if r.kind == "transcript" and isinstance(r.data, dict) and r.data["final"]
    ]
    # The gateway forwarded every sentence before audio_end; the tap, another queue on the
    # same exchange, may be a moment behind it.
    done = await tap.wait_for(TurnDone, lambda m: m.turn == turn, timeout=timeout)
    for index in range(done.sentences):

        def ends_sentence(m: AudioOut, i: int = index) -> bool:
            return m.turn == turn and m.sentence == i and m.last

        await tap.wait_for(AudioOut, ends_sentence, timeout=5)
    # Every piece of text the bridges sent went out before their turn.done.
    pieces = [m for m in tap.of(AssistantDelta) if m.turn == turn]
    return HeardReply(
        session_id=client.session_id,
        question=str(finals[-1]) if finals else "",
        turn=turn,
        deltas=tuple(e["text"] for e in client.events("assistant_text") if e["turn"] == turn),
        frames=tuple(r.data for r in span if isinstance(r.data, bytes)),
        sentences=_sentences([m for m in tap.of(AudioOut) if m.turn == turn], done.sentences),
        redone_deltas=len(pieces) - len({m.index for m in pieces}),
    )


def _sentences(audio: list[AudioOut], count: int) -> tuple[SpokenSentence, ...]:
    by_sentence: dict[int, list[AudioOut]] = defaultdict(list)
    for message in audio:
        by_sentence[message.sentence].append(message)
    sentences = []
    for index in range(count):
        first: dict[int, AudioOut] = {}
        for message in by_sentence[index]:
            first.setdefault(message.chunk, message)
        ends = sorted({m.chunk for m in by_sentence[index] if m.last})
        assert len(ends) == 1, f"sentence {index}: last chunk {ends} (one expected)"
        assert sorted(first) == list(range(ends[0] + 1)), (
            f"sentence {index}: chunks {sorted(first)} sent, 0..{ends[0]} expected"
        )
        sentences.append(
            SpokenSentence(
                index,
                first[0].text,
                tuple(first[c].pcm for c in range(ends[0] + 1)),
                len(by_sentence[index]),
            )
        )
    return tuple(sentences)


def assert_heard_each_chunk_once(reply: HeardReply) -> None:
    """The client heard every chunk of every sentence of the reply, in order, exactly once."""
    expected = [(s.index, c) for s in reply.sentences for c, pcm in enumerate(s.chunks) if pcm]
    pieces = [pcm for s in reply.sentences for pcm in s.chunks if pcm]
    assert len(reply.frames) == len(pieces), (
        f"heard {len(reply.frames)} frames; the sentences have {len(pieces)} chunks"
    )
    for position, (frame, piece) in enumerate(zip(reply.frames, pieces, strict=True)):
        sentence, chunk = expected[position]
        assert frame == piece, f"frame {position} is not chunk {chunk} of sentence {sentence}"


def assert_heard_as_without_fault(faulted: HeardReply, reference: HeardReply) -> None:
    """The same sentences in the same order, each chunk once, the same audio to the byte."""
    assert faulted.question == reference.question, (
        "the two turns must answer the same question",
        faulted.question,
        reference.question,
    )
    assert faulted.deltas == reference.deltas, (
        "the reply text differs from the fault-free reply",
        faulted.text,
        reference.text,
    )
    assert [s.text for s in faulted.sentences] == [s.text for s in reference.sentences]
    assert_heard_each_chunk_once(faulted)
    for ours, theirs in zip(faulted.sentences, reference.sentences, strict=True):
        assert len(ours.chunks) == len(theirs.chunks), (
            f"sentence {ours.index} {ours.text!r}: {len(ours.chunks)} chunks, "
            f"{len(theirs.chunks)} without the fault"
        )
        for chunk, (a, b) in enumerate(zip(ours.chunks, theirs.chunks, strict=True)):
            assert a == b, f"sentence {ours.index} chunk {chunk}: audio differs from fault-free"
    assert faulted.frames == reference.frames


def assert_nothing_of_a_cancelled_turn_after_its_cancel(received: list[Received]) -> None:
    """docs/protocol.md, ordering 2-4: after ``audio_cancel`` for turn N, nothing of N is sent (no
    binary frame, no ``assistant_text``, no ``audio_end``, no second ``audio_cancel``); every frame
    belongs to the turn of the latest ``audio_start`` and comes before that turn's ``audio_end``.

    A second ``audio_cancel`` of N is what a gateway sends that kept N as its current turn: each
    later word of the user "interrupts" it again."""
    cancelled: set[int] = set()
    playing: int | None = None  # the turn whose frames may arrive now
    for position, item in enumerate(received):
        data = item.data if isinstance(item.data, dict) else {}
        turn = data.get("turn")
        where = f"item {position} ({item.kind}, turn {turn})"
        if item.kind == "audio":
            assert playing is not None, f"{where}: a frame outside any turn's audio (old audio?)"
            continue
        assert turn is None or turn not in cancelled, f"{where}: the turn was cancelled before"
        if item.kind == "audio_cancel":
            cancelled.add(int(data["turn"]))
            if playing == data["turn"]:
                playing = None
        elif item.kind in ("assistant_text", "audio_start", "audio_end"):
            playing = int(data["turn"]) if item.kind == "audio_start" else playing
            if item.kind == "audio_end":
                assert playing == turn, f"{where}: not the turn whose audio is playing"
                playing = None
