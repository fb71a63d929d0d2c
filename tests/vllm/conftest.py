from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fleet_processes import ARTIFACTS, Fleet, running_fleet
from tests.prerequisites import require
from tests.vllm_server import VllmServer, running_vllm, vllm_missing
from tests.voice_turns import STORYTELLER

# Long enough that a long story is still being generated when the user talks over its first
# sentences (the model runs it to the limit: about 15 s on an idle machine).
REPLY_TOKENS = 1000


@pytest.fixture(scope="session")
def vllm() -> Iterator[VllmServer]:
    """vLLM's CPU build with the deployment's arguments (tests/vllm_server.py); log in
    artifacts/vllm/server.log."""
    require("vllm", vllm_missing())
    with running_vllm(ARTIFACTS / "vllm" / "server.log") as server:
        yield server


@pytest.fixture(scope="session")
def vllm_fleet(vllm: VllmServer) -> Iterator[Fleet]:
    """A whole fleet whose LLM bridge asks vLLM as deployed: its served model name and API key.

    A :class:`Relay` shows what the bridge sends (``fleet.chat_tap``). Piper speaks, so that
    replies play while vLLM is still generating them, as they do on a GPU.
    """
    with running_fleet(
        "vllm",
        llm_url=vllm.url,
        tap_chat=True,
        tts_provider="piper",
        llm_model=vllm.served_model_name,
        llm_api_key=vllm.api_key,
        llm_max_tokens=str(REPLY_TOKENS),
        llm_system_prompt=STORYTELLER,
    ) as fleet:
        yield fleet
