"""`voicefleet llm-server`: serve the assembled chat model with llama.cpp's OpenAI-compatible API.

The server is llama.cpp's own `llama-server` (built by scripts/build-llama-server.sh; bootstrap and
the image put it beside the environment's Python). It generates for several requests at once in
parallel slots, with continuous batching, so a user's first token does not wait for other users'
whole replies.

The process replaces itself with the server (exec), so a supervisor's SIGTERM reaches llama.cpp
directly instead of a Python wrapper that would have to forward it.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from fleet.model_paths import model_paths
from fleet.settings import Settings, get_settings

MODEL_ALIAS = "smollm2"
# Each slot's context: the system prompt, up to ten turns of history and the reply fit in it.
SLOT_CONTEXT_TOKENS = 2048


def server_binary() -> Path | None:
    """The `llama-server` beside this Python (a venv's bin/), else the first on PATH."""
    beside = Path(sys.executable).parent / "llama-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("llama-server")
    return Path(found) if found else None


class LlmServerMissing(RuntimeError):
    """The server binary or the chat model is not where it should be."""


def server_argv(port: int, host: str = "127.0.0.1", settings: Settings | None = None) -> list[str]:
    """The command line of `llama-server` serving the assembled chat model on ``host:port``."""
    settings = settings or get_settings()
    binary = server_binary()
    if binary is None:
        raise LlmServerMissing(
            "llama-server is not installed; run scripts/bootstrap.sh "
            "(or scripts/build-llama-server.sh .venv/bin)"
        )
    gguf = model_paths(settings).chat_gguf
    if not gguf.is_file():
        raise LlmServerMissing(f"{gguf} is missing; run `voicefleet models` first")
    slots = settings.llm_server_slots
    return [
        str(binary),
        "--model", str(gguf),
        "--alias", MODEL_ALIAS,
        "--host", host,
        "--port", str(port),
        "--parallel", str(slots),
        "--ctx-size", str(SLOT_CONTEXT_TOKENS * slots),
        "--threads", str(settings.llm_server_threads),
        # The sampling the earlier server (llama-cpp-python's) used: without a repeat penalty this
        # small model loops on a phrase ("le Grand-Bien-Souffrac, le Grand-Bien-Souffrac, ...").
        "--repeat-penalty", "1.1",
        # The chat template the model ships in its GGUF, as its authors wrote it.
        "--jinja",
        # Only the OpenAI API: no browser UI, and no /slots, which would show any caller the
        # prompts (other users' conversations) in flight.
        "--no-webui",
        "--no-slots",
    ]  # fmt: skip


def main(port: int, host: str = "127.0.0.1") -> None:
    try:
        argv = server_argv(port, host)
    except LlmServerMissing as missing:
        sys.exit(f"voicefleet llm-server: {missing}")
    os.execv(argv[0], argv)
