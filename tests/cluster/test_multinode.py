"""Placement, agents per node, holder death and node loss on a 1 head + 3 worker cluster."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import ray
from ray.cluster_utils import Cluster

from anya_resource import ResourceManager, SyncResourceManager
from anya_resource.actors.naming import NAMESPACE, agent_name
from tests.raytools import GiB, Loop, deployed, eventually, local_cluster, node_of

pytestmark = [pytest.mark.ray, pytest.mark.cluster]

HEARTBEAT = 0.2
POLICY = {
    "heartbeat_s": HEARTBEAT,
    "reserve": {"memory": 0, "cpu": 0},
    "lease": {"default_ttl": 20.0, "renew_every": 5.0},
}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with local_cluster(workers=3, cpus=2, memory=2 * GiB) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def loop(cluster: Cluster) -> Loop:
    return Loop()


@pytest.fixture(scope="module")
def manager(loop: Loop) -> ResourceManager:
    return deployed(loop, POLICY, nodes=4)


def alive_nodes() -> list[str]:
    return [n["NodeID"] for n in ray.nodes() if n["Alive"]]


def test_one_agent_per_node_pinned_to_it(manager: ResourceManager) -> None:
    for node_id in alive_nodes():
        agent = ray.get_actor(agent_name(node_id), namespace=NAMESPACE)
        status = ray.get(agent.status.remote())
        assert status["node_id"] == node_id == status["running_on"]


def test_node_constraint_is_honoured(manager: ResourceManager, loop: Loop) -> None:
    target = node_of("node2")

    async def scenario() -> str:
        async with manager.acquire({"cpu": 1}, node=target) as lease:
            return lease.node_id

    assert loop.run(scenario()) == target


@ray.remote(num_cpus=0)
def allocate_on_own_node() -> tuple[str, str]:
    sync = SyncResourceManager.connect()
    with sync.allocate_memory("64MiB") as lease:
        here = ray.get_runtime_context().get_node_id()
        result = (lease.node_id, here)
    sync.close()
    return result


def test_allocate_memory_defaults_to_the_callers_node(manager: ResourceManager) -> None:
    lease_node, task_node = ray.get(
        allocate_on_own_node.options(resources={"node3": 0.01}).remote()
    )
    assert lease_node == task_node == node_of("node3")


def test_spread_places_work_on_every_node(manager: ResourceManager, loop: Loop) -> None:
    async def scenario() -> dict[str, int]:
        leases = [await manager.acquire({"cpu": 1}) for _ in range(8)]
        counts: dict[str, int] = {}
        for lease in leases:
            counts[lease.node_id] = counts.get(lease.node_id, 0) + 1
        for lease in leases:
            await manager.release(lease)
        return counts

    counts = loop.run(scenario())
    assert sorted(counts.values()) == [2, 2, 2, 2], counts


@ray.remote(num_cpus=0)
class RemoteHolder:
    async def hold(self) -> dict[str, Any]:
        self.manager = await ResourceManager.new()
        self.lease = await self.manager.acquire({"memory": "64MiB"}, ttl=20)
        return {"lease_id": self.lease.lease_id, "node": ray.get_runtime_context().get_node_id()}


def test_holder_on_a_worker_node_killed_is_reclaimed_by_its_agent(
    manager: ResourceManager, loop: Loop
) -> None:
    holder = RemoteHolder.options(resources={"node1": 0.01}).remote()  # type: ignore[attr-defined]
    info = ray.get(holder.hold.remote())
    assert info["node"] == node_of("node1")
    ray.kill(holder)

    async def reclaimed() -> bool:
        return all(row["lease_id"] != info["lease_id"] for row in await manager.leases())

    # Far less than the 20 s TTL: the agent on node1 saw the process go.
    loop.run(eventually(reclaimed, timeout=10))


def test_removed_node_is_reclaimed_and_added_node_gets_an_agent_and_grants(
    cluster: Cluster, manager: ResourceManager, loop: Loop
) -> None:
    victim_id = node_of("node3")
    victim = next(n for n in cluster.worker_nodes if n.node_id == victim_id)

    async def hold_on_victim() -> str:
        lease = await manager.acquire({"cpu": 2}, node=victim_id)
        return lease.lease_id

    lease_id = loop.run(hold_on_victim())
    cluster.remove_node(victim)

    async def reclaimed() -> bool:
        snap = await manager.snapshot()
        return victim_id not in snap["nodes"] and all(
            row["lease_id"] != lease_id for row in await manager.leases()
        )

    loop.run(eventually(reclaimed, timeout=30))

    cluster.add_node(num_cpus=2, memory=2 * GiB, resources={"node4": 1})
    cluster.wait_for_nodes()
    newcomer = node_of("node4")

    async def agent_reports() -> bool:
        health = await manager.check_resource_health()
        return any(node.node_id == newcomer for node in health.nodes)

    loop.run(eventually(agent_reports, timeout=30))

    async def grant_there() -> str:
        async with manager.acquire({"cpu": 1}, node=newcomer, timeout=10) as lease:
            await asyncio.sleep(0)
            return lease.node_id

    assert loop.run(grant_there()) == newcomer
