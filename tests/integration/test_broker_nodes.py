"""A process given several broker nodes (VF_AMQP_URL, comma-separated) uses one that answers."""

from __future__ import annotations

from fleet.settings import Settings
from fleet.topology import Bus, NodeListConnection, broker_nodes
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
