"""Budgets on a real Ray: a manager drawing from another's lease never gets past it.

What a queued job's processes do (``ANYA_RESOURCE_BUDGET``), with the budget given to a
manager by hand: draws are granted within it and wait past it however free the cluster
is; the budget's end ends them; a forged key changes nothing; a coordinator kill loses
neither the budget nor what was drawn from it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import ray

from anya_resource import (
    AcquireTimeout,
    Infeasible,
    InvalidRequest,
    NotLeaseHolder,
    ResourceManager,
)
from anya_resource.actors import deploy
from tests.raytools import GiB, Loop, deployed, eventually, local_ray

pytestmark = pytest.mark.ray

POLICY: dict[str, Any] = {
    "heartbeat_s": 0.2,
    "reserve": {"memory": 0, "cpu": 0},
    "pools": {"rpc": {"size": 4, "kind": "slot"}},
}


@pytest.fixture(scope="module")
def loop() -> Iterator[Loop]:
    with local_ray(num_cpus=4, memory=4 * GiB):
        yield Loop()


@pytest.fixture(scope="module")
def first(loop: Loop) -> ResourceManager:
    return deployed(loop, POLICY, nodes=1)


@pytest.fixture()
def job(loop: Loop, first: ResourceManager) -> Iterator[tuple[Any, ResourceManager]]:
    """A budget of 1 cpu and 1 rpc slot, and a manager that draws from it."""
    budget = loop.run(first.acquire({"cpu": 1, "pools": {"rpc": 1}}))
    key = loop.run(first.budget_key(budget))
    inside = loop.run(ResourceManager.new(budget=key))
    yield budget, inside
    loop.run(inside.close())
    if not budget.released:
        loop.run(first.release(budget))

    async def all_free() -> bool:
        return (await first.snapshot())["leases"] == 0

    loop.run(eventually(all_free))


def test_draws_fit_the_budget_and_wait_past_it(
    loop: Loop, first: ResourceManager, job: tuple[Any, ResourceManager]
) -> None:
    budget, inside = job

    async def run() -> None:
        a = await inside.acquire({"cpu": 0.5})
        b = await inside.acquire({"cpu": 0.5, "pools": {"rpc": 1}})
        assert a.within == b.within == budget.lease_id and a.node_id == budget.node_id
        snap = await first.snapshot()
        assert snap["pools"]["rpc"]["in_use"] == 1  # the budget's slot, counted once
        with pytest.raises(AcquireTimeout):  # 3 cpus are free in the cluster: the cap holds
            await inside.acquire({"cpu": 0.5}, timeout=0.3)
        waiting = asyncio.ensure_future(inside.acquire({"cpu": 0.5}))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        view = (await first.budgets())[budget.lease_id]
        assert view["used"] == {"cpu": 1000, "rpc": 1} and view["waiting"] == 1
        await inside.release(a)
        c = await asyncio.wait_for(waiting, 5)
        assert c.within == budget.lease_id
        answer = await inside.what_if({"cpu": 0.5})
        assert answer["would_wait"] == 1 and "budget" in answer["blocked_by"]
        await inside.release(b)
        await inside.release(c)

    loop.run(run())


def test_what_can_never_fit_and_forged_keys_are_refused(
    loop: Loop, first: ResourceManager, job: tuple[Any, ResourceManager]
) -> None:
    budget, inside = job

    async def run() -> None:
        with pytest.raises(Infeasible, match="holds 1 CPU; 2 CPUs were asked for"):
            await inside.acquire({"cpu": 2})
        with pytest.raises(Infeasible, match="holds no memory"):
            await inside.acquire({"memory": "1GiB"})
        forged = await ResourceManager.new(budget=f"{budget.lease_id}:{'0' * 48}")
        with pytest.raises(NotLeaseHolder, match="not the key of budget"):
            await forged.acquire({"cpu": 0.5})
        await forged.close()
        with pytest.raises(InvalidRequest, match="lease id"):
            await ResourceManager.new(budget="no-colon")
        with pytest.raises(NotLeaseHolder):  # the key lets one draw, not release
            await first._call(lambda c: c.release.remote(budget.lease_id, "0" * 48))

    loop.run(run())


def test_the_budgets_end_ends_what_was_drawn(
    loop: Loop, first: ResourceManager, job: tuple[Any, ResourceManager]
) -> None:
    budget, inside = job

    async def run() -> None:
        drawn = await inside.acquire({"cpu": 1})
        waiting = asyncio.ensure_future(inside.acquire({"cpu": 1}))
        await asyncio.sleep(0.2)
        await first.release(budget)
        with pytest.raises(Exception, match="budget"):
            await asyncio.wait_for(waiting, 5)

        async def ended() -> bool:
            return drawn.released or drawn.revoked or drawn.expired

        await eventually(ended)
        assert "budget" in str(drawn.reason)
        with pytest.raises(Exception, match="has ended"):
            await inside.acquire({"cpu": 0.5}, timeout=0)

    loop.run(run())


def test_a_coordinator_kill_keeps_the_budget_and_what_was_drawn(
    loop: Loop, first: ResourceManager, job: tuple[Any, ResourceManager]
) -> None:
    budget, inside = job
    drawn = loop.run(inside.acquire({"cpu": 1}))
    ray.kill(deploy.coordinator(), no_restart=False)

    async def restored() -> bool:
        try:
            views = await first.budgets()
        except Exception:
            return False
        return views.get(budget.lease_id, {}).get("used") == {"cpu": 1000}

    loop.run(eventually(restored, timeout=30))

    async def after() -> None:
        with pytest.raises(AcquireTimeout):  # still full: counted once, not lost
            await inside.acquire({"cpu": 0.5}, timeout=0.3)
        await inside.release(drawn)
        again = await inside.acquire({"cpu": 1}, timeout=5)
        await inside.release(again)
        assert await first._call(lambda c: c.invariants.remote()) == []

    loop.run(after())
