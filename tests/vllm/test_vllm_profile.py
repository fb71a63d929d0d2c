"""The vLLM these tests run is the one the deployment profiles configure: the model name the LLM
bridges ask for, the chat template and the longest conversation, read from the manifests."""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

import pytest
import yaml

from fleet.settings import Settings
from tests.fleet_processes import ROOT
from tests.vllm_server import (
    VLLM_PYTHON,
    VLLM_WEIGHTS,
    VllmServer,
    deployment_args,
    flag_values,
)
from workers.llm_bridge.chat import ChatError, OpenAICompatibleChat

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

COMPOSE = ROOT / "deploy" / "compose.yaml"
K8S_BASE = ROOT / "k8s" / "base" / "kustomization.yaml"
CONFIG_MAP = "voicefleet-config"


def compose_default(value: str) -> str:
    """The default of a compose ``${VAR:-default}`` value (the value itself if it has none)."""
    match = re.fullmatch(r"\$\{\w+:-(.*)\}", value)
    return match.group(1) if match else value


def k8s_config() -> dict[str, str]:
    """The literals of the base configMapGenerator that every fleet process reads."""
    kustomization = yaml.safe_load(K8S_BASE.read_text())
    generators = kustomization["configMapGenerator"]
    literals: list[str] = next(g["literals"] for g in generators if g["name"] == CONFIG_MAP)
    return dict(literal.split("=", 1) for literal in literals)


def compose_gpu_profile() -> tuple[dict[str, str | None], dict[str, Any]]:
    """The compose vLLM's flags (at their defaults) and the compose LLM bridge's environment."""
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    command = [compose_default(str(arg)) for arg in services["vllm"]["command"]]
    bridge = next(
        s
        for s in services.values()
        if s.get("environment", {}).get("VF_LLM_URL", "").startswith("http://vllm:")
    )
    return flag_values(command), bridge["environment"]


def test_every_profile_serves_and_asks_for_one_model_name_and_length() -> None:
    manifest = flag_values(deployment_args())
    compose, compose_bridge = compose_gpu_profile()
    served = manifest["--served-model-name"]
    assert served, "the manifest gives vLLM no --served-model-name"
    assert k8s_config()["VF_LLM_MODEL"] == served
    assert compose["--served-model-name"] == served
    assert compose_default(compose_bridge["VF_LLM_MODEL"]) == served
    assert compose["--max-model-len"] == manifest["--max-model-len"]
    assert compose.get("--chat-template") == manifest.get("--chat-template")


def test_vllm_serves_the_deployments_model_name_and_max_length(vllm: VllmServer) -> None:
    manifest = flag_values(deployment_args())
    served = [(m["id"], m["max_model_len"]) for m in vllm.get("/v1/models")["data"]]
    assert served == [(manifest["--served-model-name"], int(manifest["--max-model-len"] or 0))]


def test_vllm_applies_the_chat_template_the_deployment_gives_it(vllm: VllmServer) -> None:
    """The manifest names no template, so vLLM applies the model's own: the prompt it makes of
    the bridge's messages is the one the model's tokenizer makes."""
    assert "--chat-template" not in flag_values(deployment_args()), (
        "the deployment now gives vLLM a chat template: serve the tests with it too"
    )
    messages = [
        {"role": "system", "content": Settings().llm_system_prompt},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Spain?"},
    ]
    tokens = vllm.post(
        "/tokenize",
        {"model": vllm.served_model_name, "messages": messages, "add_generation_prompt": True},
    )["tokens"]
    prompt = vllm.post("/detokenize", {"model": vllm.served_model_name, "tokens": tokens})
    own = subprocess.run(
        [
            str(VLLM_PYTHON),
            "-c",
            "import json, sys; from transformers import AutoTokenizer\n"
            "tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])\n"
            "print(tokenizer.apply_chat_template(json.loads(sys.argv[2]), tokenize=False,"
            " add_generation_prompt=True), end='')",
            str(VLLM_WEIGHTS),
            json.dumps(messages),
        ],
        capture_output=True,
        text=True,
        check=True,
        env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
    ).stdout
    assert prompt["prompt"] == own


async def test_a_conversation_past_the_max_length_fails_its_turn_with_vllms_reason(
    vllm: VllmServer,
) -> None:
    """The bridge gets vLLM's refusal as a ChatError with the status and the limit."""
    limit = flag_values(deployment_args())["--max-model-len"]
    assert limit
    too_long = [{"role": "user", "content": "word " * (int(limit) + 10)}]
    async with OpenAICompatibleChat(vllm.url, vllm.served_model_name, vllm.api_key, 60) as chat:
        with pytest.raises(ChatError) as refused:
            async for _ in chat.stream(too_long, max_tokens=10, temperature=0.3):
                pass
    assert refused.value.status == 400
    assert limit in str(refused.value)
