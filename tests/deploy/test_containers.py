"""The image, built here, runs what the manifests and compose declare.

Offline: the CPU image is built from a local base image and local wheels (tests/deploy/docker.py).
Every fleet workload of the rendered overlays runs as a container with exactly what its spec
declares (tests/deploy/containers.py), against the shared RabbitMQ and Redis under a namespace of
its own, and must pass its readiness probe (of the GPU overlays, the workloads of the CPU image);
a question spoken into the cpu-box gateway container gets a spoken answer across the containers.
`deploy/compose.yaml --profile cpu` comes up, a question spoken into its gateway gets a spoken
answer, and `down` leaves nothing. Durations are printed (run with -s); docs/deploy.md has them.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from fleet.settings import Settings
from tests.deploy.containers import (
    Cluster,
    ensure_vhost,
    fleet_workloads,
    speak_one_turn,
    workload_container,
)
from tests.deploy.docker import (
    CPU_IMAGE,
    Build,
    build_cpu_image,
    logs,
    remove_labelled,
    run,
)
from tests.deploy.manifests import K8S, kustomize_build
from tests.deploy.test_compose import COMPOSE_FILE, compose_binary
from tests.private_services import free_port
from voicefleet.deploy_names import ROLES
from voicefleet.namespaces import delete_namespace

pytestmark = [pytest.mark.timeout(3600)]

API_KEY = "test-api-key-0123456789"  # of the app server that asks the gateway for tokens
VHOST = "voicefleet"  # the vhost the manifests' and compose's broker URLs name
CPU_OVERLAY = "cpu-box"
# Test values of the Secrets docs/deploy.md tells an operator to create. The shared Redis has no
# password; the shared broker's guest user stands for each role's user.
SECRETS = {
    "voicefleet-secrets": {
        "llm-api-key": "test-key",
        "auth-jwt-secret": "test-jwt-secret-of-at-least-32-bytes",
        "auth-api-key": API_KEY,
    },
    # No user and no password: the shared Redis's default user.
    **{f"voicefleet-redis-{role}": {"username": "", "password": ""} for role in ROLES},
    **{
        f"voicefleet-rabbitmq-{role}": {"username": "guest", "password": "guest"}
        for role in ("gateway", "stt", "llm", "tts", "keda")
    },
}


@pytest.fixture(scope="module")
def image() -> Build:
    build = build_cpu_image()
    print(f"\n{build.image} built in {build.seconds:.0f} s")
    return build


@pytest.fixture
async def namespace() -> AsyncIterator[str]:
    await asyncio.to_thread(ensure_vhost, VHOST)
    name = f"t{uuid.uuid4().hex[:10]}"
    try:
        yield name
    finally:
        await asyncio.to_thread(remove_labelled, name)
        amqp_url = f"amqp://guest:guest@127.0.0.1:5672/{VHOST}"
        await delete_namespace(Settings(namespace=name, amqp_url=amqp_url))


def start_and_wait(cluster: Cluster, workloads: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Start every workload at once, as a rollout would; seconds from start to ready, each."""
    started = time.monotonic()
    names = {}
    for workload in workloads:
        names[workload] = f"{cluster.namespace}-{workload}"
        run(*cluster.docker_run_argv(workload, workloads, names[workload]))
    ready = {}
    for workload, spec in workloads.items():
        cluster.wait_ready(workload, spec, names[workload])
        ready[workload] = time.monotonic() - started
    return ready


async def test_every_cpu_box_workload_runs_as_declared_and_a_spoken_turn_crosses_them(
    image: Build, namespace: str
) -> None:
    """Every fleet workload of the cpu-box overlay starts as declared and passes its readiness
    probe; then a question spoken into the containerized gateway gets a spoken answer, through
    the STT, LLM bridge, chat server and TTS containers."""
    docs = kustomize_build(K8S / "overlays" / CPU_OVERLAY)
    workloads = fleet_workloads(docs, CPU_IMAGE.split(":")[0] + ":")
    assert set(workloads) == {
        "voicefleet-gateway",
        "voicefleet-stt",
        "voicefleet-llm",
        "voicefleet-tts",
        "voicefleet-llm-server",
    }
    assert {workload_container(w)["image"] for w in workloads.values()} == {image.image}
    cluster = Cluster(docs, SECRETS, namespace)
    ready = await asyncio.to_thread(start_and_wait, cluster, workloads)
    print("\nstart to ready: " + ", ".join(f"{k} {v:.0f} s" for k, v in ready.items()))
    gateway = "voicefleet-gateway"
    (http,) = (p for p in workload_container(workloads[gateway])["ports"] if p["name"] == "http")
    port = cluster.host_port(gateway, http["containerPort"])
    started = time.monotonic()
    try:
        turn = await speak_one_turn(f"ws://127.0.0.1:{port}/ws/audio", API_KEY)
    except BaseException:
        for workload in workloads:
            print(f"--- {workload} ---\n{logs(f'{namespace}-{workload}')}")
        raise
    print(f"cpu-box turn in {time.monotonic() - started:.0f} s: {turn}")


GPU_OVERLAYS = ("one-box", "multi-node", "multi-node-hpa", "tts-provider")


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
async def test_gpu_overlays_cpu_workloads_run_as_declared(
    image: Build, namespace: str, overlay: str
) -> None:
    """Of a GPU overlay, what runs on the CPU image (gateway, LLM bridges; in tts-provider the
    TTS workers too) starts and gets ready; STT, TTS (CUDA image), the TTS provider servers and
    vLLM need a GPU and are not run here. TTS workers without their provider server get ready
    on their own engine, the fallback they declare."""
    docs = kustomize_build(K8S / "overlays" / overlay)
    workloads = fleet_workloads(docs, image.image)
    cpu_tts = {"voicefleet-tts"} if overlay == "tts-provider" else set()
    assert set(workloads) == {"voicefleet-gateway", "voicefleet-llm", *cpu_tts}
    ready = await asyncio.to_thread(start_and_wait, Cluster(docs, SECRETS, namespace), workloads)
    print(f"\n{overlay} start to ready: " + ", ".join(f"{k} {v:.0f} s" for k, v in ready.items()))


# --- compose ------------------------------------------------------------------------------------

COMPOSE_SERVICES = ("gateway", "llm-server", "stt-cpu", "llm-cpu", "tts-cpu")


def compose_override(ports: dict[str, int]) -> str:
    """The test-only override: host networking, the shared broker and Redis, ports moved.

    As for the pods: the services share the host's network here, so each gets free ports; the
    broker and Redis services are not started (the shared ones stand in, under the same names).
    """
    fleet = """    network_mode: host
    networks: !reset []
    ports: !reset []
    extra_hosts: [rabbitmq:127.0.0.1, redis:127.0.0.1, llm-server:127.0.0.1]
"""
    no_deps = "    depends_on: !reset {}\n"

    def worker(name: str, extra: str = "") -> str:
        return f"""  {name}:
{fleet}    environment:
      VF_REDIS_URL: redis://redis:6379/0
      VF_METRICS_PORT: "{ports[name + ":metrics"]}"
      VF_HEALTH_PORT: "{ports[name + ":health"]}"
{extra}"""

    gateway_check = f"u.urlopen('http://127.0.0.1:{ports['gateway']}/readyz', timeout=4)"
    server_check = f"u.urlopen('http://127.0.0.1:{ports['llm-server']}/v1/models', timeout=4)"
    llm_extra = f"""      VF_LLM_URL: http://llm-server:{ports["llm-server"]}/v1
    depends_on: !override
      llm-server: {{condition: service_healthy}}
"""
    return f"""services:
  rabbitmq:
    profiles: [shared-outside-compose]
  redis:
    profiles: [shared-outside-compose]
  gateway:
{fleet}{no_deps}    environment:
      VF_REDIS_URL: redis://redis:6379/0
      VF_GATEWAY_PORT: "{ports["gateway"]}"
      VF_METRICS_PORT: "{ports["gateway:metrics"]}"
    healthcheck:
      test: ["CMD", "python", "-c", "import urllib.request as u; {gateway_check}"]
  llm-server:
{fleet}    command: ["llm-server", "--port", "{ports["llm-server"]}", "--host", "127.0.0.1"]
    healthcheck:
      test: ["CMD", "python", "-c", "import urllib.request as u; {server_check}"]
{worker("stt-cpu", no_deps)}{worker("tts-cpu", no_deps)}{worker("llm-cpu", llm_extra)}"""


def compose_leftovers(project: str) -> list[str]:
    label = f"label=com.docker.compose.project={project}"
    found = []
    for kind in ("container", "volume", "network"):
        listing = ["docker", kind, "ls", "-q", "--filter", label]
        if kind == "container":
            listing.insert(3, "-a")
        found += [f"{kind} {item}" for item in run(*listing).stdout.split()]
    return found


async def test_compose_cpu_profile_comes_up_answers_a_turn_and_leaves_nothing(
    image: Build, namespace: str, tmp_path: Path
) -> None:
    ports = {"gateway": free_port(), "gateway:metrics": free_port(), "llm-server": free_port()}
    for name in ("stt-cpu", "llm-cpu", "tts-cpu"):
        ports[f"{name}:metrics"] = free_port()
        ports[f"{name}:health"] = free_port()
    override = tmp_path / "compose.test.yaml"
    override.write_text(compose_override(ports))
    project = f"vf{namespace}"
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ["HOME"],
        "VF_NAMESPACE": namespace,
        "RABBITMQ_USER": "guest",
        "RABBITMQ_PASSWORD": "guest",
        # Required by compose.yaml; the override points the fleet at the password-less Redis.
        "REDIS_PASSWORD": "unused",
        "VF_LLM_API_KEY": "test-key",
        "GRAFANA_ADMIN_PASSWORD": "unused",
        "VF_AUTH_JWT_SECRET": "test-jwt-secret-of-at-least-32-bytes",
        "VF_AUTH_API_KEY": API_KEY,
    }
    compose = [compose_binary(), "-p", project, "-f", str(COMPOSE_FILE), "-f", str(override)]
    compose += ["--profile", "cpu"]
    started = time.monotonic()
    try:
        await asyncio.to_thread(
            run, *compose, "up", "-d", "--wait", "--no-build", "--pull", "never", env=env
        )
        print(f"\ncompose up to healthy in {time.monotonic() - started:.0f} s")
        running = run(*compose, "ps", "--services", env=env).stdout.split()
        assert sorted(running) == sorted(COMPOSE_SERVICES)
        spoken = time.monotonic()
        turn = await speak_one_turn(f"ws://127.0.0.1:{ports['gateway']}/ws/audio", API_KEY)
        print(f"compose turn in {time.monotonic() - spoken:.0f} s: {turn}")
    finally:
        await asyncio.to_thread(run, *compose, "down", "-v", "--remove-orphans", env=env)
    assert compose_leftovers(project) == []
