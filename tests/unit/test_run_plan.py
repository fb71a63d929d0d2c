"""What `voicefleet up` (./scripts/run.sh) starts, with and without a TTS provider server."""

from __future__ import annotations

from fleet.settings import Settings
from voicefleet.cli import _parser
from voicefleet.runner import plan


def test_by_default_tts_workers_use_their_own_engine() -> None:
    specs = plan(Settings(), stt=1, llm=1, tts=2, gateways=1)
    assert "tts-provider" not in [spec.name for spec in specs]
    assert all("VF_TTS_PROVIDERS" not in spec.env for spec in specs)


def test_tts_provider_server_runs_the_split_with_the_local_engine_as_fallback() -> None:
    args = _parser().parse_args(["up", "--tts", "2", "--tts-provider-server"])
    specs = {spec.name: spec for spec in plan(Settings(), 1, 1, 2, 1, args.tts_provider_server)}
    assert specs["tts-provider"].args == ("tts-provider", "--provider", "kokoro", "--port", "8090")
    for name in ("tts-1", "tts-2"):
        assert specs[name].env["VF_TTS_PROVIDERS"] == "remote,local"
        assert specs[name].env["VF_TTS_PROVIDER_URL"] == "http://127.0.0.1:8090"
    assert "VF_TTS_PROVIDERS" not in specs["stt-1"].env
