"""``@leased`` tasks queued in Ray within their lease (``lease.submit_ahead``), on a real
single-node Ray: the cap holds, a wanted lease runs out its queue and goes back, and
nothing of a revoked lease starts after it ended."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

import pytest
import ray

from anya_resource import SyncResourceManager, leased, leased_statistics
from tests.raytools import sync_manager, wait_until_idle

pytestmark = pytest.mark.ray

DEPTH = 3
POLICY = {
    "heartbeat_s": 0.2,
    "reserve": {"memory": 0, "cpu": 0},
    "lease": {"preemption_grace_s": 0.3, "submit_ahead": DEPTH},
    "pools": {"one": {"size": 1, "kind": "slot"}},
}


@pytest.fixture(scope="module")
def sync() -> Iterator[SyncResourceManager]:
    with sync_manager(POLICY) as manager:
        yield manager


def spans(seconds: float) -> tuple[float, float]:
    started = time.time()
    time.sleep(seconds)
    return started, time.time()


# One CPU each, held and reserved in Ray: its tasks are queued ahead in its bundle.
low = leased(pools={"one": 1}, cpu=1, priority="low", max_retries=0)(spans)
low_preemptible = leased(pools={"one": 1}, cpu=1, priority="low", preemptible=True, max_retries=0)(
    spans
)
slots_only = leased(pools={"one": 1}, priority="low", max_retries=0)(spans)


def quick_first(task: Any) -> None:
    """A few no-op tasks, one after the other: the lease's uses are short, so it takes
    tasks ahead (core/share.py SHORT_USE_S)."""
    for _ in range(3):
        ray.get(task.remote(0.0))


def settle(refs: list[Any]) -> list[tuple[float, float] | None]:
    """Each task's (start, end), or None for one that failed."""
    out: list[tuple[float, float] | None] = []
    for ref in refs:
        try:
            out.append(ray.get(ref, timeout=60))
        except Exception:  # Ray's error for a task whose group went away
            out.append(None)
    return out


def test_one_lease_carries_its_depth_and_runs_one_task_at_a_time(
    sync: SyncResourceManager,
) -> None:
    quick_first(low)
    refs = [low.remote(0.2) for _ in range(DEPTH)]  # no wait: all in one lease
    counts = leased_statistics()
    assert counts.busy == 1 and counts.queued == DEPTH - 1
    ran = sorted(s for s in settle(refs) if s is not None)
    assert len(ran) == DEPTH
    for (_, end), (start, _) in itertools.pairwise(ran):
        assert start >= end - 0.01  # Ray ran them one after the other, in its bundle
    wait_until_idle(sync)


def test_a_lease_of_long_tasks_carries_one_at_a_time(sync: SyncResourceManager) -> None:
    ray.get(low.remote(0.3))  # a long one: queued ahead it would hold up a waiter as long
    first = low.remote(0.3)
    counts = leased_statistics()
    assert counts.busy == 1 and counts.queued == 0
    with pytest.raises(Exception, match="within"):
        low.options(timeout=0.1).remote(0.0)
    assert settle([first])[0] is not None
    wait_until_idle(sync)


def test_a_lease_of_slots_only_carries_one_task_placed_by_ray(
    sync: SyncResourceManager,
) -> None:
    first = slots_only.remote(0.5)
    counts = leased_statistics()
    assert counts.busy == 1 and counts.queued == 0  # nothing Ray reserves keeps two apart
    with pytest.raises(Exception, match="within"):
        slots_only.options(timeout=0.2).remote(0.0)  # the one slot carries its one task
    assert settle([first])[0] is not None
    wait_until_idle(sync)


def test_a_wanted_lease_takes_no_new_task_and_goes_back_when_its_queue_ran_out(
    sync: SyncResourceManager,
) -> None:
    quick_first(low)
    refs = [low.remote(0.3) for _ in range(DEPTH)]
    asked = time.time()
    high = sync.acquire({"pools": {"one": 1}}, priority="high", timeout=30)
    granted = time.time()
    try:
        ran = [s for s in settle(refs) if s is not None]
        assert len(ran) == DEPTH  # what was queued ran out: nothing was lost
        assert all(end <= granted + 0.05 for _, end in ran)  # ... before the high grant
        # The high waiter waited for at most the queue's depth of low tasks.
        assert granted - asked <= DEPTH * 0.3 + 2.0
        late = low.options(timeout=0.5)
        with pytest.raises(Exception, match="within"):
            late.remote(0.0)  # the slot is the high lease's: no new low task
    finally:
        sync.release(high)
    wait_until_idle(sync)


def test_nothing_of_a_revoked_lease_starts_after_it_ended(sync: SyncResourceManager) -> None:
    quick_first(low_preemptible)
    refs = [low_preemptible.remote(2.0) for _ in range(DEPTH)]
    time.sleep(0.5)  # the first one runs, the others are queued in its bundle
    high = sync.acquire({"pools": {"one": 1}}, priority="high", timeout=30)
    granted = time.time()  # the low lease ended (revoked, its grace over) before this
    try:
        outcomes = settle(refs)
        started = [s for s in outcomes if s is not None]
        assert all(start < granted for start, _ in started), (outcomes, granted)
        assert outcomes.count(None) >= DEPTH - 1  # the queued ones never ran
    finally:
        sync.release(high)
    wait_until_idle(sync)
