"""Ray re-initialised in one process (issue 11, item 3): notebooks and test suites call
``ray.shutdown()`` and ``ray.init()`` of another cluster; the manager must find or deploy
the actors of the cluster it is connected to now, never a handle cached from the old one,
and no raw Ray exception may reach the caller."""

from __future__ import annotations

import asyncio

import pytest
import ray

from anya_resource import ResourceManager
from tests.raytools import GiB, assert_loopback

pytestmark = pytest.mark.ray


def _fresh_ray() -> None:
    ray.init(
        address="local", num_cpus=1, include_dashboard=False, logging_level="ERROR", _memory=GiB
    )
    assert_loopback()


async def _use_once() -> tuple[int, str]:
    manager = await ResourceManager.new(policy={"heartbeat_s": 0.2})
    async with manager.acquire({"cpu": 0.5}, timeout=30) as lease:
        node = lease.node_id
    snapshot = await manager.snapshot()
    await manager.close()
    return snapshot["epoch"], node


def test_a_second_cluster_in_the_same_process_gets_its_own_coordinator() -> None:
    assert not ray.is_initialized()
    nodes = []
    try:
        for _ in range(2):  # no forget_handles() in between: as a user's notebook does it
            _fresh_ray()
            epoch, node = asyncio.run(_use_once())
            assert epoch == 0  # a new cluster: its own first coordinator
            assert node == ray.get_runtime_context().get_node_id()
            nodes.append(node)
            ray.shutdown()
    finally:
        if ray.is_initialized():
            ray.shutdown()
    assert nodes[0] != nodes[1]
