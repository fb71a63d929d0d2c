"""The broker and Redis names the deployment manifests carry, derived from the fleet's own naming.

KEDA scales on queue names, RabbitMQ grants rights by name patterns, the session lease's
consumer-timeout policy matches a queue name, and each role's Redis user may touch only its keys
(key patterns from ``fleet.state``): all of them must follow ``fleet.topology.Names`` and
``fleet.state.key_prefix``, including the ``VF_NAMESPACE`` prefix. ``k8s/base`` holds them for an
empty namespace (the deployment tests compare the two). For a fleet with a namespace, this prints
a kustomize Component that sets ``VF_NAMESPACE`` and renames every one of them:

    mkdir -p k8s/components/ns-acme
    python -m voicefleet.deploy_names acme > k8s/components/ns-acme/kustomization.yaml
    # then list ../../components/ns-acme under `components:` in your overlay

(JSON is YAML, so the output needs no YAML library.)
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from typing import Any

from fleet.state import key_prefix
from fleet.topology import Names

# Autoscaled roles and the work queue whose length says how busy they are.
KEDA_QUEUES: dict[str, Callable[[Names], str]] = {
    "stt": lambda names: names.stt_sessions,
    "llm": lambda names: names.llm_turns,
    "tts": lambda names: names.tts_jobs,
}
# Queues a role creates for itself, one per process (their names end in the process id).
OWN_QUEUES: dict[str, Callable[[Names], str]] = {
    "gateway": lambda names: names.gateway_queue(""),
    "stt": lambda names: names.stt_queue(""),
}
ROLES = ("gateway", "stt", "llm", "tts")
LEASE_POLICY = "voicefleet-stt-lease"


def shared_names(names: Names) -> list[str]:
    """What every process declares at start (fleet.topology.Bus.declare) and uses."""
    return [
        names.events_exchange,
        names.audio_exchange,
        names.dead_letter_exchange,
        names.dead_letter_queue,
        names.transcripts_stream,
        names.stt_sessions,
        names.llm_turns,
        names.tts_jobs,
    ]


def permission_patterns(names: Names, role: str) -> dict[str, str]:
    """RabbitMQ configure/write/read patterns: exactly the names `role` uses, nothing else."""
    alternatives = [re.escape(name) for name in shared_names(names)]
    if role in OWN_QUEUES:
        alternatives.append(re.escape(OWN_QUEUES[role](names)) + ".+")
    used = "|".join(alternatives)
    # Publishing to a work queue goes through the default exchange.
    return {
        "configure": f"^({used})$",
        "write": f"^(amq\\.default|{used})$",
        "read": f"^({used})$",
    }


# What each role runs on Redis (fleet/state.py: SessionStore, TurnWatch; fleet/health.py's PING),
# and nothing else. Sessions belong to the gateway; the workers read the parts they need, count
# their job deliveries and listen for turn changes. TTS workers publish what they offer
# (``TtsOffers``), which the gateway reads (and drops the expired from the index of).
REDIS_COMMANDS: dict[str, tuple[str, ...]] = {
    "gateway": (
        "ping",
        "exists",
        "get",
        "incrby",
        "hget",
        "hset",
        "hsetnx",
        "hdel",
        "rpush",
        "rpop",
        "ltrim",
        "lrange",
        "expire",
        "del",
        "eval",
        "evalsha",
        "multi",
        "exec",
        "discard",
        "publish",
        "smembers",
        "mget",
        "srem",
    ),
    "stt": ("ping", "exists", "hget", "incrby", "expire", "multi", "exec", "discard"),
    "llm": ("ping", "get", "lrange", "incrby", "expire", "multi", "exec", "discard"),
    "tts": (
        "ping",
        "get",
        "incrby",
        "expire",
        "multi",
        "exec",
        "discard",
        "set",
        "sadd",
        "srem",
        "del",
    ),
}
# Key patterns per role, ``{p}`` standing for the fleet's key prefix. ``%R~``: read only.
REDIS_KEYS: dict[str, tuple[str, ...]] = {
    "gateway": ("~{p}:session:*", "%R~{p}:tts:offer:*", "~{p}:tts:offers"),
    "stt": ("%R~{p}:session:*:info", "~{p}:deliveries:*"),
    "llm": ("%R~{p}:session:*:turn", "%R~{p}:session:*:history", "~{p}:deliveries:*"),
    "tts": ("%R~{p}:session:*:turn", "~{p}:deliveries:*", "~{p}:tts:offer:*", "~{p}:tts:offers"),
}
REDIS_ACL_CONFIGMAP = "voicefleet-redis-acl"


def _glob_escape(text: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


def redis_acl_rules(namespace: str, role: str) -> str:
    """The Redis ACL rules of ``role``'s user (without its name and password): its keys, the
    turn-notice channel, and its commands (workers subscribe to the channel, the gateway
    publishes on it)."""
    if any(c.isspace() for c in namespace):
        raise ValueError(f"a namespace without spaces, not {namespace!r}")
    prefix = _glob_escape(key_prefix(namespace))
    keys = [pattern.format(p=prefix) for pattern in REDIS_KEYS[role]]
    commands = list(REDIS_COMMANDS[role])
    if role != "gateway":
        commands += ["subscribe", "unsubscribe"]
    return " ".join(
        [
            "resetkeys",
            "resetchannels",
            "-@all",
            *keys,
            f"&{prefix}:turns",
            *(f"+{command}" for command in commands),
        ]
    )


def lease_policy_pattern(names: Names) -> str:
    """The policy giving the session lease queue, and only it, its long consumer timeout."""
    return f"^{re.escape(names.stt_sessions)}$"


def namespace_component(namespace: str) -> dict[str, Any]:
    """A kustomize Component moving a rendered overlay to `namespace`'s broker names."""
    names = Names(namespace)

    def patch(kind: str, name: str, path: str, value: Any) -> dict[str, Any]:
        operations = [{"op": "replace", "path": path, "value": value}]
        return {"target": {"kind": kind, "name": name}, "patch": json.dumps(operations)}

    patches = [
        patch(
            "ScaledObject",
            f"voicefleet-{role}",
            "/spec/triggers/0/metadata/queueName",
            queue(names),
        )
        for role, queue in KEDA_QUEUES.items()
    ]
    patches += [
        patch(
            "Permission",
            f"voicefleet-{role}",
            "/spec/permissions",
            permission_patterns(names, role),
        )
        for role in ROLES
    ]
    patches.append(patch("Policy", LEASE_POLICY, "/spec/pattern", lease_policy_pattern(names)))
    return {
        "apiVersion": "kustomize.config.k8s.io/v1alpha1",
        "kind": "Component",
        "configMapGenerator": [
            {
                "name": "voicefleet-config",
                "behavior": "merge",
                "literals": [f"VF_NAMESPACE={namespace}"],
            },
            {
                "name": REDIS_ACL_CONFIGMAP,
                "behavior": "merge",
                "literals": [f"{role}={redis_acl_rules(namespace, role)}" for role in ROLES],
            },
        ],
        "patches": patches,
    }


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0]:
        print("usage: python -m voicefleet.deploy_names NAMESPACE", file=sys.stderr)
        return 2
    print(json.dumps(namespace_component(argv[0]), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
