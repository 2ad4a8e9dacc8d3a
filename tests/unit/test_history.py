"""The history ring: bounded by time, entries and bytes; one entry per slot; compact entries."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from anya_resource.core import NodeSample
from anya_resource.core.history import MAX_BYTES, MAX_ENTRIES, HistoryRing, compact, decode
from anya_resource.errors import InvalidRequest
from tests.unit.core_support import GIB, KIB, Harness, make_policy


def entry(at: float, payload: str = "") -> dict[str, Any]:
    return {"at": at, "payload": payload}


def fill(ring: HistoryRing, start: float, step: float, count: int, payload: str = "") -> None:
    """Offer an entry every ``step`` seconds, as the coordinator's loop does."""
    for i in range(count):
        now = start + i * step
        if ring.due(now):
            ring.add(entry(now, payload), now)


def ats(ring: HistoryRing, now: float, seconds: float | None = None) -> list[float]:
    return [e["at"] for e in decode(ring.since(now, seconds))]


def test_one_entry_per_heartbeat_for_the_last_window_only() -> None:
    ring = HistoryRing(heartbeat_s=1.0, window_s=60.0)
    fill(ring, 0.0, 1.0, 200)
    assert ats(ring, 199.0) == [float(t) for t in range(139, 200)]
    assert len(ring) == 61


def test_entry_count_is_bounded_and_a_fast_heartbeat_samples_less_often() -> None:
    # 0.2 s heartbeats over an hour would be 18,000 entries; 3,600 at most are kept,
    # spread over the whole window: one a second.
    ring = HistoryRing(heartbeat_s=0.2, window_s=3600.0, max_entries=3600)
    assert ring.interval == 1.0
    fill(ring, 0.0, 0.2, 5 * 60)  # one minute of heartbeats
    assert len(ring) == 60
    small = HistoryRing(heartbeat_s=1.0, window_s=3600.0, max_entries=10)
    for i in range(100):  # offered at every slot, ten are kept: the newest
        now = i * small.interval
        small.add(entry(now), now)
    assert len(small) == 10
    assert ats(small, 99 * small.interval) == [i * small.interval for i in range(90, 100)]


def test_byte_budget_drops_the_oldest() -> None:
    ring = HistoryRing(heartbeat_s=1.0, window_s=3600.0, max_bytes=10_000)
    fill(ring, 0.0, 1.0, 500, payload="x" * 200)
    assert ring.bytes <= 10_000
    assert 0 < len(ring) < 500
    kept = ats(ring, 499.0)
    assert kept[-1] == 499.0 and kept == sorted(kept)
    assert ring.bytes == sum(len(blob) for blob in ring.since(499.0))


def test_a_loop_that_always_wakes_late_misses_no_slot_and_a_stall_makes_no_burst() -> None:
    ring = HistoryRing(heartbeat_s=1.0, window_s=3600.0)
    # Each wake-up 10 ms later than the one before (a loop that sleeps 1 s after work).
    fill(ring, 0.0, 1.01, 100)
    assert len(ring) == 100
    # A 30 s stall (the event loop was busy): one entry when it comes back, not thirty.
    resumed = 99 * 1.01 + 30
    fill(ring, resumed, 0.01, 50)
    assert ats(ring, resumed + 0.5)[-1] == resumed
    assert len(ats(ring, resumed + 0.5, seconds=1.0)) == 1


def test_since_picks_the_last_seconds_oldest_first() -> None:
    ring = HistoryRing(heartbeat_s=1.0)
    fill(ring, 100.0, 1.0, 10)
    assert ats(ring, 109.0, 3) == [106.0, 107.0, 108.0, 109.0]
    assert ats(ring, 109.0, 0) == [109.0]
    assert ats(ring, 109.0, math.inf) == ats(ring, 109.0) == [100.0 + i for i in range(10)]
    assert ats(ring, 200.0, 5) == []


@pytest.mark.parametrize("seconds", [-1, math.nan, "10", True])
def test_since_rejects_bad_seconds(seconds: Any) -> None:
    with pytest.raises(InvalidRequest, match="seconds"):
        HistoryRing(heartbeat_s=1.0).since(0.0, seconds)


@pytest.mark.parametrize(
    "kwargs",
    [{"heartbeat_s": 0}, {"window_s": -1}, {"max_entries": 0}, {"max_bytes": 0}],
)
def test_bounds_must_be_positive(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        HistoryRing(**{"heartbeat_s": 1.0, **kwargs})  # type: ignore[arg-type]


def test_compact_entry_has_the_documented_shape_and_survives_json() -> None:
    h = Harness(make_policy(pools={"default": {"size": 4}, "pg": {"size": 2}}))
    h.node("a", cpu=4, memory=8 * GIB)
    h.node("b", cpu=2, memory=4 * GIB)
    h.acquire({"cpu": 2, "memory": "1GiB", "pools": {"pg": 2}}, node="a")
    h.wait({"pools": {"pg": 1}})
    h.s.health("a", NodeSample(memory_percent=91.234, cpu_percent=12.0), h.now)
    snap = compact(h.s.state, h.now)
    assert json.loads(json.dumps(snap)) == snap
    assert set(snap) == {"at", "resources", "pools", "nodes", "leases", "waiting"}
    assert snap["resources"]["cpu"] == {
        "capacity": 6000,
        "granted": 2000,
        "free": 4000,
        "waiting": 0,
    }
    assert snap["resources"]["memory"]["granted"] == GIB
    assert snap["pools"]["pg"] == {"size": 2, "in_use": 2, "waiting": 1}
    assert snap["nodes"]["a"] == {
        "memory_percent": 91.2,
        "cpu_percent": 12.0,
        "pressured": ["memory"],  # 91 % is past the default memory_high of 85
        "granted": {"memory": GIB, "cpu": 2000, "gpu": 0, "disk": 0},
    }
    assert snap["nodes"]["b"]["memory_percent"] is None  # no heartbeat yet
    assert (snap["leases"], snap["waiting"]) == (1, 1)
    # The figures agree with the full snapshot's.
    full = h.snap()
    for resource, row in snap["resources"].items():
        assert row["free"] == full["resources"][resource]["free"]


def entry_bytes(nodes: int) -> int:
    """What one heartbeat of a cluster of ``nodes`` busy nodes costs the ring, in bytes."""
    h = Harness(make_policy(pools={"default": {"size": 4}, "pg": {"size": 2}}))
    for i in range(nodes):
        node_id = f"{i:056x}"  # Ray node ids are 56 hex digits
        h.node(node_id, cpu=8, memory=32 * GIB)
        h.s.health(node_id, NodeSample(memory_percent=41.234, cpu_percent=12.3), h.now)
        h.acquire({"cpu": 1, "memory": "1GiB"}, node=node_id)
    ring = HistoryRing(heartbeat_s=1.0)
    ring.add(compact(h.s.state, h.now), h.now)
    return ring.bytes


def test_entry_size_is_about_1_kb_for_4_nodes_and_an_hour_of_100_fits_the_budget() -> None:
    """The sizes docs/operations.md quotes (~1 KB an entry for 4 nodes, ~18 KB for 100)."""
    small, large = entry_bytes(4), entry_bytes(100)
    assert KIB // 2 < small < 2 * KIB, small
    assert 15 * KIB < large < 20 * KIB, large
    assert MAX_ENTRIES * large <= MAX_BYTES  # an hour of 100 nodes, one entry a second
