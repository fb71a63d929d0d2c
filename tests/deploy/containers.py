"""Run a rendered Kubernetes workload as a container, exactly as its spec declares, and talk to it.

What a kubelet would do, with ``docker run``: the container's args (and command, if any), its
environment from ``env`` (``$(VAR)`` expanded, Secrets and ConfigMaps resolved) and ``envFrom``,
the user, group and fsGroup, a read-only root, dropped capabilities, no privilege escalation,
the memory limit, and only the declared writable mounts (emptyDirs as tmpfs that, like an
emptyDir, allow executables: Docker mounts a tmpfs noexec by default). Then its
readiness probe, polled as the kubelet polls it.

What differs, and why: a pod has a network namespace of its own, but here every container shares
the host's (no bridge exists). So each declared port is moved to a free host port: a value in
the environment or args that names a declared port is replaced by its host port, and a Service
address (``voicefleet-x:port``) resolves to 127.0.0.1 (``--add-host``) and the host port of the
pod behind it. RabbitMQ and Redis are the shared ones on their usual ports.
"""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.deploy.docker import LABEL, DockerError, container_state, logs, run
from tests.private_services import free_port
from tests.speech import likeness, pcm, silence, speech, transcribe_reply, words
from voicefleet.client import VoiceClient

# The broker Service, and the address of each of its pods (what the multi-node overlay lists as
# a cluster's nodes), come from the RabbitMQ cluster operator, so the overlay does not render them.
OPERATOR_SERVICES = (
    "voicefleet-rabbitmq",
    *(f"voicefleet-rabbitmq-server-{n}.voicefleet-rabbitmq-nodes" for n in range(3)),
)
QUESTION = "What is the capital of France?"


def workload_container(workload: Mapping[str, Any]) -> dict[str, Any]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return dict(container)


def fleet_workloads(docs: list[dict[str, Any]], image_prefix: str) -> dict[str, dict[str, Any]]:
    """Every Deployment and StatefulSet that runs the voicefleet image, by name."""
    return {
        doc["metadata"]["name"]: doc
        for doc in docs
        if doc["kind"] in ("Deployment", "StatefulSet")
        and workload_container(doc)["image"].startswith(image_prefix)
    }


@dataclass
class Cluster:
    """The rendered overlay, the test Secrets, and the host port of every declared port."""

    docs: list[dict[str, Any]]
    secrets: dict[str, dict[str, str]]
    namespace: str
    host_ports: dict[tuple[str, int], int] = field(default_factory=dict)

    def _named(self, kind: str) -> dict[str, dict[str, Any]]:
        return {doc["metadata"]["name"]: doc for doc in self.docs if doc["kind"] == kind}

    def host_port(self, workload: str, container_port: int) -> int:
        key = (workload, container_port)
        if key not in self.host_ports:
            self.host_ports[key] = free_port()
        return self.host_ports[key]

    def _service_addresses(self, workloads: Mapping[str, dict[str, Any]]) -> dict[str, str]:
        """`service:port` -> `service:hostport` for every Service backed by one of `workloads`."""
        moved = {}
        for name, service in self._named("Service").items():
            selector = service["spec"].get("selector", {})
            for workload_name, workload in workloads.items():
                labels = workload["spec"]["template"]["metadata"]["labels"]
                if not selector or any(labels.get(k) != v for k, v in selector.items()):
                    continue
                ports = {
                    p["name"]: p["containerPort"] for p in workload_container(workload)["ports"]
                }
                for port in service["spec"]["ports"]:
                    target = port.get("targetPort", port["port"])
                    container_port = ports[target] if isinstance(target, str) else target
                    host = self.host_port(workload_name, container_port)
                    moved[f"{name}:{port['port']}"] = f"{name}:{host}"
        return moved

    def _value_from(self, source: dict[str, Any]) -> str | None:
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            value = self.secrets.get(ref["name"], {}).get(ref["key"])
        else:
            ref = source["configMapKeyRef"]
            value = self._named("ConfigMap").get(ref["name"], {}).get("data", {}).get(ref["key"])
        if value is None and not ref.get("optional", False):
            raise DockerError(f"no test value for {ref}")
        return value

    def environment(
        self, workload_name: str, container: dict[str, Any], moved: Mapping[str, str]
    ) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            env.update(self._named("ConfigMap")[source["configMapRef"]["name"]]["data"])
        for item in container.get("env", []):
            if "valueFrom" in item:
                value = self._value_from(item["valueFrom"])
                if value is None:
                    continue
            else:
                # Kubernetes expands $(VAR) with what is defined before it.
                value = re.sub(
                    r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), str(item.get("value", ""))
                )
            env[item["name"]] = value
        env["VF_NAMESPACE"] = self.namespace  # a namespace of its own on the shared broker
        return {
            name: self._moved(value, workload_name, container, moved) for name, value in env.items()
        }

    def _moved(
        self, value: str, workload_name: str, container: dict[str, Any], moved: Mapping[str, str]
    ) -> str:
        for port in container.get("ports", []):
            if value == str(port["containerPort"]):
                return str(self.host_port(workload_name, port["containerPort"]))
        for address, host in moved.items():
            value = value.replace(address, host)
        return value

    def docker_run_argv(
        self, workload_name: str, workloads: Mapping[str, dict[str, Any]], name: str
    ) -> list[str]:
        workload = workloads[workload_name]
        pod = workload["spec"]["template"]["spec"]
        container = workload_container(workload)
        security = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
        moved = self._service_addresses(workloads)
        argv = ["docker", "run", "-d", "--name", name, "--label", f"{LABEL}={self.namespace}"]
        argv += ["--network", "host"]
        for service in (*self._named("Service"), *OPERATOR_SERVICES):
            argv += ["--add-host", f"{service}:127.0.0.1"]
        argv += ["--user", f"{security['runAsUser']}:{security.get('runAsGroup', 0)}"]
        if "fsGroup" in pod.get("securityContext", {}):
            argv += ["--group-add", str(pod["securityContext"]["fsGroup"])]
        if security.get("readOnlyRootFilesystem"):
            argv.append("--read-only")
        for capability in security.get("capabilities", {}).get("drop", []):
            argv += ["--cap-drop", capability]
        if security.get("allowPrivilegeEscalation") is False:
            argv += ["--security-opt", "no-new-privileges"]
        memory = container.get("resources", {}).get("limits", {}).get("memory")
        if memory:
            argv += ["--memory", memory.replace("Gi", "g").replace("Mi", "m")]
        argv += ["--stop-timeout", str(pod.get("terminationGracePeriodSeconds", 30))]
        volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
        for mount in container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            if "emptyDir" not in volume:
                raise DockerError(f"{workload_name}: only emptyDir volumes run here: {volume}")
            # An emptyDir allows executables; Docker's --tmpfs is noexec unless told otherwise.
            options = ["exec"]
            size = volume["emptyDir"].get("sizeLimit", "").replace("Gi", "g").replace("Mi", "m")
            if size:
                options.append(f"size={size}")
            argv += ["--tmpfs", f"{mount['mountPath']}:{','.join(options)}"]
        for key, value in self.environment(workload_name, container, moved).items():
            argv += ["-e", f"{key}={value}"]
        if container.get("command"):
            argv += ["--entrypoint", container["command"][0]]
        argv.append(container["image"])
        argv += container.get("command", [])[1:]
        argv += [
            self._moved(str(arg), workload_name, container, moved)
            for arg in container.get("args", [])
        ]
        return argv

    def wait_ready(self, workload_name: str, workload: dict[str, Any], name: str) -> None:
        """Poll the readiness probe as the kubelet would, within the startup probe's allowance."""
        container = workload_container(workload)
        probe = container["readinessProbe"]["httpGet"]
        timeout = container["readinessProbe"].get("timeoutSeconds", 1)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        port = ports[probe["port"]] if isinstance(probe["port"], str) else probe["port"]
        url = f"http://127.0.0.1:{self.host_port(workload_name, port)}{probe['path']}"
        startup = container.get("startupProbe", container["readinessProbe"])
        deadline = time.monotonic() + startup.get("periodSeconds", 10) * startup.get(
            "failureThreshold", 3
        )
        while True:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if not container_state(name).get("Running"):
                raise DockerError(f"{name} stopped before it was ready:\n{logs(name)}")
            if time.monotonic() > deadline:
                raise DockerError(f"{name}: {url} not ready in time:\n{logs(name)}")
            time.sleep(1.0)


def ensure_vhost(vhost: str) -> None:
    """The manifests' broker URL names a vhost; give the shared broker's guest user one."""
    existing = run("rabbitmqctl", "-q", "list_vhosts").stdout.split()
    if vhost not in existing:
        run("rabbitmqctl", "-q", "add_vhost", vhost)
    run("rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")


@dataclass(frozen=True)
class Turn:
    transcript: str
    reply_text: str
    heard: str


async def speak_one_turn(ws_url: str, api_key: str) -> Turn:
    """Say the question into the gateway as a browser would, with a token the app server got
    from the gateway's token endpoint; hear the spoken reply."""
    http_url = ws_url.replace("ws://", "http://").removesuffix("/ws/audio")
    async with httpx.AsyncClient(trust_env=False) as http:
        issued = await http.post(
            f"{http_url}/v1/tokens",
            json={"subject": "deploy-test"},
            headers={"Authorization": f"Bearer {api_key}"},
        )
    assert issued.status_code == 200, issued.text
    client = VoiceClient(ws_url)
    await client.connect(token=issued.json()["token"])
    try:
        await client.stream(pcm(silence(0.5), speech(QUESTION), silence(3.0)))
        final = await client.wait_for("transcript", final=True, timeout=120)
        assert isinstance(final.data, dict)
        start = await client.wait_for("audio_start", timeout=180, after=client.index_of(final))
        assert isinstance(start.data, dict)
        turn = start.data["turn"]
        end = await client.wait_for("audio_end", timeout=300, turn=turn)
        audio = b"".join(
            item.data
            for item in client.received[client.index_of(start) : client.index_of(end)]
            if item.kind == "audio" and isinstance(item.data, bytes)
        )
        reply = "".join(e["text"] for e in client.events("assistant_text") if e["turn"] == turn)
        assert not client.events("error"), client.events("error")
    finally:
        await client.close()
    result = Turn(final.data["text"], reply, transcribe_reply(audio))
    assert {"capital", "france"} <= words(result.transcript), result
    assert result.reply_text.strip() and likeness(result.heard, result.reply_text) >= 0.5, result
    return result
