"""What a reply is made of: the requested voice, each piece once, failures that end only a turn,
and every stage measured on its process's /metrics."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fleet.contracts import AssistantDelta
from fleet.settings import Settings
from fleet.topology import Bus
from tests.fleet_processes import Fleet
from tests.speech import median_pitch, pcm, reply_audio, silence, speech, words
from tests.voice_turns import QUESTION, SECOND_QUESTION, voice_turn
from voicefleet.client import VoiceClient

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

MARKER = "A DUPLICATE PIECE THAT MUST NOT BE SHOWN"
SAMPLE = "The capital of France is Paris, a city on the river Seine."

# Each process's histogram of its own stage (README: "Per-stage histograms are on every
# process's /metrics").
STAGE_HISTOGRAMS = {
    "stt-1": "vf_stt_final_latency_seconds",
    "llm-1": "vf_llm_first_token_seconds",
    "tts-1": "vf_tts_first_byte_seconds",
    "gateway-1": "vf_gateway_time_to_first_audio_seconds",
}


async def test_the_reply_is_spoken_in_the_requested_voice_and_each_piece_shown_once(
    fleet: Fleet,
) -> None:
    """``voice`` in ``start`` picks the TTS voice (a low male voice against the default high
    female one); an ``assistant.delta`` delivered again with an index already shown (as a
    redelivered LLM job sends it) is dropped."""
    client = VoiceClient(fleet.ws_url)
    await client.connect(voice="am_adam")
    bus = await Bus.connect(fleet.settings, "test-duplicates")
    try:
        mark = len(client.received)
        talking = asyncio.create_task(voice_turn(client, QUESTION))
        first = await client.wait_for("assistant_text", timeout=90, after=mark)
        assert isinstance(first.data, dict)
        await bus.publish(AssistantDelta(client.session_id, first.data["turn"], 0, MARKER))
        turn = await talking
    finally:
        await bus.close()
        await client.close()

    assert MARKER not in turn.reply, turn.reply
    assert not client.events("error"), client.events("error")
    heard = median_pitch(reply_audio(turn.audio))
    default_voice = Settings().tts_voice  # VF_TTS_VOICE of the fleet: af_heart, a high voice
    male, female = (median_pitch(speech(SAMPLE, voice)) for voice in ("am_adam", default_voice))
    assert abs(heard - male) < abs(heard - female), (heard, male, female)


async def test_a_failed_reply_ends_its_turn_and_the_connection_goes_on(fleet: Fleet) -> None:
    """``llm_failed``: the chat server drops every connection during a turn; the client is told,
    that turn gets no reply, and the next turn on the same connection is answered."""
    assert fleet.chat_tap is not None
    client = VoiceClient(fleet.ws_url)
    await client.connect()
    try:
        mark = len(client.received)
        fleet.chat_tap.refuse()
        try:
            await client.stream(pcm(silence(0.3), speech(QUESTION), silence(2.5)))
            error = await client.wait_for("error", timeout=60, after=mark)
        finally:
            fleet.chat_tap.accept()
        assert isinstance(error.data, dict) and error.data["code"] == "llm_failed", error
        after_error = client.index_of(error)

        turn = await voice_turn(client, SECOND_QUESTION)
        assert {"sky"} <= words(turn.heard), turn.heard
        assert client.close_code is None
        starts = [r.data for r in client.received[mark:] if r.kind == "audio_start"]
        assert [s["turn"] for s in starts if isinstance(s, dict)] == [turn.number], (
            "the failed turn played audio"
        )
        assert client.index_of(turn.end) > after_error
        # The failed turn had ended: the next question was no barge-in on it.
        assert not [r for r in client.received[mark:] if r.kind == "audio_cancel"]
    finally:
        await client.close()


async def test_a_failed_synthesis_ends_its_turn_and_the_connection_goes_on(fleet: Fleet) -> None:
    """``tts_failed``: a voice no synthesizer has (one a misconfigured gateway accepts,
    VF_TTS_VOICE_NAMES) fails each sentence; the client is told, the turn still ends
    (``audio_end``), and the connection stays open until the client stops."""
    with fleet.extra_gateway("gateway-nobody", VF_TTS_VOICE_NAMES="af_heart,zz_nobody") as url:
        await _a_failed_synthesis(url)


async def _a_failed_synthesis(url: str) -> None:
    client = VoiceClient(url)
    await client.connect(voice="zz_nobody")
    try:
        await client.stream(pcm(silence(0.3), speech(QUESTION), silence(2.5)))
        error = await client.wait_for("error", timeout=90)
        assert isinstance(error.data, dict) and error.data["code"] == "tts_failed", error
        start = await client.wait_for("audio_start", timeout=90)
        assert isinstance(start.data, dict)
        await client.wait_for("audio_end", timeout=90, turn=start.data["turn"])
        assert client.close_code is None
        await client.send_json({"type": "stop"})
        await client.wait_for("closed", timeout=10)
        assert client.close_code == 1000
        assert {e["code"] for e in client.events("error")} == {"tts_failed"}
    finally:
        await client.close()


def histogram_count(text: str, name: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == name
        for sample in family.samples
        if sample.name == f"{name}_count"
    )


async def scrape(fleet: Fleet) -> dict[str, str]:
    urls = {name: f"http://127.0.0.1:{port}/metrics" for name, port in fleet.metrics_ports.items()}
    urls["gateway-1"] = f"{fleet.http_url}/metrics"
    async with httpx.AsyncClient(timeout=10) as http:
        return {name: (await http.get(url)).text for name, url in urls.items()}


async def test_every_stage_is_measured_on_its_process_metrics(fleet: Fleet) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        assert (await http.get(f"{fleet.http_url}/healthz")).status_code == 200
    before = await scrape(fleet)
    client = VoiceClient(fleet.ws_url)
    await client.connect()
    try:
        await voice_turn(client, QUESTION)
    finally:
        await client.close()
    after = await scrape(fleet)
    for process, histogram in STAGE_HISTOGRAMS.items():
        counted = histogram_count(after[process], histogram) - histogram_count(
            before[process], histogram
        )
        assert counted >= 1, f"{process} did not record {histogram}"
