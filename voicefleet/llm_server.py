"""`voicefleet llm-server`: serve the assembled chat model with llama.cpp's OpenAI-compatible API.

The process replaces itself with the server (exec), so a supervisor's SIGTERM reaches llama.cpp
directly instead of a Python wrapper that would have to forward it.
"""

from __future__ import annotations

import importlib.util
import os
import sys

from fleet.model_paths import model_paths
from fleet.settings import get_settings

MODEL_ALIAS = "smollm2"


def server_argv(model: str, port: int, host: str = "127.0.0.1") -> list[str]:
    return [
        sys.executable, "-m", "llama_cpp.server",
        "--model", model,
        "--model_alias", MODEL_ALIAS,
        "--host", host,
        "--port", str(port),
        "--n_ctx", "2048",
        "--n_threads", "2",
        # By default the server aborts the stream it is generating as soon as another request
        # waits, which silently drops concurrent turns; queue them instead.
        "--interrupt_requests", "False",
    ]  # fmt: skip


def main(port: int, host: str = "127.0.0.1") -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        sys.exit(
            "voicefleet llm-server: llama-cpp-python is not installed; "
            "run scripts/bootstrap.sh or pip install -e '.[llm-server]'"
        )
    gguf = model_paths(get_settings()).chat_gguf
    if not gguf.is_file():
        sys.exit(f"voicefleet llm-server: {gguf} is missing; run `voicefleet models` first")
    argv = server_argv(str(gguf), port, host)
    os.execv(argv[0], argv)
