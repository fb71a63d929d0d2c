"""vLLM's CPU build serving the assembled chat model with the deployment's own arguments.

Every deployment profile serves the chat model with vLLM (k8s/base/vllm/vllm.yaml; compose's gpu
profile gives the same defaults). Here that server runs with the manifest's arguments as they are,
except:

- ``--model``: the small chat model the other tests use, converted to safetensors by
  scripts/bootstrap.sh --with-test-tools (vLLM refuses GGUF), under the manifest's
  ``--served-model-name``;
- ``--port`` on a free port, and ``--host`` on loopback;
- the GPU-only ``--gpu-memory-utilization``, whose CPU counterpart is the KV cache size in
  ``VLLM_CPU_KVCACHE_SPACE``;
- ``--enable-log-requests``, only to watch it: vLLM logs a request it aborts only with it (its
  metrics count no abort that a client's disconnect causes).

The API key is a secret in the deployment (``VLLM_API_KEY``), a fresh one here; the bridge must
send it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.fleet_processes import ROOT, free_port

VLLM_MANIFEST = ROOT / "k8s" / "base" / "vllm" / "vllm.yaml"
VLLM_HOME = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "voicefleet" / "vllm"
VLLM_PYTHON = VLLM_HOME / "venv" / "bin" / "python"
VLLM_WEIGHTS = VLLM_HOME / "smollm2-135m-instruct"
GPU_ONLY_FLAGS = frozenset({"--gpu-memory-utilization"})
KV_CACHE_GIB = "1"  # a 135M model's KV cache for --max-num-seqs x --max-model-len fits in far less
START_TIMEOUT_S = 600.0  # about 2 minutes on an idle machine; the first start compiles too


def deployment_args() -> list[str]:
    """The vLLM container's ``args`` in the Kubernetes base manifest."""
    for document in yaml.safe_load_all(VLLM_MANIFEST.read_text()):
        if document and document.get("kind") == "StatefulSet":
            containers = document["spec"]["template"]["spec"]["containers"]
            return [str(arg) for arg in next(c for c in containers if c["name"] == "vllm")["args"]]
    raise AssertionError(f"no vLLM StatefulSet in {VLLM_MANIFEST}")


def flag_values(args: list[str]) -> dict[str, str | None]:
    """``--flag value`` pairs (None for a flag without a value)."""
    values: dict[str, str | None] = {}
    for index, arg in enumerate(args):
        if arg.startswith("--"):
            following = args[index + 1] if index + 1 < len(args) else "--"
            values[arg] = None if following.startswith("--") else following
    return values


def server_args(port: int) -> list[str]:
    """The manifest's arguments with the changes the module docstring lists, in its order."""
    replaced = {"--model": str(VLLM_WEIGHTS), "--port": str(port)}
    args: list[str] = []
    for flag, value in flag_values(deployment_args()).items():
        if flag in GPU_ONLY_FLAGS:
            continue
        args.append(flag)
        if value is not None:
            args.append(replaced.get(flag, value))
    return [*args, "--host", "127.0.0.1", "--enable-log-requests"]


@dataclass
class VllmServer:
    url: str  # OpenAI API base, .../v1
    api_key: str
    served_model_name: str
    log_path: Path
    process: subprocess.Popen[bytes]

    @property
    def root_url(self) -> str:
        return self.url.removesuffix("/v1")

    def metrics(self) -> dict[str, float]:
        """vLLM's own /metrics: each sample's name (e.g. ``vllm:num_requests_running``), summed
        over its labels."""
        text = httpx.get(f"{self.root_url}/metrics", timeout=10).text
        totals: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
        return totals

    def get(self, path: str) -> Any:
        response = httpx.get(f"{self.root_url}{path}", headers=self.auth, timeout=10)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, body: dict[str, Any]) -> Any:
        response = httpx.post(f"{self.root_url}{path}", json=body, headers=self.auth, timeout=60)
        response.raise_for_status()
        return response.json()

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def aborted_requests(self) -> list[str]:
        """The lines where vLLM logged a request it aborted."""
        if not self.log_path.exists():
            return []
        return [
            line
            for line in self.log_path.read_text(errors="replace").splitlines()
            if "Aborted request" in line
        ]

    def tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def vllm_missing() -> str | None:
    """What of vLLM's environment is missing here, if anything."""
    for path, what in ((VLLM_PYTHON, "vLLM's environment"), (VLLM_WEIGHTS, "converted model")):
        if not path.exists():
            return f"{what} missing at {path}"
    return None


@contextlib.contextmanager
def running_vllm(log_path: Path) -> Iterator[VllmServer]:
    """Start vLLM as the module docstring says; stopped when the block ends."""
    if problem := vllm_missing():
        raise RuntimeError(f"{problem}: run scripts/bootstrap.sh --with-test-tools")
    port = free_port()
    api_key = secrets.token_hex(16)
    served = flag_values(deployment_args())["--served-model-name"]
    assert served, f"{VLLM_MANIFEST} gives vLLM no --served-model-name"
    env = {
        **os.environ,
        "VLLM_API_KEY": api_key,
        "VLLM_CPU_KVCACHE_SPACE": KV_CACHE_GIB,
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
    }
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        # A file, not a pipe: nobody reads a pipe while we wait, and vLLM logs a lot.
        process = subprocess.Popen(
            [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", *server_args(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = VllmServer(f"http://127.0.0.1:{port}/v1", api_key, served, log_path, process)
    try:
        _wait_until_healthy(server)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            # Its engine runs in child processes of its own session.
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _wait_until_healthy(server: VllmServer) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"vLLM exited with {server.process.returncode}:\n{server.tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.root_url}/health", timeout=2).status_code == 200:
                return
        time.sleep(1)
    raise TimeoutError(f"vLLM not healthy after {START_TIMEOUT_S:g} s:\n{server.tail()}")
