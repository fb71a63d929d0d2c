"""A reply cut into a short first piece and the rest still sounds whole.

The pieces are spoken by the real Kokoro provider, one synthesis each, and played back to back
as the gateway plays them; Whisper, listening to the joined audio, hears every word of the
reply, the two at the joint included.
"""

from __future__ import annotations

import asyncio

import pytest

from fleet.settings import get_settings
from tests.speech import spoken_words, transcribe_reply
from workers.llm_bridge.sentences import SentenceBuffer
from workers.tts.providers import create_synthesizer

pytestmark = pytest.mark.timeout(300)

REPLY = (
    "Once upon a time there lived a brave knight who rode out every morning to visit "
    "his friend the dragon. They talked until the sun went down."
)


async def test_a_reply_cut_after_its_first_words_is_heard_word_for_word() -> None:
    settings = get_settings()
    buffer = SentenceBuffer(settings.llm_first_clause_chars, first_piece_words=5)
    pieces = [piece for word in REPLY.split(" ") for piece in buffer.push(" " + word)]
    pieces += buffer.flush()
    assert pieces[0] == "Once upon a time there", pieces  # cut between words, as configured

    synthesizer = await asyncio.to_thread(create_synthesizer, settings)
    audio = b""
    for piece in pieces:
        async for chunk in synthesizer.stream(piece, settings.tts_voice):
            audio += chunk
    heard = spoken_words(transcribe_reply(audio))
    said = spoken_words(REPLY)
    assert heard == said, (heard, said)
