"""Gang leases reserved in Ray, on a real 1 head + 3 worker cluster of 2 CPUs each.

Each strategy places as Ray's would and Ray's placement group holds each bundle where
the lease says; a gang waits holding nothing, then is granted whole; plain Ray work
cannot take what a lease reserved, and what plain work holds is not granted; ``@leased``
tasks run in their lease's group; a gang is preempted as a unit, with its grace; a
worker node lost under a gang ends the whole gang; no placement group outlives its lease.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
import ray
from ray.cluster_utils import Cluster
from ray.util.placement_group import placement_group_table

from anya_resource import ResourceManager, leased
from anya_resource.actors.reservations import GROUP_PREFIX, group_name
from anya_resource.lease import Lease
from tests.raytools import GiB, Loop, deployed, eventually, local_cluster, node_of

pytestmark = [pytest.mark.ray, pytest.mark.cluster]

HEARTBEAT = 0.2
GRACE = 1.0
POLICY = {
    "heartbeat_s": HEARTBEAT,
    "reserve": {"memory": 0, "cpu": 0},
    "lease": {"default_ttl": 20.0, "renew_every": 5.0, "preemption_grace_s": GRACE},
    "aging": {"per_second": 0, "max_boost": 0},
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


def groups_of_ours() -> dict[str, dict[str, Any]]:
    """Ray's placement groups named after a lease, not removed: name -> row."""
    return {
        row["name"]: row
        for row in placement_group_table().values()
        if row["name"].startswith(GROUP_PREFIX) and row["state"] != "REMOVED"
    }


def ray_nodes_of(lease: Lease) -> list[str]:
    """Where Ray's group of ``lease`` holds each of its bundles (one per node), in order."""
    row = placement_group_table()[lease.placement_group_id]
    assert row["state"] == "CREATED" and row["name"].startswith(GROUP_PREFIX)
    placed = row["bundles_to_node_id"]
    return [placed[index] for index in range(len(placed))]


def cpus_granted(loop: Loop, manager: ResourceManager) -> float:
    snap = loop.run(manager.snapshot())
    return sum(node["resources"]["cpu"]["granted"] for node in snap["nodes"].values()) / 1000


def no_group_left(loop: Loop) -> None:
    async def gone() -> bool:
        return not groups_of_ours()

    loop.run(eventually(gone, timeout=10))


@pytest.mark.parametrize(
    ("strategy", "count", "cpu", "distinct"),
    [
        ("STRICT_SPREAD", 4, 1, 4),
        ("SPREAD", 4, 0.5, 4),
        ("STRICT_PACK", 2, 1, 1),
        ("PACK", 2, 1, 1),
        ("PACK", 3, 1, 2),
    ],
)
def test_each_strategy_places_as_rays_and_ray_reserves_each_bundle_there(
    manager: ResourceManager, loop: Loop, strategy: str, count: int, cpu: float, distinct: int
) -> None:
    async def scenario() -> tuple[list[str], list[str], list[dict[str, Any]]]:
        lease = await manager.acquire(bundles=[{"cpu": cpu}] * count, strategy=strategy)
        try:
            assert lease.reserved and lease.placement_group.id.hex() == lease.placement_group_id
            nodes = [b["node_id"] for b in lease.bundles]
            return nodes, ray_nodes_of(lease), lease.bundles
        finally:
            await lease.release()

    nodes, in_ray, bundles = loop.run(scenario())
    assert len(nodes) == count and len(set(nodes)) == distinct
    # Ray holds what the lease has on each node where the lease says (one Ray bundle a
    # node, in the order the lease's bundles name them).
    assert in_ray == list(dict.fromkeys(nodes))
    assert all(b["resources"] == {"cpu": cpu} for b in bundles)
    no_group_left(loop)


def test_a_gang_waits_holding_nothing_then_is_granted_whole(
    manager: ResourceManager, loop: Loop
) -> None:
    async def scenario() -> None:
        first = await manager.acquire({"cpu": 2}, node=node_of("node0"), reserve=True)
        second = await manager.acquire({"cpu": 2}, node=node_of("node1"), reserve=True)
        gang = asyncio.ensure_future(
            manager.acquire(bundles=[{"cpu": 2}] * 3, strategy="STRICT_SPREAD")
        )
        await asyncio.sleep(1.0)
        assert not gang.done()
        assert cpus_granted_now(await manager.snapshot()) == 4  # the waiting gang holds none
        assert len(groups_of_ours()) == 2
        await first.release()
        lease = await asyncio.wait_for(gang, 30)
        assert node_of("node1") not in [b["node_id"] for b in lease.bundles]
        assert sorted(ray_nodes_of(lease)) == sorted(b["node_id"] for b in lease.bundles)
        await lease.release()
        await second.release()

    loop.run(scenario())
    no_group_left(loop)


def cpus_granted_now(snap: Any) -> float:
    return float(sum(n["resources"]["cpu"]["granted"] for n in snap["nodes"].values()) / 1000)


def test_a_gang_at_the_head_is_not_starved_by_a_stream_of_one_cpu_requests(
    manager: ResourceManager, loop: Loop
) -> None:
    async def scenario() -> int:
        holders = [await manager.acquire({"cpu": 1}) for _ in range(8)]  # every CPU
        gang = asyncio.ensure_future(
            manager.acquire(bundles=[{"cpu": 2}] * 4, strategy="STRICT_SPREAD")
        )
        await asyncio.sleep(0.5)
        newcomers: list[asyncio.Future[Lease]] = []
        while not gang.done() and holders:
            await holders.pop(0).release()
            # A newcomer of the same priority, after the gang: it must not take its room.
            newcomers.append(asyncio.ensure_future(manager.acquire({"cpu": 1})))
            await asyncio.sleep(0.3)
            assert gang.done() or not any(n.done() for n in newcomers), (
                "a newcomer took the gang's room"
            )
        lease = await asyncio.wait_for(gang, 30)
        assert len({b["node_id"] for b in lease.bundles}) == 4
        await lease.release()
        for waiting in newcomers:
            await (await asyncio.wait_for(waiting, 30)).release()
        for held in holders:
            await held.release()
        return len(newcomers)

    assert loop.run(scenario()) == 8  # granted once the last of the 8 holders let go
    no_group_left(loop)


@ray.remote(num_cpus=1)
def plain_task() -> str:
    return str(ray.get_runtime_context().get_node_id())


def test_plain_ray_work_cannot_take_what_leases_reserved(
    manager: ResourceManager, loop: Loop
) -> None:
    async def hold_every_cpu() -> Lease:
        return await manager.acquire(bundles=[{"cpu": 2}] * 4, strategy="STRICT_SPREAD")

    lease = loop.run(hold_every_cpu())
    ref = plain_task.remote()
    ready, _ = ray.wait([ref], timeout=2.0)
    assert ready == []  # every CPU is reserved for the lease
    loop.run(lease.release())
    assert ray.get(ref, timeout=30) in [b["node_id"] for b in lease.bundles]
    no_group_left(loop)


@ray.remote(num_cpus=2)
class PlainWork:
    def where(self) -> str:
        return str(ray.get_runtime_context().get_node_id())


def test_what_plain_ray_work_holds_is_not_granted(manager: ResourceManager, loop: Loop) -> None:
    target = node_of("node2")
    work = PlainWork.options(resources={"node2": 0.01}).remote()
    assert ray.get(work.where.remote(), timeout=30) == target

    async def scenario() -> None:
        async def seen() -> bool:
            snap = await manager.snapshot()
            return bool(snap["nodes"][target]["resources"]["cpu"]["free"] <= 0)

        await eventually(seen, timeout=10)  # the coordinator heard of it from Ray
        waiting = asyncio.ensure_future(manager.acquire({"cpu": 1}, node=target))
        await asyncio.sleep(1.0)
        assert not waiting.done()
        ray.kill(work)
        lease = await asyncio.wait_for(waiting, 30)
        assert lease.node_id == target
        await lease.release()

    loop.run(scenario())


@leased(cpu=1, memory="64MiB")
def where_am_i() -> tuple[str, str | None]:
    group = ray.util.get_current_placement_group()
    return ray.get_runtime_context().get_node_id(), None if group is None else group.id.hex()


def test_leased_tasks_run_in_their_leases_placement_group(
    manager: ResourceManager, loop: Loop
) -> None:
    results = ray.get([where_am_i.remote() for _ in range(6)], timeout=60)
    leases = {lease["lease_id"]: lease for lease in loop.run(manager.leases())}
    groups = {lease["placement_group"]: lease["node_id"] for lease in leases.values()}
    for node_id, group in results:
        assert group is not None and group in groups
        assert groups[group] == node_id  # in the group, on the lease's node


def test_a_preemptible_gang_is_revoked_as_a_unit_with_its_grace(
    manager: ResourceManager, loop: Loop
) -> None:
    revoked: list[str] = []

    async def scenario() -> tuple[float, Lease]:
        gang = await manager.acquire(
            bundles=[{"cpu": 2}] * 4,
            strategy="STRICT_SPREAD",
            priority="low",
            preemptible=True,
            on_revoked=lambda lease: revoked.append(lease.lease_id),
        )
        started = time.monotonic()
        high = await manager.acquire({"cpu": 2}, priority="high", timeout=30)
        waited = time.monotonic() - started
        assert revoked == [gang.lease_id]  # one revocation, for the whole gang
        # Taken back, its group went at once (what ran in it with it): no spare kept.
        assert group_name(gang.lease_id) not in groups_of_ours()
        await high.release()
        return waited, gang

    waited, gang = loop.run(scenario())
    assert waited >= GRACE * 0.9  # the holder had its grace to let go
    assert gang.revoked
    no_group_left(loop)


def test_no_placement_group_outlives_its_lease(manager: ResourceManager, loop: Loop) -> None:
    async def cycle() -> str | None:
        lease = await manager.acquire(bundles=[{"cpu": 1}] * 2, strategy="STRICT_SPREAD")
        await lease.release()
        again = await manager.acquire(bundles=[{"cpu": 1}] * 2, strategy="STRICT_SPREAD")
        reused = (
            again.placement_group_id
            if again.placement_group_id == lease.placement_group_id
            else None
        )
        await again.release()
        return reused

    # Given back, a group is kept a moment for the next lease of its layout (taken as it
    # is when the gang lands on the same nodes again), then goes.
    loop.run(cycle())
    assert loop.run(manager.leases()) == []
    no_group_left(loop)


def test_losing_a_worker_node_ends_the_whole_gang(
    cluster: Cluster, manager: ResourceManager, loop: Loop
) -> None:
    lease = loop.run(manager.acquire(bundles=[{"cpu": 1}] * 4, strategy="STRICT_SPREAD"))
    victim_id = node_of("node3")
    assert victim_id in [b["node_id"] for b in lease.bundles]
    victim = next(n for n in cluster.worker_nodes if n.node_id == victim_id)
    cluster.remove_node(victim)

    async def ended() -> bool:
        return not lease.valid and lease.lease_id not in manager.held

    loop.run(eventually(ended, timeout=60))
    assert loop.run(manager.leases()) == []
    no_group_left(loop)
