"""Warm leases across managers on a real Ray: reuse with no new grant, and the
coordinator's word (wanted, spare) taking idle and busy ones back for waiters of other
processes (each manager is one channel, as each process is)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from anya_resource import AcquireTimeout, ResourceManager
from tests.raytools import GiB, Loop, deployed, eventually, local_ray

pytestmark = pytest.mark.ray

POLICY: dict[str, Any] = {
    "heartbeat_s": 0.2,
    "reserve": {"memory": 0, "cpu": 0},
    "lease": {"warm_idle_s": 30.0},  # long: whatever comes back sooner was asked back
    "pools": {"one": {"size": 1, "kind": "slot"}},
    "aging": {"per_second": 0.0},
}
ONE = {"pools": {"one": 1}}


@pytest.fixture(scope="module")
def loop() -> Iterator[Loop]:
    with local_ray(num_cpus=2, memory=4 * GiB):
        yield Loop()


@pytest.fixture(scope="module")
def first(loop: Loop) -> ResourceManager:
    return deployed(loop, POLICY, nodes=1)


@pytest.fixture()
def managers(loop: Loop, first: ResourceManager) -> Iterator[tuple[ResourceManager, ...]]:
    """Two managers of their own (two channels): as two processes would be."""
    a = loop.run(ResourceManager.new())
    b = loop.run(ResourceManager.new())
    yield a, b
    loop.run(a.close())
    loop.run(b.close())

    async def all_free() -> bool:
        return (await first.snapshot())["leases"] == 0

    loop.run(eventually(all_free))


def test_a_warm_lease_is_reused_with_no_new_grant_and_shown_idle(
    loop: Loop, first: ResourceManager, managers: tuple[ResourceManager, ...]
) -> None:
    a, _ = managers

    async def cycles() -> set[tuple[str, int]]:
        seen = set()
        for _ in range(50):
            async with a.acquire(ONE, warm=True) as lease:
                seen.add((lease.lease_id, lease.fencing_token))
        return seen

    assert len(loop.run(cycles())) == 1  # one grant, fifty uses
    assert a.warm_statistics().idle == 1

    async def shown_idle() -> bool:
        rows = await first.leases()
        snap = await first.snapshot()
        return [r["warm"] for r in rows] == ["idle"] and snap["warm"] == {"idle": 1, "busy": 0}

    loop.run(eventually(shown_idle, timeout=5))


def test_an_idle_warm_lease_goes_back_at_once_to_a_waiter_it_does_not_outrank(
    loop: Loop, managers: tuple[ResourceManager, ...]
) -> None:
    a, b = managers

    async def run() -> float:
        lease = await a.acquire(ONE, warm=True, priority="normal")
        await a.release(lease)  # idle, warm, in a
        started = time.monotonic()
        async with b.acquire(ONE, priority="high", timeout=10):
            return time.monotonic() - started

    waited = loop.run(run())
    assert waited < 15.0  # asked back: not after the 30 s of warm_idle_s
    assert a.warm_statistics().idle == 0


def test_an_idle_lease_that_outranks_the_waiter_still_goes_back_once_idle(
    loop: Loop, managers: tuple[ResourceManager, ...]
) -> None:
    a, b = managers

    async def run() -> float:
        lease = await a.acquire(ONE, warm=True, priority="critical")
        await a.release(lease)
        started = time.monotonic()
        async with b.acquire(ONE, priority="low", timeout=10):
            return time.monotonic() - started

    assert loop.run(run()) < 15.0  # spare: idle capacity is nobody's to keep (not 30 s)


def test_a_busy_warm_lease_is_not_reused_while_a_waiter_it_does_not_outrank_waits(
    loop: Loop, managers: tuple[ResourceManager, ...]
) -> None:
    a, b = managers

    async def run() -> None:
        lease = await a.acquire(ONE, warm=True, priority="low")
        waiter = loop.loop.create_task(b.acquire(ONE, priority="high", timeout=10))

        async def asked_back() -> bool:
            return bool(a._warm._wanted)

        await eventually(asked_back, timeout=5)
        await a.release(lease)  # its use ends: back to the coordinator, not kept
        granted = await waiter
        assert a.warm_statistics().idle == 0
        with pytest.raises(AcquireTimeout):
            await a.acquire(ONE, warm=True, priority="low", timeout=0.5)
        await b.release(granted)

    loop.run(run())


def test_a_warm_lease_is_claimed_across_a_coordinator_restart(
    loop: Loop, first: ResourceManager, managers: tuple[ResourceManager, ...]
) -> None:
    a, _ = managers
    import ray

    from anya_resource.actors import deploy

    async def before() -> str:
        lease = await a.acquire(ONE, warm=True)
        await a.release(lease)
        return lease.lease_id

    lease_id = loop.run(before())
    ray.kill(deploy.coordinator(), no_restart=False)

    async def after() -> str:
        async with a.acquire(ONE, warm=True, timeout=30) as lease:
            return lease.lease_id

    assert loop.run(after()) == lease_id  # claimed by its manager, and reused

    async def counted_once() -> bool:
        snap = await first.snapshot()
        return snap["pools"]["one"]["in_use"] == 1 and snap["leases"] == 1

    loop.run(eventually(counted_once, timeout=20))


def test_a_warm_try_once_asks_the_coordinator(
    loop: Loop, managers: tuple[ResourceManager, ...]
) -> None:
    a, b = managers

    async def run() -> None:
        lease = await a.acquire(ONE, warm=True, timeout=0)  # free: granted at once
        with pytest.raises(AcquireTimeout):
            await b.acquire(ONE, warm=True, timeout=0)  # held by a: refused at once
        await a.release(lease)
        again = await a.acquire(ONE, warm=True, timeout=0)  # its idle one, no call
        assert again.lease_id == lease.lease_id
        await a.release(again)

    loop.run(run())
