"""A whole fleet on a Redis with the manifests' ACL users, each process as its role's user
(issue 10, item 8; docs/security.md, "Redis: one user per role").

The one-box overlay, moved to the fleet's namespace by voicefleet/deploy_names.py's component:
its rendered rules and init script make the ACL file; a private redis-server
loads it. The gateway, STT worker, LLM bridge and TTS worker each connect as their own user, and
two spoken turns (the second one reads the history the first wrote) are answered with nothing
refused: Redis's ACL log stays empty.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as redis

from tests.deploy.test_cluster_rules import render_with
from tests.deploy.test_redis_acl import compose_acl_file, rendered_acl_configmap
from tests.fleet_processes import Fleet, running_fleet
from tests.private_services import private_redis
from tests.speech import spoken_words
from tests.voice_turns import QUESTION, SECOND_QUESTION, voice_turn
from voicefleet import deploy_names
from voicefleet.client import VoiceClient
from voicefleet.deploy_names import ROLES

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def acl_fleet() -> Iterator[tuple[Fleet, str]]:
    namespace = f"t{uuid.uuid4().hex[:10]}"
    with tempfile.TemporaryDirectory(prefix="vf-acl-") as tmp:
        # The overlay moved to the fleet's namespace, as docs/deploy.md tells an operator to.
        base = Path(tmp)
        component = base / "ns"
        component.mkdir()
        (component / "kustomization.yaml").write_text(
            json.dumps(deploy_names.namespace_component(namespace))
        )
        (base / "render").mkdir()
        docs = render_with(base / "render", "one-box", component)
        acl_file, passwords = compose_acl_file(rendered_acl_configmap(docs), base)
        with private_redis("--aclfile", str(acl_file)) as server:

            def url(user: str) -> str:
                return f"redis://{user}:{passwords[user]}@127.0.0.1:{server.port}/0"

            # The fleet's own cleanup runs as admin; each role's processes as their user.
            role_env = {role: {"VF_REDIS_URL": url(f"vf-{role}")} for role in ROLES}
            with running_fleet(
                "redis-roles",
                tap_chat=True,
                namespace=namespace,
                redis_url=url("admin"),
                role_env=role_env,
            ) as fleet:
                yield fleet, url("admin")


async def test_a_conversation_runs_with_each_role_as_its_own_redis_user(
    acl_fleet: tuple[Fleet, str],
) -> None:
    fleet, admin_url = acl_fleet
    roles = {name: name.rsplit("-", 1)[0] for name in fleet.processes if name[-1].isdigit()}
    assert set(roles.values()) == set(ROLES)
    for name, role in roles.items():
        assert f"redis://vf-{role}:" in fleet.processes[name].env["VF_REDIS_URL"], name
    admin = redis.Redis.from_url(admin_url, decode_responses=True)
    try:
        await admin.acl_log_reset()
        client = VoiceClient(fleet.ws_url)
        await client.connect()
        try:
            first = await voice_turn(client, QUESTION)
            second = await voice_turn(client, SECOND_QUESTION)
        finally:
            await client.close()
        assert second.number > first.number
        assert not client.events("error"), client.events("error")
        # The gateway wrote both exchanges; the LLM bridge read the first for the second turn.
        assert len(await fleet.history(client.session_id)) == 2
        assert fleet.chat_tap is not None
        last_request = fleet.chat_tap.chat_messages()[-1]
        users_said = [spoken_words(m["content"]) for m in last_request if m["role"] == "user"]
        assert users_said == [spoken_words(first.heard), spoken_words(second.heard)]
        # Nothing any process asked of Redis was refused.
        assert await admin.acl_log() == []
    finally:
        await admin.aclose()
