"""What a real cluster would hit next, checked on the rendered overlays (issue 9, part 4).

Each test names a rule that a cluster enforces only at run time (a Pending pod, a GPU pod that
sees no GPU, an out-of-memory GPU, an autoscaler fighting `kubectl apply`, a queue KEDA never
finds, a lease the broker revokes, a microphone the browser refuses), so the rule is checked here.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleet.topology import Names
from tests.deploy.manifests import K8S, OVERLAYS, REPO, kustomize_build
from tests.deploy.test_compose import ENV_EXAMPLE, rendered, run_compose
from tests.deploy.test_manifests import built, by_kind, config, container
from voicefleet import deploy_names
from voicefleet.llm_server import MODEL_ALIAS

GUIDE = REPO / "docs" / "deploy.md"


def workloads(docs: tuple[dict[str, Any], ...]) -> dict[str, dict[str, Any]]:
    return {**by_kind(docs, "Deployment"), **by_kind(docs, "StatefulSet")}


def env_of(spec: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in spec.get("env", []) if "value" in item}


def render_with(tmp_path: Path, overlay: str, component: Path) -> tuple[dict[str, Any], ...]:
    """An overlay plus one more component, as a user's own overlay would add it."""
    root = tmp_path / "overlay"
    root.mkdir()
    (root / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                # kustomize takes only relative paths.
                "resources": [os.path.relpath(K8S / "overlays" / overlay, root)],
                "components": [os.path.relpath(component, root)],
            }
        )
    )
    return tuple(kustomize_build(root))


# --- storage --------------------------------------------------------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_replicated_pod_shares_a_read_write_once_claim(overlay: str) -> None:
    docs = built(overlay)
    claims = {
        name: claim["spec"]["accessModes"]
        for name, claim in by_kind(docs, "PersistentVolumeClaim").items()
    }
    for name, deployment in by_kind(docs, "Deployment").items():
        for volume in deployment["spec"]["template"]["spec"].get("volumes", []):
            claim = volume.get("persistentVolumeClaim", {}).get("claimName")
            # A Deployment's pods all mount the same claim: only ReadWriteMany allows that.
            assert claim is None or claims[claim] == ["ReadWriteMany"], (name, claim)
    vllm = by_kind(docs, "StatefulSet").get("voicefleet-vllm")
    if vllm is not None:  # every overlay but cpu-box
        (template,) = vllm["spec"]["volumeClaimTemplates"]
        mounts = {mount["name"] for mount in container(vllm)["volumeMounts"]}
        assert template["metadata"]["name"] in mounts


# --- k3s ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overlay", ["one-box", "tts-provider"])
def test_k3s_component_runs_every_gpu_pod_with_the_nvidia_runtime(
    tmp_path: Path, overlay: str
) -> None:
    docs = render_with(tmp_path, overlay, K8S / "components" / "k3s")
    (runtime_class,) = by_kind(docs, "RuntimeClass").values()
    for name, workload in workloads(docs).items():
        pod = workload["spec"]["template"]["spec"]
        wants_gpu = "nvidia.com/gpu" in container(workload)["resources"].get("limits", {})
        assert (pod.get("runtimeClassName") == runtime_class["metadata"]["name"]) == wants_gpu, name
    assert runtime_class["handler"] == "nvidia"
    assert "components/k3s" in GUIDE.read_text()


# --- one GPU, shared ------------------------------------------------------------------------------
GPU_BUDGET = "voicefleet.io/gpu-memory-mib"


def test_one_box_gpu_memory_shares_fit_in_the_gpu() -> None:
    docs = built("one-box")
    kinds = workloads(docs)
    vllm = kinds["voicefleet-vllm"]
    gpu_mib = int(vllm["spec"]["template"]["metadata"]["annotations"][GPU_BUDGET])
    args = container(vllm)["args"]
    total = float(args[args.index("--gpu-memory-utilization") + 1]) * gpu_mib
    scaled = by_kind(docs, "ScaledObject")
    for role in ("stt", "tts"):
        pod = kinds[f"voicefleet-{role}"]["spec"]["template"]
        budget = int(pod["metadata"]["annotations"][GPU_BUDGET])
        total += budget * scaled[f"voicefleet-{role}"]["spec"]["maxReplicaCount"]
    assert total <= gpu_mib, f"vLLM's share and the workers' budgets need {total:.0f} MiB"
    tts = kinds["voicefleet-tts"]
    cap = int(env_of(container(tts))["VF_TTS_GPU_MEM_LIMIT_MB"])
    assert 0 < cap < int(tts["spec"]["template"]["metadata"]["annotations"][GPU_BUDGET])


# --- autoscaling ----------------------------------------------------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscaled_deployments_leave_replicas_to_the_autoscaler(overlay: str) -> None:
    docs = built(overlay)
    targets = {
        doc["spec"]["scaleTargetRef"]["name"]
        for doc in docs
        if doc["kind"] in ("ScaledObject", "HorizontalPodAutoscaler")
    }
    assert targets
    deployments = by_kind(docs, "Deployment")
    for name in targets:
        assert "replicas" not in deployments[name]["spec"], name


# --- names: KEDA queues, permissions, the lease policy --------------------------------------------
def check_names(docs: tuple[dict[str, Any], ...]) -> None:
    """Every broker name in the manifests is the one fleet.topology uses for VF_NAMESPACE."""
    names = Names(config(docs)["VF_NAMESPACE"])
    expected_queues = {
        "voicefleet-stt": names.stt_sessions,
        "voicefleet-llm": names.llm_turns,
        "voicefleet-tts": names.tts_jobs,
    }
    for name, scaled in by_kind(docs, "ScaledObject").items():
        assert scaled["spec"]["triggers"][0]["metadata"]["queueName"] == expected_queues[name]
    permissions = by_kind(docs, "Permission")
    own = {"gateway": names.gateway_queue("g1"), "stt": names.stt_queue("w1")}
    for role in deploy_names.ROLES:
        granted = permissions[f"voicefleet-{role}"]["spec"]["permissions"]
        used = [*deploy_names.shared_names(names), *([own[role]] if role in own else [])]
        for right in ("configure", "write", "read"):
            for name in used:
                assert re.fullmatch(granted[right], name), (role, right, name)
            # Another fleet's names, and other roles' own queues, stay out of reach.
            others = [queue for other, queue in own.items() if other != role]
            for name in (Names("elsewhere").stt_sessions, *others):
                assert not re.fullmatch(granted[right], name), (role, right, name)
        assert granted == deploy_names.permission_patterns(names, role), role
    (policy,) = by_kind(docs, "Policy").values()
    assert re.fullmatch(policy["spec"]["pattern"], names.stt_sessions)
    for job_queue in (names.llm_turns, names.tts_jobs, Names("elsewhere").stt_sessions):
        assert not re.fullmatch(policy["spec"]["pattern"], job_queue)
    # Each role's Redis user follows fleet.state's key prefix for the namespace.
    (acl,) = (d for d in docs if d["metadata"]["name"].startswith("voicefleet-redis-acl"))
    for role in deploy_names.ROLES:
        assert acl["data"][role] == deploy_names.redis_acl_rules(names.namespace, role), role


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_broker_names_follow_the_fleet_naming(overlay: str) -> None:
    check_names(built(overlay))


@pytest.mark.parametrize("overlay", ["one-box", "multi-node-hpa"])
def test_broker_names_follow_a_namespace(overlay: str, tmp_path: Path) -> None:
    component = tmp_path / "ns-acme"
    component.mkdir()
    (component / "kustomization.yaml").write_text(
        json.dumps(deploy_names.namespace_component("acme"))
    )
    docs = render_with(tmp_path, overlay, component)
    assert config(docs)["VF_NAMESPACE"] == "acme"
    check_names(docs)


# --- the served model name ------------------------------------------------------------------------
def served_name(args: list[str]) -> str:
    return args[args.index("--served-model-name") + 1]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_chat_server_serves_the_model_the_bridges_ask_for(overlay: str) -> None:
    docs = built(overlay)
    servers = workloads(docs)
    if "voicefleet-vllm" in servers:
        served = served_name(container(servers["voicefleet-vllm"])["args"])
    else:  # cpu-box: the llama.cpp server serves the model under its alias
        assert container(servers["voicefleet-llm-server"])["args"][0] == "llm-server"
        served = MODEL_ALIAS
    assert served == config(docs)["VF_LLM_MODEL"]


def test_compose_model_servers_serve_the_model_the_bridges_ask_for() -> None:
    gpu = rendered(("gpu",))["services"]
    assert served_name(gpu["vllm"]["command"]) == gpu["llm"]["environment"]["VF_LLM_MODEL"]
    renamed = rendered(("gpu",), (("VF_LLM_MODEL", "other-name"),))["services"]
    assert served_name(renamed["vllm"]["command"]) == "other-name"
    assert renamed["llm"]["environment"]["VF_LLM_MODEL"] == "other-name"
    cpu = rendered(("cpu",))["services"]
    assert cpu["llm-cpu"]["environment"]["VF_LLM_MODEL"] == MODEL_ALIAS


# --- the lease's consumer timeout -----------------------------------------------------------------
def timeouts_ms(additional_config: str) -> int:
    found = re.search(r"^\s*consumer_timeout\s*=\s*(\d+)", additional_config, re.M)
    assert found, additional_config
    return int(found[1])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_lease_queue_outlasts_the_longest_session(overlay: str) -> None:
    docs = built(overlay)
    longest_ms = int(config(docs)["VF_MAX_SESSION_S"]) * 1000
    (cluster,) = by_kind(docs, "RabbitmqCluster").values()
    assert timeouts_ms(cluster["spec"]["rabbitmq"]["additionalConfig"]) < longest_ms
    (policy,) = by_kind(docs, "Policy").values()
    assert policy["spec"]["applyTo"] == "queues"
    assert policy["spec"]["definition"]["consumer-timeout"] > longest_ms
    # Per-queue consumer-timeout needs RabbitMQ 3.12 or later.
    major, minor = (int(part) for part in cluster["spec"]["image"].split(":")[1].split(".")[:2])
    assert (major, minor) >= (3, 12)


def compose_lease_policy(services: dict[str, Any]) -> tuple[str, int]:
    script = services["rabbitmq"]["command"][-1]
    match = re.search(
        r"set_policy .*?voicefleet-stt-lease '([^']+)'\s*\\?\s*'([^']+)'", script, re.S
    )
    assert match, script
    return match[1], json.loads(match[2])["consumer-timeout"]


def test_compose_scopes_the_lease_timeout_to_the_lease_queue() -> None:
    conf = (REPO / "deploy" / "rabbitmq" / "rabbitmq.conf").read_text()
    longest_ms = int(rendered(("cpu",))["services"]["gateway"]["environment"]["VF_MAX_SESSION_S"])
    longest_ms *= 1000
    assert timeouts_ms(conf) < longest_ms
    for namespace in ("", "acme"):
        services = rendered(("cpu",), (("VF_NAMESPACE", namespace),))["services"]
        pattern, timeout_ms = compose_lease_policy(services)
        assert timeout_ms > longest_ms
        names = Names(namespace)
        assert re.fullmatch(pattern, names.stt_sessions), (namespace, pattern)
        for job_queue in (names.llm_turns, names.tts_jobs, Names("other").stt_sessions):
            assert not re.fullmatch(pattern, job_queue), (namespace, pattern)
    image = rendered(("cpu",))["services"]["rabbitmq"]["image"]
    major, minor = (int(part) for part in image.split(":")[1].split(".")[:2])
    assert (major, minor) >= (3, 12)


# --- TLS ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gateway_is_reached_over_tls(overlay: str) -> None:
    docs = built(overlay)
    (ingress,) = by_kind(docs, "Ingress").values()
    covered = {host for tls in ingress["spec"]["tls"] for host in tls["hosts"]}
    for rule in ingress["spec"]["rules"]:
        assert rule["host"] in covered
        for path in rule["http"]["paths"]:
            assert path["backend"]["service"]["name"] == "voicefleet-gateway"
    for tls in ingress["spec"]["tls"]:
        assert tls["secretName"] in GUIDE.read_text()


def test_compose_tls_profile_terminates_tls_in_front_of_the_gateway() -> None:
    result = run_compose("--env-file", str(ENV_EXAMPLE), "--profile", "tls", "config", "--quiet")
    assert result.returncode == 0, result.stderr
    services = rendered(("cpu", "tls"))["services"]
    proxy = services["tls-proxy"]
    assert any(port["target"] == 443 for port in proxy["ports"])
    assert "tls-proxy" not in rendered(("cpu",))["services"]
    (caddyfile,) = [v["source"] for v in proxy["volumes"] if v["target"] == "/etc/caddy/Caddyfile"]
    assert re.search(r"^\s*reverse_proxy gateway:8000$", Path(caddyfile).read_text(), re.M)


# --- every workload hardened ----------------------------------------------------------------------
def pod_containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    pod = workload["spec"]["template"]["spec"]
    return [*pod.get("initContainers", []), *pod["containers"]]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_runs_unprivileged_on_a_read_only_root(overlay: str) -> None:
    """Not root, no privilege escalation, no capabilities, the runtime's seccomp profile and a
    read-only root filesystem, for every container of every workload (vLLM and Redis included);
    what a process writes goes to a declared volume."""
    found = workloads(built(overlay))
    assert {"voicefleet-gateway", "voicefleet-redis"} <= set(found)
    for name, workload in found.items():
        pod = workload["spec"]["template"]["spec"]
        for spec in pod_containers(workload):
            where = (name, spec["name"])
            # A container's own setting wins over the pod's.
            effective = {**pod.get("securityContext", {}), **spec.get("securityContext", {})}
            own = spec.get("securityContext", {})
            assert effective.get("runAsNonRoot") is True, where
            assert int(effective.get("runAsUser", 0)) > 0, where
            assert effective.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
            assert own.get("readOnlyRootFilesystem") is True, where
            assert own.get("allowPrivilegeEscalation") is False, where
            assert own.get("capabilities", {}).get("drop") == ["ALL"], where
            assert "add" not in own.get("capabilities", {}), where
            assert not own.get("privileged", False), where


@pytest.mark.parametrize("overlay", ["one-box", "multi-node"])
def test_vllm_writes_only_to_its_volumes(overlay: str) -> None:
    """vLLM as a non-root user on a read-only root: its home, caches and temporary files are
    on volumes, and no path it writes is under /root."""
    vllm = workloads(built(overlay))["voicefleet-vllm"]
    spec = container(vllm)
    mounts = [mount["mountPath"] for mount in spec["volumeMounts"]]
    env = env_of(spec)
    for variable in ("HOME", "HF_HOME", "XDG_CACHE_HOME", "VLLM_CACHE_ROOT", "TRITON_CACHE_DIR"):
        path = env[variable]
        assert any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts), variable
    assert "/tmp" in mounts
    assert not any(m.startswith("/root") for m in mounts)
    (claim,) = vllm["spec"]["volumeClaimTemplates"]
    cache = next(m for m in spec["volumeMounts"] if m["name"] == claim["metadata"]["name"])
    assert env["HF_HOME"] == cache["mountPath"]
