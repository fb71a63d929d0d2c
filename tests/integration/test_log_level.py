"""VF_LOG_LEVEL decides what a real worker process writes to its log.

An LLM bridge process is given a turn while its chat server is unreachable: it logs the turn
starting (info) and the chat request failing (error), and at DEBUG its libraries' chatter too.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from fleet.contracts import TurnRequest
from fleet.settings import Settings
from fleet.state import SessionStore
from fleet.topology import Bus
from tests.fleet_processes import FleetProcess, free_port
from tests.role_processes import logged, role_processes, start_role

pytestmark = pytest.mark.timeout(180)


def levels(process: FleetProcess) -> dict[str, set[str]]:
    """Each level in the process's log, with the events logged at it."""
    found: dict[str, set[str]] = {}
    for entry in process.log_events():
        found.setdefault(str(entry.get("level")), set()).add(str(entry.get("event")))
    return found


async def test_log_level_setting_filters_what_a_worker_logs(
    settings: Settings, bus: Bus, store: SessionStore
) -> None:
    unreachable = f"http://127.0.0.1:{free_port()}/v1"
    seen: dict[str, dict[str, set[str]]] = {}
    with role_processes(settings) as started:
        # One after the other: both would consume the same queue.
        for level in ("WARNING", "DEBUG"):
            session = uuid.uuid4().hex
            await store.open_session(session, "gateway-test", "stream-1", "digest")
            turn = await store.next_turn(session)
            worker = start_role(
                started,
                settings,
                f"llm-{level.lower()}",
                "worker",
                "llm",
                VF_LOG_LEVEL=level,
                VF_LLM_URL=unreachable,
            )
            await bus.publish(TurnRequest(session, turn, "Hello?"))
            await logged(worker, "chat_failed", patience=90, session_id=session)
            assert await asyncio.to_thread(worker.stop) == 0, worker.tail()
            seen[level] = levels(worker)

    quiet, verbose = seen["WARNING"], seen["DEBUG"]
    assert "chat_failed" in quiet["error"], quiet
    assert set(quiet) <= {"warning", "error", "critical"}, quiet
    assert "turn_started" in verbose["info"], verbose
    assert verbose.get("debug"), verbose
