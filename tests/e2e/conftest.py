from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fleet_processes import Fleet, running_fleet


@pytest.fixture(scope="session")
def fleet() -> Iterator[Fleet]:
    """One whole fleet (gateway, one worker of each kind, chat server) for the e2e suite.

    A :class:`Relay` shows what the LLM bridge asks the chat server (``fleet.chat_tap``).
    """
    with running_fleet("e2e", tap_chat=True) as running:
        yield running
