"""What is reachable from outside (issue 10, item 8): the page, its files, the socket and token
issuing; never /metrics, /docs or the probes. Metrics ports admit the monitoring namespace only.

The routes are checked against the gateway's own route table, so a new internal route is caught
as soon as it is added.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from starlette.routing import Mount, Route, WebSocketRoute

from fleet.settings import Settings
from gateway.app import create_app
from tests.deploy.manifests import OVERLAYS, REPO
from tests.deploy.test_manifests import built, by_kind

# What a browser and the app server in front of it need from the gateway.
PUBLIC = ("/", "/static", "/ws/audio", "/v1/tokens", "/tts/providers")
CADDYFILE = REPO / "deploy" / "caddy" / "Caddyfile"
MONITORING = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}


def gateway_paths(**settings: Any) -> set[str]:
    app = create_app(Settings(**settings), "exposure-test")
    return {route.path for route in app.routes if isinstance(route, Route | WebSocketRoute | Mount)}


def internal_paths() -> set[str]:
    """Every path the gateway can serve (OpenAPI pages and metrics switched on) but the public
    ones; /v1/tokens counts as public whether or not this gateway has it yet."""
    every = gateway_paths(gateway_docs=True, metrics_port=0)
    internal = {path for path in every if path not in PUBLIC}
    assert {"/metrics", "/docs", "/openapi.json", "/redoc", "/healthz", "/readyz"} <= internal
    return internal


def samples(path: str) -> list[str]:
    """Requests that reach ``path`` on the gateway: the path and what lies under it."""
    return [path, path.rstrip("/") + "/x"] if path != "/" else [path]


# --- the gateway itself ---------------------------------------------------------------------------
def test_gateway_serves_no_openapi_pages_unless_asked() -> None:
    served = gateway_paths()
    assert not {"/docs", "/redoc", "/openapi.json"} & served
    assert {"/docs", "/redoc", "/openapi.json"} <= gateway_paths(gateway_docs=True)


def test_gateway_serves_metrics_on_the_http_port_only_without_a_metrics_port() -> None:
    assert "/metrics" in gateway_paths(metrics_port=0)
    assert "/metrics" not in gateway_paths(metrics_port=9100)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_pods_have_a_metrics_port(overlay: str) -> None:
    docs = built(overlay)
    config = next(d for d in docs if d["kind"] == "ConfigMap" and "VF_METRICS_PORT" in d["data"])
    port = int(config["data"]["VF_METRICS_PORT"])
    assert port != 8000 and "/metrics" not in gateway_paths(metrics_port=port)
    gateway = by_kind(docs, "Deployment")["voicefleet-gateway"]
    annotations = gateway["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port)


# --- the Ingress ----------------------------------------------------------------------------------
def ingress_routes(ingress: dict[str, Any], request_path: str) -> bool:
    """Whether the Ingress sends ``request_path`` anywhere (Kubernetes' Exact and Prefix rules:
    a prefix matches whole path elements)."""
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            kind, value = path["pathType"], path["path"]
            assert kind in ("Exact", "Prefix"), f"{kind}: matching left to the controller"
            if kind == "Exact" and request_path == value:
                return True
            prefix = value.rstrip("/")
            if kind == "Prefix" and (
                request_path == value or request_path.startswith(prefix + "/")
            ):
                return True
    return False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ingress_routes_only_the_public_paths(overlay: str) -> None:
    (ingress,) = by_kind(built(overlay), "Ingress").values()
    for path in PUBLIC:
        assert ingress_routes(ingress, path), path
    assert ingress_routes(ingress, "/static/app.js")
    for path in internal_paths():
        for request in samples(path):
            assert not ingress_routes(ingress, request), request


# --- the compose TLS proxy ------------------------------------------------------------------------
def caddy_proxied_patterns(text: str) -> list[str]:
    """The path patterns the Caddyfile proxies to the gateway: every `reverse_proxy` must sit in
    a `handle @matcher` block whose matcher lists paths."""
    matchers = {m[1]: m[2].split() for m in re.finditer(r"^\s*@(\w+)\s+path\s+(.+)$", text, re.M)}
    patterns: list[str] = []
    block: str | None = None
    for line in text.splitlines():
        stripped = line.split("#", 1)[0].strip()
        if found := re.fullmatch(r"handle\s+@(\w+)\s*\{", stripped):
            block = found[1]
        elif re.fullmatch(r"handle\s*\{", stripped):
            block = ""
        elif stripped.startswith("reverse_proxy"):
            assert block, f"proxied without a path matcher: {line}"
            patterns += matchers[block]
    return patterns


def caddy_matches(pattern: str, path: str) -> bool:
    # Caddy's path matcher: exact, or `*` as a wildcard.
    return re.fullmatch(re.escape(pattern).replace(r"\*", ".*"), path) is not None


def test_compose_tls_proxy_proxies_only_the_public_paths() -> None:
    patterns = caddy_proxied_patterns(CADDYFILE.read_text())
    # Caddy's `/static/*` covers the files; `/static` itself is no page.
    for path in ("/", "/ws/audio", "/v1/tokens", "/tts/providers", "/static/app.js"):
        assert any(caddy_matches(q, path) for q in patterns), path
    for path in internal_paths():
        for request in samples(path):
            assert not any(caddy_matches(q, request) for q in patterns), request


# --- network policies: metrics from the monitoring namespace only ---------------------------------
def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        value = labels.get(expression["key"])
        if expression["operator"] == "In" and value not in expression["values"]:
            return False
        if expression["operator"] == "NotIn" and value in expression["values"]:
            return False
        if expression["operator"] == "Exists" and value is None:
            return False
    return True


def admitted_from(docs: tuple[dict[str, Any], ...], labels: dict[str, str], port: int) -> list[Any]:
    """Every `from` peer that some NetworkPolicy admits to ``port`` of a pod with ``labels``;
    None stands for "from anywhere"."""
    peers: list[Any] = []
    for policy in by_kind(docs, "NetworkPolicy").values():
        if not selects(policy["spec"]["podSelector"], labels):
            continue
        for rule in policy["spec"].get("ingress", []):
            ports = rule.get("ports")
            covered = ports is None or any(
                p["port"] <= port <= p.get("endPort", p["port"]) for p in ports
            )
            if covered:
                peers += rule.get("from") or [None]
    return peers


def metrics_ports(workload: dict[str, Any]) -> set[int]:
    pod = workload["spec"]["template"]
    ports = {
        p["containerPort"]
        for c in pod["spec"]["containers"]
        for p in c.get("ports", [])
        if p.get("name") == "metrics"
    }
    if "prometheus.io/port" in pod["metadata"].get("annotations", {}):
        ports.add(int(pod["metadata"]["annotations"]["prometheus.io/port"]))
    return ports


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_metrics_ports_admit_only_the_monitoring_namespace(overlay: str) -> None:
    docs = built(overlay)
    checked = 0
    for kind in ("Deployment", "StatefulSet"):
        for name, workload in by_kind(docs, kind).items():
            labels = workload["spec"]["template"]["metadata"]["labels"]
            for port in metrics_ports(workload):
                peers = admitted_from(docs, labels, port)
                if name == "voicefleet-vllm":
                    # vLLM serves its API and /metrics on one port: the bridges call the API.
                    peers = [
                        p
                        for p in peers
                        if p
                        != {
                            "podSelector": {
                                "matchLabels": {
                                    "app.kubernetes.io/name": "voicefleet",
                                    "app.kubernetes.io/component": "llm",
                                }
                            }
                        }
                    ]
                assert peers and all(p == MONITORING for p in peers), (name, port, peers)
                checked += 1
    assert checked >= 4


def test_docs_name_the_monitoring_namespace() -> None:
    guide = (REPO / "docs" / "deploy.md").read_text()
    assert "kubernetes.io/metadata.name" in guide and "monitoring" in guide
    assert Path(REPO / "docs" / "security.md").read_text().count("/metrics") >= 1
