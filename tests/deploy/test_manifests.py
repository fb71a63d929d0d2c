"""The Kubernetes manifests build, validate against their schemas, and keep their promises.

Offline: `kubectl kustomize` (installed by scripts/bootstrap.sh --with-test-tools), the
built-in schemas of kubernetes-validate, and the operators' CRDs from ../shared/schemas/crds.
"""

from __future__ import annotations

import copy
import re
from functools import cache
from typing import Any

import pytest

from tests.deploy.manifests import (
    K8S,
    OVERLAYS,
    REPO,
    CrdSchema,
    kustomize_build,
    load_crd_schemas,
    validate_all,
    validate_resource,
)

FLEET_ROLES = ("gateway", "stt", "llm", "tts")


@cache
def crds() -> dict[tuple[str, str], CrdSchema]:
    return load_crd_schemas()


@cache
def built(overlay: str) -> tuple[dict[str, Any], ...]:
    return tuple(kustomize_build(K8S / "overlays" / overlay))


def by_kind(docs: tuple[dict[str, Any], ...], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def config(docs: tuple[dict[str, Any], ...]) -> dict[str, str]:
    (configmap,) = [
        doc
        for doc in docs
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"].startswith("voicefleet-config")
    ]
    data: dict[str, str] = configmap["data"]
    return data


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    first: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return first


def test_overlays_exist() -> None:
    assert {"one-box", "multi-node", "multi-node-hpa"} <= set(OVERLAYS)


def test_crd_schemas_cover_the_custom_kinds() -> None:
    kinds = {kind for (_, kind) in crds()}
    assert {"ScaledObject", "TriggerAuthentication", "RabbitmqCluster", "User", "Permission"} <= (
        kinds
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_builds_and_every_resource_validates(overlay: str) -> None:
    docs = built(overlay)
    assert docs, f"{overlay} built to nothing"
    problems = validate_all(list(docs), crds())
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_everything_lives_in_the_voicefleet_namespace(overlay: str) -> None:
    for doc in built(overlay):
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "voicefleet", doc["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grace_period_exceeds_the_drain_deadline(overlay: str) -> None:
    docs = built(overlay)
    drain = float(config(docs)["VF_DRAIN_TIMEOUT_S"])
    deployments = by_kind(docs, "Deployment")
    for role in FLEET_ROLES:
        spec = deployments[f"voicefleet-{role}"]["spec"]["template"]["spec"]
        grace = spec["terminationGracePeriodSeconds"]
        pre_stop = 0.0
        hook = container(deployments[f"voicefleet-{role}"]).get("lifecycle", {}).get("preStop")
        if hook:
            pre_stop = float(hook["exec"]["command"][-1])
        assert grace > drain + pre_stop, f"{role}: grace {grace} s <= drain {drain} + {pre_stop}"


# A probe that gives up sooner mistakes a busy process (a long decode, a GC pause) for a dead one.
MIN_PROBE_TIMEOUT_S = 3
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes(overlay: str) -> None:
    docs = built(overlay)
    workloads = {**by_kind(docs, "Deployment"), **by_kind(docs, "StatefulSet")}
    gateway = container(workloads["voicefleet-gateway"])
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for role in ("stt", "llm", "tts"):
        worker = container(workloads[f"voicefleet-{role}"])
        ports = {port["name"]: port["containerPort"] for port in worker["ports"]}
        # fleet/health.py: served by the worker's event loop on VF_HEALTH_PORT.
        assert ports["health"] == int(config(docs)["VF_HEALTH_PORT"]), role
        assert worker["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}, role
        for probe in ("startupProbe", "livenessProbe"):
            assert worker[probe]["httpGet"] == {"path": "/livez", "port": "health"}, (role, probe)
    for name, workload in workloads.items():
        spec = container(workload)
        for probe in PROBES:
            if "httpGet" in spec.get(probe, {}):
                assert spec[probe].get("timeoutSeconds", 1) >= MIN_PROBE_TIMEOUT_S, (name, probe)
    if "voicefleet-vllm" in workloads:  # every overlay but cpu-box
        vllm = container(workloads["voicefleet-vllm"])
        assert vllm["readinessProbe"]["httpGet"]["path"] == "/health"
        assert vllm["resources"]["limits"]["nvidia.com/gpu"] == 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_fleet_pods_run_as_non_root_with_limits(overlay: str) -> None:
    deployments = by_kind(built(overlay), "Deployment")
    for role in FLEET_ROLES:
        deployment = deployments[f"voicefleet-{role}"]
        assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
        resources = container(deployment)["resources"]
        assert resources["requests"]["cpu"] and resources["limits"]["memory"], role


def components_of(overlay: str) -> str:
    return (K8S / "overlays" / overlay / "kustomization.yaml").read_text()


GPU_OVERLAYS = [
    overlay
    for overlay in OVERLAYS
    if re.search(r"components/gpu-(workers|stt)\b", components_of(overlay))
]
# TTS as its own service: GPU provider servers, TTS workers on CPU speaking through them.
PROVIDER_OVERLAYS = [o for o in OVERLAYS if "components/tts-provider" in components_of(o)]


def test_only_cpu_box_runs_without_a_gpu() -> None:
    assert set(OVERLAYS) - set(GPU_OVERLAYS) == {"cpu-box"}
    assert PROVIDER_OVERLAYS == ["tts-provider"]


def env_values(spec: dict[str, Any]) -> dict[str, str | None]:
    return {item["name"]: item.get("value") for item in spec.get("env", [])}


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_gpu_workers(overlay: str) -> None:
    deployments = by_kind(built(overlay), "Deployment")
    gpu_tts = (
        ("tts-provider", "--device", "cuda")
        if overlay in PROVIDER_OVERLAYS
        else ("tts", "VF_TTS_EXECUTION_PROVIDER", "CUDAExecutionProvider")
    )
    for role, setting, value in (("stt", "VF_STT_DEVICE", "cuda"), gpu_tts):
        spec = container(deployments[f"voicefleet-{role}"])
        if setting.startswith("--"):
            assert spec["args"][spec["args"].index(setting) + 1] == value
        else:
            assert env_values(spec)[setting] == value
        assert spec["image"].endswith("-cuda")
        assert spec["resources"]["limits"]["nvidia.com/gpu"] == 1


@pytest.mark.parametrize("overlay", PROVIDER_OVERLAYS)
def test_tts_workers_on_cpu_speak_through_the_provider_service_scaled_on_its_own(
    overlay: str,
) -> None:
    docs = built(overlay)
    deployments = by_kind(docs, "Deployment")
    worker = container(deployments["voicefleet-tts"])
    assert worker["image"].endswith("-cpu")
    assert "nvidia.com/gpu" not in worker["resources"]["limits"]
    env = env_values(worker)
    assert env["VF_TTS_PROVIDERS"] == "remote,local"  # their own Kokoro as the fallback
    assert "VF_TTS_EXECUTION_PROVIDER" not in env
    # The URL names the provider Service and its port, which leads to the servers' port.
    service = by_kind(docs, "Service")["voicefleet-tts-provider"]
    (port,) = service["spec"]["ports"]
    assert env["VF_TTS_PROVIDER_URL"] == f"http://{service['metadata']['name']}:{port['port']}"
    provider = deployments["voicefleet-tts-provider"]
    server = container(provider)
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert port["targetPort"] in ports
    assert server["args"][server["args"].index("--port") + 1] == str(ports[port["targetPort"]])
    assert server["args"][server["args"].index("--host") + 1] == "0.0.0.0"
    labels = provider["spec"]["template"]["metadata"]["labels"]
    assert all(labels[k] == v for k, v in service["spec"]["selector"].items())
    for probe in PROBES:
        assert server[probe]["httpGet"] == {"path": "/tts/health", "port": "http"}, probe
    # Its own replica count, which no autoscaler of the workers' overrides.
    assert provider["spec"]["replicas"] >= 2
    scalers = [d for d in docs if d["kind"] in ("ScaledObject", "HorizontalPodAutoscaler")]
    assert "voicefleet-tts-provider" not in {s["spec"]["scaleTargetRef"]["name"] for s in scalers}
    assert "voicefleet-tts-provider" in by_kind(docs, "PodDisruptionBudget")
    # No authentication of its own: only the TTS workers reach it.
    policy = by_kind(docs, "NetworkPolicy")["voicefleet-tts-provider-ingress"]
    assert policy["spec"]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "voicefleet",
        "app.kubernetes.io/component": "tts-provider",
    }
    (rule,) = policy["spec"]["ingress"]
    (peer,) = rule["from"]
    assert peer == {
        "podSelector": {
            "matchLabels": {
                "app.kubernetes.io/name": "voicefleet",
                "app.kubernetes.io/component": "tts",
            }
        }
    }
    assert [p["port"] for p in rule["ports"]] == [ports["http"]]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_are_references_and_documented(overlay: str) -> None:
    docs = built(overlay)
    assert not [doc for doc in docs if doc["kind"] == "Secret"], "no Secret is committed"
    referenced = set()
    text = repr(docs)
    referenced.update(re.findall(r"'secretKeyRef': \{'name': '([^']+)'", text))
    referenced.update(re.findall(r"'importCredentialsSecret': \{'name': '([^']+)'", text))
    referenced.update(
        re.findall(r"'secretTargetRef': \[.*?'name': '([^']+)'", text)  # TriggerAuthentication
    )
    guide = (REPO / "docs" / "deploy.md").read_text()
    missing = sorted(name for name in referenced if name not in guide)
    assert not missing, f"Secrets referenced but not explained in docs/deploy.md: {missing}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gateway_cannot_start_without_client_auth(overlay: str) -> None:
    """VF_AUTH_JWT_SECRET and VF_AUTH_API_KEY come from required Secret keys (docs/security.md);
    the gateway listens on every interface, where it refuses to start without auth anyway."""
    gateway = container(by_kind(built(overlay), "Deployment")["voicefleet-gateway"])
    refs = {
        item["name"]: item["valueFrom"]["secretKeyRef"]
        for item in gateway["env"]
        if "secretKeyRef" in item.get("valueFrom", {})
    }
    guide = (REPO / "docs" / "deploy.md").read_text()
    for setting, key in (
        ("VF_AUTH_JWT_SECRET", "auth-jwt-secret"),
        ("VF_AUTH_API_KEY", "auth-api-key"),
    ):
        assert refs[setting]["name"] == "voicefleet-secrets"
        assert refs[setting]["key"] == key
        assert not refs[setting].get("optional", False), setting
        assert f"--from-literal={key}=" in guide, key
    assert "VF_ALLOW_ANONYMOUS" not in repr(built(overlay))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rabbitmq_persists_with_a_user_per_role(overlay: str) -> None:
    docs = built(overlay)
    (cluster,) = by_kind(docs, "RabbitmqCluster").values()
    assert cluster["spec"]["persistence"]["storage"]
    users = by_kind(docs, "User")
    permissions = by_kind(docs, "Permission")
    for role in (*FLEET_ROLES, "keda"):
        assert f"voicefleet-{role}" in users and f"voicefleet-{role}" in permissions, role


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_broker_cluster_has_replicated_work_queues_and_every_worker_knows_its_nodes(
    overlay: str,
) -> None:
    """What tests/chaos/test_node_loss.py proved: quorum work queues, every node in the workers'
    VF_AMQP_URL; the gateways keep the client Service (spread over the nodes); one node keeps
    classic queues (faster hops)."""
    docs = built(overlay)
    (cluster,) = by_kind(docs, "RabbitmqCluster").values()
    nodes = cluster["spec"]["replicas"]
    assert config(docs)["VF_WORK_QUEUE_TYPE"] == ("quorum" if nodes >= 3 else "classic")
    deployments = by_kind(docs, "Deployment")
    for role in FLEET_ROLES:
        env = {
            e["name"]: e.get("value") for e in container(deployments[f"voicefleet-{role}"])["env"]
        }
        hosts = [url.split("@", 1)[1].split(":", 1)[0] for url in env["VF_AMQP_URL"].split(",")]
        if nodes >= 3 and role != "gateway":
            assert sorted(hosts) == [
                f"voicefleet-rabbitmq-server-{n}.voicefleet-rabbitmq-nodes" for n in range(nodes)
            ], (role, hosts)
        else:
            assert hosts == ["voicefleet-rabbitmq"], (role, hosts)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_redis_persists(overlay: str) -> None:
    statefulset = by_kind(built(overlay), "StatefulSet")["voicefleet-redis"]
    redis = statefulset["spec"]["template"]["spec"]["containers"][0]
    assert "--appendonly yes" in " ".join(redis["args"])
    assert statefulset["spec"]["volumeClaimTemplates"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_fleet_reaches_broker_and_redis(overlay: str) -> None:
    policies = by_kind(built(overlay), "NetworkPolicy")
    assert policies["voicefleet-default-deny-ingress"]["spec"]["podSelector"] == {}
    for name, port in (("voicefleet-rabbitmq-ingress", 5672), ("voicefleet-redis-ingress", 6379)):
        rules = [
            rule
            for rule in policies[name]["spec"]["ingress"]
            if any(p["port"] == port for p in rule["ports"])
        ]
        assert len(rules) == 1, name
        (peer,) = rules[0]["from"]
        assert "namespaceSelector" not in peer
        (expression,) = peer["podSelector"]["matchExpressions"]
        assert set(expression["values"]) == set(FLEET_ROLES)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscaling(overlay: str) -> None:
    docs = built(overlay)
    deployments = by_kind(docs, "Deployment")
    scaled = by_kind(docs, "ScaledObject")
    hpas = by_kind(docs, "HorizontalPodAutoscaler")
    assert bool(scaled) != bool(hpas), "KEDA or the HPA fallback, not both"
    if scaled:
        queues = {}
        for item in scaled.values():
            assert item["spec"]["scaleTargetRef"]["name"] in deployments
            (trigger,) = item["spec"]["triggers"]
            assert trigger["type"] == "rabbitmq"
            queues[item["spec"]["scaleTargetRef"]["name"]] = trigger["metadata"]["queueName"]
        # Which queue each role scales on; the names themselves: test_cluster_rules.py.
        assert set(queues) == {"voicefleet-stt", "voicefleet-llm", "voicefleet-tts"}
        auths = by_kind(docs, "TriggerAuthentication")
        for item in scaled.values():
            assert item["spec"]["triggers"][0]["authenticationRef"]["name"] in auths
    else:
        targets = {hpa["spec"]["scaleTargetRef"]["name"] for hpa in hpas.values()}
        assert targets == {"voicefleet-stt", "voicefleet-llm", "voicefleet-tts"}


def test_pod_disruption_budgets_cover_every_role() -> None:
    for overlay in OVERLAYS:
        pdbs = by_kind(built(overlay), "PodDisruptionBudget")
        assert {f"voicefleet-{role}" for role in FLEET_ROLES} <= set(pdbs), overlay


def test_multi_node_runs_several_gateways_behind_a_websocket_ingress() -> None:
    docs = built("multi-node")
    assert by_kind(docs, "Deployment")["voicefleet-gateway"]["spec"]["replicas"] > 1
    (ingress,) = by_kind(docs, "Ingress").values()
    annotations = ingress["metadata"]["annotations"]
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= int(
        config(docs)["VF_MAX_SESSION_S"]
    )
    assert by_kind(docs, "RabbitmqCluster")["voicefleet-rabbitmq"]["spec"]["replicas"] == 3


def test_one_box_leaves_gpu_room_for_the_workers() -> None:
    vllm = container(by_kind(built("one-box"), "StatefulSet")["voicefleet-vllm"])
    args = vllm["args"]
    assert float(args[args.index("--gpu-memory-utilization") + 1]) <= 0.6


# --- the validator itself must fail broken manifests ---------------------------------------


def _scaled_object() -> dict[str, Any]:
    return copy.deepcopy(by_kind(built("multi-node"), "ScaledObject")["voicefleet-tts"])


def test_validator_rejects_a_typo_in_a_scaled_object() -> None:
    doc = _scaled_object()
    doc["spec"]["maxReplicaCont"] = doc["spec"].pop("maxReplicaCount")
    assert any("maxReplicaCont" in error for error in validate_resource(doc, crds()))
    nested = _scaled_object()
    nested["spec"]["triggers"][0]["authRef"] = nested["spec"]["triggers"][0].pop(
        "authenticationRef"
    )
    assert any("authRef" in error for error in validate_resource(nested, crds()))


def test_validator_rejects_a_wrong_type_or_api_version() -> None:
    doc = _scaled_object()
    doc["spec"]["maxReplicaCount"] = "eight"
    assert validate_resource(doc, crds())
    doc = _scaled_object()
    doc["apiVersion"] = "keda.sh/v1beta1"
    assert validate_resource(doc, crds())
    deployment = copy.deepcopy(by_kind(built("one-box"), "Deployment")["voicefleet-gateway"])
    deployment["apiVersion"] = "apps/v1beta9"
    assert validate_resource(deployment, crds())
    deployment = copy.deepcopy(by_kind(built("one-box"), "Deployment")["voicefleet-gateway"])
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 45
    assert validate_resource(deployment, crds())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_variable_a_container_expands_is_defined_before_it(overlay: str) -> None:
    """Kubernetes expands ``$(NAME)`` in an env value only with a NAME defined earlier in the
    list; later, the text stays as it is (a broker URL with the literal ``$(AMQP_USER)`` in it)."""
    for kind in ("Deployment", "StatefulSet"):
        for name, workload in by_kind(built(overlay), kind).items():
            for spec in workload["spec"]["template"]["spec"]["containers"]:
                defined: set[str] = set()
                for variable in spec.get("env", []):
                    used = set(re.findall(r"\$\((\w+)\)", str(variable.get("value", ""))))
                    assert used <= defined, (name, variable["name"], sorted(used - defined))
                    defined.add(variable["name"])
