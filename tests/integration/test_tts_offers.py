"""What the TTS workers offer (providers, versions, health, voices), in the real Redis: published
with a TTL, read by the gateway, gone when the worker is (docs/tts-providers.md, "What the
workers offer"), and the voices the gateway accepts at `start` because of it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import cast

from fleet.engines import KOKORO_VOICES, accepted_voices, voices_source
from fleet.settings import Settings
from fleet.state import ProviderOffer, SessionStore, TtsOffer, TtsOffers

REMOTE = ProviderOffer("remote", "kokoro", "0.1.0", "ok", voices=("af_heart", "bf_emma"))
LOCAL = ProviderOffer("local", "kokoro", "0.6.1", "ok", voices=KOKORO_VOICES)
PIPER = ProviderOffer("local", "piper", "1.3.0", "ok", voices=("en_US-joe-medium",), any_voice=True)


async def test_an_offer_is_read_back_until_its_worker_withdraws_it(
    store: SessionStore, settings: Settings
) -> None:
    offers = TtsOffers(store.redis, settings)
    assert await offers.current() == []
    first = TtsOffer("tts-1", "remote", (REMOTE, LOCAL))
    second = TtsOffer("tts-2", "local", (LOCAL,))
    await offers.publish(first, 30)
    await offers.publish(second, 30)
    assert await offers.current() == [first, second]
    await offers.withdraw("tts-1")
    assert await offers.current() == [second]


async def test_a_dead_workers_offer_expires_and_leaves_the_index(
    store: SessionStore, settings: Settings
) -> None:
    offers = TtsOffers(store.redis, settings)
    await offers.publish(TtsOffer("tts-dead", "local", (LOCAL,)), 1)
    await offers.publish(TtsOffer("tts-alive", "local", (PIPER,)), 30)
    async with asyncio.timeout(5):
        # Nobody refreshes tts-dead's record: Redis expires it after its TTL.
        while len(await offers.current()) == 2:  # noqa: ASYNC110 (a TTL has no event)
            await asyncio.sleep(0.1)
    assert [offer.worker for offer in await offers.current()] == ["tts-alive"]
    # The dead one's name is dropped from the index too.
    assert await cast(Awaitable[int], store.redis.scard(offers.index)) == 1


def test_the_voices_accepted_are_those_of_the_providers_speaking_now() -> None:
    settings = Settings()
    # Nothing published: the engine's own list.
    assert accepted_voices(settings, []) == KOKORO_VOICES
    # The provider a worker sends sentences to now, not the fallback behind it.
    offered = [TtsOffer("tts-1", "remote", (REMOTE, LOCAL))]
    assert accepted_voices(settings, offered) == ("af_heart", "bf_emma")
    assert voices_source(settings, offered) == "the TTS provider kokoro 0.1.0 (remote)"
    # The union over workers.
    other = TtsOffer(
        "tts-2", "remote", (ProviderOffer("remote", "kokoro", "0.1.0", "ok", voices=("am_adam",)),)
    )
    assert accepted_voices(settings, [*offered, other]) == ("af_heart", "am_adam", "bf_emma")
    # A provider that speaks any name lets any name through.
    assert accepted_voices(settings, [*offered, TtsOffer("tts-3", "local", (PIPER,))]) is None
    # Only healthy providers count; with none, the engine's list again.
    refused = ProviderOffer("remote", "kokoro", "2.0.0", "refused", voices=("af_heart",))
    assert accepted_voices(settings, [TtsOffer("tts-4", "remote", (refused,))]) == KOKORO_VOICES
    # The operator's list wins.
    listed = Settings(tts_voice_names="af_sky, am_echo")
    assert accepted_voices(listed, offered) == ("af_sky", "am_echo")
    assert voices_source(listed, offered) == "VF_TTS_VOICE_NAMES"
