"""The coordinator, the agent and the client on a real single-node Ray (shared per module)."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import pytest
import ray

from anya_resource import (
    AcquireTimeout,
    Infeasible,
    InvalidRequest,
    Lease,
    NotLeaseHolder,
    ResourceManager,
    SyncResourceManager,
)
from anya_resource.actors.naming import COORDINATOR_NAME, NAMESPACE
from tests.raytools import GiB, Loop, deployed, eventually, local_ray

pytestmark = pytest.mark.ray

HEARTBEAT = 0.2
POLICY = {
    "heartbeat_s": HEARTBEAT,
    "reserve": {"memory": 0, "cpu": 0},
    "lease": {"default_ttl": 3.0, "renew_every": 1.0, "preemption_grace_s": 1.0},
    "pools": {"rpc": {"size": 1}, "storm": {"size": 8}},
    "aging": {"per_second": 0.0},
}


@pytest.fixture(scope="module")
def loop() -> Iterator[Loop]:
    # Two logical CPUs: the tests below count on what two CPUs hold.
    with local_ray(num_cpus=2, memory=8 * GiB):
        yield Loop()


@pytest.fixture(scope="module")
def manager(loop: Loop) -> ResourceManager:
    return deployed(loop, POLICY, nodes=1)


def totals(snap: dict[str, Any]) -> tuple[Any, ...]:
    resources = {r: row["granted"] for r, row in snap["resources"].items()}
    pools = {p: row["in_use"] for p, row in snap["pools"].items()}
    return resources, pools, snap["leases"], snap["queue"]["waiting"]


def idle(manager: ResourceManager, loop: Loop) -> None:
    """Wait until nothing is held or waiting (releases are sent in the background)."""

    async def nothing_held() -> bool:
        snap = await manager.snapshot()
        return snap["leases"] == 0 and snap["queue"]["waiting"] == 0

    loop.run(eventually(nothing_held))


def test_ray_is_private_and_on_loopback(manager: ResourceManager) -> None:
    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}


def test_seed_example_runs_as_written(manager: ResourceManager, loop: Loop) -> None:
    async def manage_resources() -> None:
        manager = await ResourceManager.new()
        health = await manager.check_resource_health()
        if health.is_healthy and health.memory_usage_percent < 80.0:
            async with manager.acquire_connection() as connection:  # noqa: SIM117 (as written)
                async with manager.allocate_memory(1024 * 1024):  # 1 MiB
                    snap = await manager.snapshot()
                    assert snap["pools"]["default"]["in_use"] == 1
                    assert connection.pool == "default"
        else:
            raise RuntimeError(f"System resources low: {health.reasons}")

    loop.run(manage_resources())
    idle(manager, loop)


def test_lease_fields_and_node(manager: ResourceManager, loop: Loop) -> None:
    async def scenario() -> Lease:
        lease = await manager.acquire({"memory": "256MiB", "cpu": 0.5}, priority="high", ttl=10)
        snap = await manager.snapshot()
        await manager.release(lease)
        assert snap["resources"]["memory"]["granted"] == 256 * 1024**2
        assert snap["resources"]["cpu"]["granted"] == 500
        return lease

    lease = loop.run(scenario())
    assert lease.node_id == ray.get_runtime_context().get_node_id()
    assert lease.resources == {"memory": 256 * 1024**2, "cpu": 0.5}
    assert lease.priority == "high" and lease.released
    assert len(lease.token) >= 22 and lease.token not in repr(lease)
    assert time.time() < lease.expires_at <= time.time() + 10


def test_priority_order_at_a_saturated_pool(manager: ResourceManager, loop: Loop) -> None:
    order: list[str] = []

    async def waiter(priority: str) -> None:
        async with manager.acquire_connection("rpc", priority=priority):
            order.append(priority)

    async def waiting(count: int) -> bool:
        return bool((await manager.snapshot())["pools"]["rpc"]["waiting"] == count)

    async def scenario() -> None:
        holder = await manager.acquire_connection("rpc")
        tasks = []
        for count, priority in enumerate(["batch", "low", "normal", "high", "critical"], 1):
            tasks.append(asyncio.create_task(waiter(priority)))
            # Arrival order, lowest first: each one queued before the next is sent.
            await eventually(functools.partial(waiting, count))
        await manager.release(holder)
        await asyncio.gather(*tasks)

    loop.run(scenario())
    assert order == ["critical", "high", "normal", "low", "batch"]
    idle(manager, loop)


def test_timed_out_acquire_leaves_nothing(manager: ResourceManager, loop: Loop) -> None:
    async def scenario() -> float:
        before = await manager.snapshot()
        holder = await manager.acquire_connection("rpc")
        started = time.monotonic()
        with pytest.raises(AcquireTimeout):
            await manager.acquire_connection("rpc", timeout=0.5)
        waited = time.monotonic() - started
        await manager.release(holder)
        after = await manager.snapshot()
        assert totals(after) == totals(before)
        return waited

    waited = loop.run(scenario())
    assert 0.4 < waited < 5


def test_storm_of_cancelled_acquires_leaves_free_equal_capacity(
    manager: ResourceManager, loop: Loop
) -> None:
    rng = random.Random(7)

    async def one(index: int) -> str:
        try:
            async with manager.acquire_connection("storm", timeout=rng.uniform(0.05, 3.0)):
                await asyncio.sleep(rng.uniform(0, 0.01))
            return "held"
        except AcquireTimeout:
            return "timeout"

    async def scenario() -> dict[str, int]:
        tasks = [asyncio.create_task(one(i)) for i in range(1000)]
        await asyncio.sleep(0.2)
        for task in rng.sample(tasks, 300):
            await asyncio.sleep(rng.uniform(0, 0.005))
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        counts: dict[str, int] = {}
        for result in results:
            name = result if isinstance(result, str) else type(result).__name__
            counts[name] = counts.get(name, 0) + 1
        return counts

    counts = loop.run(scenario(), timeout=300)
    assert counts.get("held", 0) > 0 and counts.get("CancelledError", 0) > 0, counts
    idle(manager, loop)
    snap = loop.run(manager.snapshot())
    assert snap["pools"]["storm"]["in_use"] == 0
    assert snap["pools"]["storm"]["free"] == snap["pools"]["storm"]["size"]
    assert loop.run(_invariants()) == []


async def _invariants() -> list[str]:
    coordinator = ray.get_actor(COORDINATOR_NAME, namespace=NAMESPACE)
    result: list[str] = await coordinator.invariants.remote()
    return result


@pytest.mark.parametrize(
    ("resources", "options", "error"),
    [
        ({"memory": -1}, {}, InvalidRequest),
        ({"memory": float("nan")}, {}, InvalidRequest),
        ({"cpu": float("inf")}, {}, InvalidRequest),
        ({"memory": 2**70}, {}, InvalidRequest),
        ({"memory": "lots"}, {}, InvalidRequest),
        ({"memory": True}, {}, InvalidRequest),
        ({"teapots": 1}, {}, InvalidRequest),
        ({"pools": {"nope": 1}}, {}, InvalidRequest),
        ({"cpu": 1}, {"node": "ffff"}, InvalidRequest),
        ({"cpu": 1}, {"priority": "urgent"}, InvalidRequest),
        ({"cpu": 1}, {"ttl": -5}, InvalidRequest),
        ({}, {}, InvalidRequest),
        ({"memory": "1TiB"}, {}, Infeasible),
        ({"pools": {"rpc": 2}}, {}, Infeasible),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(
    manager: ResourceManager,
    loop: Loop,
    resources: dict[str, Any],
    options: dict[str, Any],
    error: type[Exception],
) -> None:
    async def scenario() -> None:
        before = totals(await manager.snapshot())
        with pytest.raises(error) as caught:
            await manager.acquire(resources, **options)
        assert str(caught.value)
        assert totals(await manager.snapshot()) == before

    loop.run(scenario())


def test_wrong_token_changes_nothing_and_release_is_idempotent(
    manager: ResourceManager, loop: Loop
) -> None:
    async def scenario() -> None:
        lease = await manager.acquire({"cpu": 1})
        before = totals(await manager.snapshot())
        forged = Lease(**{**lease.__dict__, "token": "not-the-token", "released": False})
        with pytest.raises(NotLeaseHolder):
            await manager.release(forged)
        assert totals(await manager.snapshot()) == before
        await manager.release(lease)
        await manager.release(lease)  # the holder may release twice
        assert (await manager.snapshot())["resources"]["cpu"]["granted"] == 0

    loop.run(scenario())


def test_a_wrong_token_release_leaves_the_real_lease_held_and_renewed(
    manager: ResourceManager, loop: Loop
) -> None:
    """Regression: the real lease was dropped from renewal before the refusal came back."""

    async def scenario() -> None:
        lease = await manager.acquire({"cpu": 0.5}, ttl=1.5)
        forged = Lease(**{**lease.__dict__, "token": "0" * 48, "released": False})
        with pytest.raises(NotLeaseHolder):
            await manager.release(forged)
        assert manager.held[lease.lease_id] is lease and lease.valid
        await asyncio.sleep(3.0)  # twice its TTL: only its renewals keep it
        assert lease.valid
        assert lease.lease_id in {row["lease_id"] for row in await manager.leases()}
        await manager.release(lease)

    loop.run(scenario())


@ray.remote(num_cpus=0)
class Releaser:
    """Another process that was handed a lease (its id and token) and gives it back."""

    async def release(self, lease: Lease) -> None:
        manager = await ResourceManager.new()
        await manager.release(lease)


def test_a_release_by_another_process_is_heard_by_the_holder(
    manager: ResourceManager, loop: Loop
) -> None:
    heard: list[str] = []

    async def scenario() -> None:
        lease = await manager.acquire({"cpu": 0.5}, on_revoked=lambda lz: heard.append(lz.lease_id))
        portable = dataclasses.replace(lease, on_revoked=None, _manager=None)
        await Releaser.remote().release.remote(portable)  # type: ignore[attr-defined]
        await eventually(lambda: _true(lease.released), timeout=10)
        assert heard == [lease.lease_id]
        assert lease.reason == "released by another process"
        assert lease.lease_id not in manager.held
        await manager.release(lease)  # still a no-op for its holder

    loop.run(scenario())


async def _true(value: bool) -> bool:
    return value


def test_held_lease_renews_itself(manager: ResourceManager, loop: Loop) -> None:
    async def scenario() -> None:
        lease = await manager.acquire({"cpu": 0.5}, ttl=1.5)
        first_expiry = lease.expires_at
        await asyncio.sleep(4)
        assert lease.valid and lease.expires_at > first_expiry
        assert (await manager.snapshot())["resources"]["cpu"]["granted"] == 500
        await manager.release(lease)

    loop.run(scenario())


def test_preemption_revokes_and_tells_the_holder(manager: ResourceManager, loop: Loop) -> None:
    revoked: list[str] = []

    async def scenario() -> None:
        low = await manager.acquire(
            {"cpu": 1.5},
            priority="low",
            preemptible=True,
            on_revoked=lambda lease: revoked.append(lease.lease_id),
        )
        high = await manager.acquire({"cpu": 1}, priority="high", timeout=10)
        assert low.revoked and revoked == [low.lease_id]
        await manager.release(high)

    loop.run(scenario())
    idle(manager, loop)


def test_sync_twin(manager: ResourceManager) -> None:
    sync = SyncResourceManager.connect()
    with sync.acquire({"memory": "64MiB"}, priority="low") as lease:
        assert sync.snapshot()["resources"]["memory"]["granted"] >= 64 * 1024**2
        assert lease.valid
    plan = sync.what_if({"cpu": 0.5}, count=10)
    assert plan["granted_now"] == 4 and plan["would_wait"] == 6
    with pytest.raises(InvalidRequest):
        sync.acquire({"cpu": -1})
    sync.close()


HOLDER_SCRIPT = textwrap.dedent(
    """
    import asyncio, os, sys
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray
    from anya_resource import ResourceManager

    async def main():
        ray.init(address=sys.argv[1], logging_level="ERROR")
        manager = await ResourceManager.new()
        lease = await manager.acquire({"cpu": 1}, ttl=float(sys.argv[2]))
        print(lease.lease_id, flush=True)
        await asyncio.sleep(600)

    asyncio.run(main())
    """
)


def test_holder_process_killed_is_reclaimed_fast(manager: ResourceManager, loop: Loop) -> None:
    address = ray.get_runtime_context().gcs_address
    ttl = 30.0
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER_SCRIPT, address, str(ttl)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert child.stdout is not None
        lease_id = child.stdout.readline().strip()
        assert lease_id.startswith("lease-")

        async def held() -> bool:
            return any(row["lease_id"] == lease_id for row in await manager.leases())

        loop.run(eventually(held))
        os.kill(child.pid, signal.SIGKILL)
        killed = time.monotonic()

        async def reclaimed() -> bool:
            return not await held()

        loop.run(eventually(reclaimed, timeout=ttl + 2 * HEARTBEAT))
        # The agent saw the pid go: far sooner than the TTL.
        assert time.monotonic() - killed < 10 * HEARTBEAT + 2
    finally:
        child.kill()
        child.wait()


@ray.remote(num_cpus=0)
class Holder:
    async def hold(self, ttl: float) -> str:
        self.manager = await ResourceManager.new()
        self.lease = await self.manager.acquire({"memory": "128MiB"}, ttl=ttl)
        return self.lease.lease_id


def test_holder_actor_killed_is_reclaimed(manager: ResourceManager, loop: Loop) -> None:
    holder = Holder.remote()  # type: ignore[attr-defined]
    lease_id = ray.get(holder.hold.remote(30.0))
    ray.kill(holder)
    killed = time.monotonic()

    async def reclaimed() -> bool:
        return all(row["lease_id"] != lease_id for row in await manager.leases())

    loop.run(eventually(reclaimed, timeout=30 + 2 * HEARTBEAT))
    assert time.monotonic() - killed < 10 * HEARTBEAT + 2


def test_coordinator_restart_keeps_the_ledger(manager: ResourceManager, loop: Loop) -> None:
    async def scenario() -> None:
        held = [await manager.acquire({"cpu": 0.5}) for _ in range(3)]
        waiting = asyncio.ensure_future(manager.acquire({"cpu": 1}, timeout=60))

        async def one_waits() -> bool:
            return (await manager.snapshot())["queue"]["waiting"] == 1

        await eventually(one_waits)
        snap = await manager.snapshot()
        before = totals(snap)
        fencing_before = max(lease.fencing_token for lease in held)
        coordinator = ray.get_actor(COORDINATOR_NAME, namespace=NAMESPACE)
        ray.kill(coordinator, no_restart=False)
        # The restarted coordinator (a new epoch), once it has the three leases back.
        after = await eventually(
            lambda: _snapshot_when(
                manager, lambda s: s["epoch"] > snap["epoch"] and s["leases"] == 3
            ),
            timeout=60,
        )
        assert totals(after)[:3] == before[:3]
        assert await _invariants() == []
        # Capacity is 2 cpus; 1.5 are held: the waiting acquire (retried with its key) waits on.
        await eventually(one_waits, timeout=30)
        assert not waiting.done()
        with pytest.raises(AcquireTimeout):
            await manager.acquire({"cpu": 1}, timeout=1.0)
        await manager.release(held.pop())
        resumed = await asyncio.wait_for(waiting, timeout=30)
        assert resumed.fencing_token > fencing_before
        for lease in [*held, resumed]:
            await manager.release(lease)

    loop.run(scenario(), timeout=180)
    idle(manager, loop)


async def _snapshot_when(manager: ResourceManager, ok: Any) -> dict[str, Any] | None:
    snap = await manager.snapshot()
    return snap if ok(snap) else None
