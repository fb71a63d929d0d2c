"""What a TTS worker speaks with, published for the gateway (fleet/state.py, ``TtsOffers``).

Every provider of the worker's list with its engine, version, health and voices, and which of
them a sentence goes to now. The gateway refuses at `start` a voice that provider does not
offer, and its page shows the provider (docs/tts-providers.md, "What the workers offer").
The record lives in Redis with a TTL the worker keeps refreshing, so a dead worker's offer
expires by itself; a worker that stops withdraws it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import structlog
from redis.exceptions import RedisError

from fleet.state import ProviderOffer, TtsOffer, TtsOffers
from workers.tts.providers.base import SpeechSynthesizer
from workers.tts.providers.chain import Candidate, ProviderChain

log = structlog.get_logger(__name__)

# The offer is looked at this often and published when it changed, and at least every
# OFFER_REFRESH_S; it expires OFFER_TTL_S after the last publication.
OFFER_CHECK_S = 1.0
OFFER_REFRESH_S = 5.0
OFFER_TTL_S = 15


def provider_offer(
    label: str, synthesizer: SpeechSynthesizer, health: str, detail: str = ""
) -> ProviderOffer:
    """A provider as offered: a provider that lists no voices (an OpenAI-compatible endpoint,
    ElevenLabs) is taken to speak any name, as it does or refuses the sentence itself."""
    voices: Sequence[str] = getattr(synthesizer, "voices", ())
    return ProviderOffer(
        label=label,
        engine=str(getattr(synthesizer, "engine", "") or synthesizer.name),
        version=synthesizer.version,
        health=health,
        detail=detail,
        voices=tuple(voices),
        any_voice=bool(getattr(synthesizer, "any_voice", True)),
    )


def _health(candidate: Candidate) -> tuple[str, str]:
    if candidate.refused:
        return "refused", candidate.refused
    if candidate.down:
        return "down", candidate.down
    if not candidate.healthy:
        return "unchecked", ""
    return "ok", ""


def offer_of(synthesizer: SpeechSynthesizer, worker: str) -> TtsOffer:
    """What the worker offers now. With a list of providers, the one a sentence goes to is the
    first healthy one (as of its last check); with none healthy, the one that spoke last."""
    if not isinstance(synthesizer, ProviderChain):
        return TtsOffer(worker, "local", (provider_offer("local", synthesizer, "ok"),))
    providers = tuple(
        provider_offer(c.label, c.synthesizer, *_health(c)) for c in synthesizer.candidates
    )
    first_healthy = next((c for c in synthesizer.candidates if c.healthy), synthesizer.active)
    return TtsOffer(worker, first_healthy.label, providers)


async def publish_offers(
    synthesizer: SpeechSynthesizer, worker: str, offers: TtsOffers, stopping: asyncio.Event
) -> None:
    """Keep the worker's offer in Redis until ``stopping``, then withdraw it."""
    published: TtsOffer | None = None
    since_refresh = 0.0
    try:
        while not stopping.is_set():
            offer = offer_of(synthesizer, worker)
            if offer != published or since_refresh >= OFFER_REFRESH_S:
                try:
                    await offers.publish(offer, OFFER_TTL_S)
                    if offer != published:
                        log.info("tts_offer_published", active=offer.active)
                    published, since_refresh = offer, 0.0
                except RedisError as exc:
                    # Redis away: the gateway falls back to the engines' lists; try again.
                    log.warning("tts_offer_not_published", error=str(exc))
                    published = None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), OFFER_CHECK_S)
            since_refresh += OFFER_CHECK_S
    finally:
        with contextlib.suppress(RedisError):
            await offers.withdraw(worker)
