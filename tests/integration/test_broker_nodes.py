"""A process given several broker nodes (VF_AMQP_URL, comma-separated) uses one that answers."""

from __future__ import annotations

import asyncio
import socket

from fleet.settings import Settings
from fleet.topology import CONNECT_TIMEOUT_S, Bus, NodeListConnection, broker_nodes
from tests.private_services import free_port
from voicefleet.namespaces import delete_namespace


async def test_a_process_whose_first_node_is_down_connects_to_the_next(settings: Settings) -> None:
    down = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    nodes = settings.model_copy(update={"amqp_url": f"{down},{settings.amqp_url}"})
    bus = await Bus.connect(nodes, "test-nodes")
    try:
        assert isinstance(bus.connection, NodeListConnection)
        assert bus.connection.url == broker_nodes(nodes)[1]
        assert bus.available.is_set()
    finally:
        await bus.close()
        await delete_namespace(nodes)


async def test_a_node_that_answers_nothing_is_given_up_for_the_next(settings: Settings) -> None:
    # A host that is gone: the TCP handshake may complete (here: the kernel's backlog of a
    # socket nobody accepts on) but no AMQP greeting ever comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        nodes = settings.model_copy(
            update={"amqp_url": f"amqp://guest:guest@127.0.0.1:{port}/,{settings.amqp_url}"}
        )
        # Without a connection timeout the first attempt would wait forever: fail, not hang.
        async with asyncio.timeout(6 * CONNECT_TIMEOUT_S):
            bus = await Bus.connect(nodes, "test-silent-node")
        try:
            assert isinstance(bus.connection, NodeListConnection)
            assert bus.connection.url == broker_nodes(nodes)[1]
        finally:
            await bus.close()
            await delete_namespace(settings)  # not through the silent node: 5 s less
