"""``@leased`` tasks and actors on a real single-node Ray."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
import ray

from anya_resource import SyncResourceManager, current_lease, leased
from tests.raytools import GiB, local_ray

pytestmark = pytest.mark.ray

POLICY = {
    "heartbeat_s": 0.2,
    "reserve": {"memory": 0, "cpu": 0},
    "lease": {"default_ttl": 2.0, "renew_every": 0.5},
}


@pytest.fixture(scope="module")
def sync() -> Iterator[SyncResourceManager]:
    with local_ray(num_cpus=2, memory=8 * GiB):
        manager = SyncResourceManager.connect(policy=POLICY)
        yield manager
        manager.close()


def wait_until_idle(sync: SyncResourceManager, timeout: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snap = sync.snapshot()
        if snap["leases"] == 0:
            return snap
        time.sleep(0.05)
    raise AssertionError(f"leases still held: {sync.leases()}")


def worker_holders(sync: SyncResourceManager, timeout: float = 20) -> list[dict[str, Any]]:
    """Holders of leases that a task's worker has taken over from this process."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # Held by the caller until the task has started and taken it over.
        holders = [row["holder"] for row in sync.leases() if row["holder"]["pid"] != os.getpid()]
        if holders:
            return holders
        time.sleep(0.1)
    raise AssertionError(f"no lease taken over by a worker: {sync.leases()}")


@leased(cpu=1, memory="64MiB", priority="high")
def where_am_i(x: int) -> dict[str, Any]:
    lease = current_lease()
    return {
        "x": x,
        "node": ray.get_runtime_context().get_node_id(),
        "pid": os.getpid(),
        "lease_id": lease.lease_id,
        "lease_node": lease.node_id,
    }


@leased(cpu=1)
def fails() -> None:
    raise ValueError("boom")


@leased(cpu=1, ttl=2.0)
def sleeps(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def test_task_runs_on_the_granted_node_and_releases(sync: SyncResourceManager) -> None:
    result = ray.get(where_am_i.remote(3))
    assert result["x"] == 3
    assert result["node"] == result["lease_node"]
    wait_until_idle(sync)


def test_lease_is_bound_to_the_tasks_worker_and_outlives_its_ttl(
    sync: SyncResourceManager,
) -> None:
    ref = sleeps.remote(5.0)  # longer than the 2 s TTL: the task renews it
    holders = worker_holders(sync)
    pid = ray.get(ref)
    assert holders[0]["pid"] == pid
    wait_until_idle(sync)


def test_failed_task_releases(sync: SyncResourceManager) -> None:
    with pytest.raises(ValueError, match="boom"):
        ray.get(fails.remote())
    wait_until_idle(sync)


def test_cancelled_task_releases(sync: SyncResourceManager) -> None:
    ref = sleeps.remote(60.0)
    worker_holders(sync)  # the task runs and holds its lease: cancel it there
    ray.cancel(ref, force=True)
    with pytest.raises((ray.exceptions.TaskCancelledError, ray.exceptions.WorkerCrashedError)):
        ray.get(ref)
    wait_until_idle(sync)


def test_outside_a_leased_task_current_lease_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="only available inside"):
        current_lease()


@leased(memory="128MiB", cpu=0.5)
class Model:
    def __init__(self, scale: int) -> None:
        self.scale = scale

    def predict(self, x: int) -> tuple[int, str]:
        return x * self.scale, current_lease().lease_id


def test_actor_holds_its_lease_for_its_life(sync: SyncResourceManager) -> None:
    model = Model.remote(3)
    value, lease_id = ray.get(model.predict.remote(2))
    assert value == 6
    time.sleep(3)  # past the TTL: still held, renewed (by the actor, and by the caller)
    rows = sync.leases()
    assert [row["lease_id"] for row in rows] == [lease_id]
    # Held by the actor's process: its death, not the caller's, ends the lease.
    assert rows[0]["holder"]["pid"] != os.getpid()
    ray.kill(model)
    wait_until_idle(sync)


def test_options_override_resources(sync: SyncResourceManager) -> None:
    result = ray.get(where_am_i.options(cpu=2, priority="low").remote(1))
    assert result["x"] == 1
    wait_until_idle(sync)
