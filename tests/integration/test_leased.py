"""``@leased`` tasks and actors on a real single-node Ray."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import ray

from anya_resource import (
    AcquireTimeout,
    InvalidRequest,
    Overloaded,
    SyncResourceManager,
    current_lease,
    leased,
    leased_statistics,
)
from tests.raytools import sync_manager, wait_until_idle

pytestmark = pytest.mark.ray

POLICY = {
    "heartbeat_s": 0.2,
    "reserve": {"memory": 0, "cpu": 0},
    "lease": {"default_ttl": 2.0, "renew_every": 0.5},
    "pools": {"pg": {"size": 2, "kind": "slot"}},
}


@pytest.fixture(scope="module")
def sync() -> Iterator[SyncResourceManager]:
    with sync_manager(POLICY) as manager:
        yield manager


def wait_until_free(sync: SyncResourceManager, timeout: float = 5) -> float:
    """Seconds until no warm lease of this process is busy (a task's use has ended)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if leased_statistics().busy == 0:
            return time.monotonic() - started
        time.sleep(0.005)
    raise AssertionError(f"a lease is still busy: {leased_statistics()}")


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


def test_the_submitting_process_holds_the_lease_past_its_ttl(
    sync: SyncResourceManager,
) -> None:
    ref = sleeps.remote(5.0)  # longer than the 2 s TTL: this process renews it
    time.sleep(3.0)
    rows = sync.leases()
    assert len(rows) == 1 and rows[0]["holder"]["pid"] == os.getpid()
    assert leased_statistics().busy == 1
    assert ray.get(ref) != os.getpid()  # the body ran in a worker
    wait_until_free(sync)
    wait_until_idle(sync)


def test_a_warm_lease_serves_the_next_task_with_no_new_grant(sync: SyncResourceManager) -> None:
    first = ray.get(where_am_i.remote(1))
    wait_until_free(sync)  # the ref's callback: a moment after
    assert leased_statistics().idle == 1  # kept, idle, once the ref settled
    later = [ray.get(where_am_i.remote(i)) for i in range(20)]
    # ray.get may return a moment before the ref's callback frees the lease: the next
    # task may then find it still busy and get one more. Not a lease per task.
    assert first["lease_id"] in {r["lease_id"] for r in later}
    assert len({r["lease_id"] for r in later}) <= 2
    wait_until_idle(sync)  # back with the coordinator after lease.warm_idle_s
    assert leased_statistics().idle == 0


def test_failed_task_frees_its_lease(sync: SyncResourceManager) -> None:
    with pytest.raises(ValueError, match="boom"):
        ray.get(fails.remote())
    wait_until_free(sync)
    wait_until_idle(sync)


def test_cancelled_task_frees_its_lease(sync: SyncResourceManager) -> None:
    ref = sleeps.remote(60.0)
    assert leased_statistics().busy == 1
    ray.cancel(ref, force=True)
    with pytest.raises((ray.exceptions.TaskCancelledError, ray.exceptions.WorkerCrashedError)):
        ray.get(ref)
    wait_until_free(sync)
    wait_until_idle(sync)


@leased(cpu=1, max_retries=0)
def pid_then_sleep(path: str, seconds: float) -> None:
    with open(path, "w") as out:
        out.write(str(os.getpid()))
    time.sleep(seconds)


def test_a_killed_workers_lease_is_freed_when_its_ref_settles(
    sync: SyncResourceManager, tmp_path: Any
) -> None:
    path = tmp_path / "pid"
    ref = pid_then_sleep.remote(str(path), 60.0)
    deadline = time.monotonic() + 30
    while not (path.exists() and path.read_text()) and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(int(path.read_text()), signal.SIGKILL)
    # Free for the next task as soon as Ray settles the ref (0.02 s measured on one node:
    # benchmarks/ray_peer_bench.py times it; this checks that it happens at all).
    wait_until_free(sync, timeout=10)
    with pytest.raises(ray.exceptions.WorkerCrashedError):
        ray.get(ref)
    wait_until_idle(sync)


def test_a_dropped_ref_still_frees_its_lease(sync: SyncResourceManager) -> None:
    sleeps.remote(0.5)  # the ref is dropped at once
    assert leased_statistics().busy == 1
    wait_until_free(sync)


@leased(pools={"pg": 1}, timeout=1.0)
def on_a_slot(seconds: float) -> float:
    started = time.time()
    time.sleep(seconds)
    return started


def test_back_pressure_at_the_pools_size_and_its_timeout(sync: SyncResourceManager) -> None:
    refs = [on_a_slot.remote(0.3) for _ in range(6)]  # 2 slots: .remote() waits its turn
    assert leased_statistics().busy == 2  # (idle ones may be of other tests' kinds)
    starts = sorted(ray.get(refs))
    # Never more than 2 at once: the third started after the first ended, and so on.
    for earlier, later in zip(starts, starts[2:], strict=False):
        assert later >= earlier + 0.3 - 0.05
    busy = [on_a_slot.remote(3.0) for _ in range(2)]
    with pytest.raises(AcquireTimeout):
        on_a_slot.remote(0.0)  # both slots busy for 3 s: gives up after its 1 s
    ray.get(busy)
    wait_until_free(sync)
    wait_until_idle(sync)


def test_max_pending_bounds_the_calls_that_wait(sync: SyncResourceManager) -> None:
    bounded = on_a_slot.options(max_pending=1, timeout=30)
    busy = [bounded.remote(1.5) for _ in range(2)]  # both slots
    waiting: list[Any] = []
    thread = threading.Thread(target=lambda: waiting.append(bounded.remote(0.0)))
    thread.start()
    deadline = time.monotonic() + 10
    while leased_statistics().waiting < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(Overloaded, match="max_pending=1"):
        bounded.remote(0.0)  # a second waiter: refused at once
    thread.join()
    ray.get(busy + waiting)
    with pytest.raises(InvalidRequest, match="max_pending"):
        on_a_slot.options(max_pending=-1)
    wait_until_free(sync)


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
