"""fixed_chunks: provider audio re-cut into fixed-size chunks, with exactly one `last`."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from workers.tts.chunks import fixed_chunks


async def pieces(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def collect(audio: AsyncIterator[bytes], size: int) -> list[tuple[bytes, bool]]:
    return [item async for item in fixed_chunks(audio, size)]


async def test_chunks_have_the_fixed_size_and_the_rest_comes_last() -> None:
    audio = bytes(range(256)) * 10  # 2560 bytes
    out = await collect(pieces(audio[:700], audio[700:701], audio[701:]), 1000)
    assert [len(c) for c, _ in out] == [1000, 1000, 560]
    assert b"".join(c for c, _ in out) == audio


async def test_only_the_final_chunk_is_marked_last() -> None:
    out = await collect(pieces(b"\x01" * 4100), 1000)
    assert [last for _, last in out] == [False, False, False, False, True]


async def test_an_exact_multiple_marks_the_last_full_chunk() -> None:
    out = await collect(pieces(b"\x01" * 1000, b"\x02" * 1000), 1000)
    assert out == [(b"\x01" * 1000, False), (b"\x02" * 1000, True)]


async def test_many_tiny_pieces_are_gathered() -> None:
    out = await collect(pieces(*([b"ab"] * 600)), 400)
    assert [(len(c), last) for c, last in out] == [(400, False), (400, False), (400, True)]
    assert b"".join(c for c, _ in out) == b"ab" * 600


async def test_empty_audio_yields_one_empty_last_chunk() -> None:
    assert await collect(pieces(), 1000) == [(b"", True)]
    assert await collect(pieces(b"", b""), 1000) == [(b"", True)]


async def test_audio_shorter_than_a_chunk_is_one_last_chunk() -> None:
    assert await collect(pieces(b"\x00\x01\x02\x03"), 1000) == [(b"\x00\x01\x02\x03", True)]


@pytest.mark.parametrize("size", [0, -2, 1, 999])
async def test_odd_or_empty_chunk_size_is_rejected(size: int) -> None:
    with pytest.raises(ValueError, match="positive even"):
        await collect(pieces(b"\x00" * 10), size)


async def test_a_chunk_is_yielded_before_the_provider_finishes() -> None:
    # Streaming: the first chunk must not wait for the whole sentence to be synthesized.
    released = []

    async def slow() -> AsyncIterator[bytes]:
        yield b"\x00" * 2000
        released.append("second piece")
        yield b"\x00" * 2000

    stream = fixed_chunks(slow(), 1000)
    first = await anext(stream)
    assert first == (b"\x00" * 1000, False)
    assert released == []
    rest = [item async for item in stream]
    assert [last for _, last in rest] == [False, False, True]
