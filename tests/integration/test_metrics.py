"""Metrics: recorded by the coordinator, read back from Ray's metrics endpoint (loopback).

Also the history API end to end on a single node. Ray exports custom metrics every
``metrics_report_interval_ms`` (10 s by default; 1 s here, its floor).
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import ray

from anya_resource import AcquireTimeout, ResourceManager
from anya_resource.actors import deploy
from anya_resource.core import NodeSample
from anya_resource.metrics import METRICS, PREFIX, CoordinatorMetrics
from tests.raytools import GiB, Loop, deployed, eventually, local_ray
from tests.unit.core_support import Harness, make_policy

HEARTBEAT = 0.2
POLICY = {
    "heartbeat_s": HEARTBEAT,
    "reserve": {"memory": 0, "cpu": 0},
    "lease": {"default_ttl": 10.0, "renew_every": 3.0, "preemption_grace_s": 0.5},
    "pools": {"default": {"size": 4}, "rpc": {"size": 1}},
    "aging": {"per_second": 0.0},
}
SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


# -- without Ray: what is recorded, and when ------------------------------------------


class Fake:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.calls: list[tuple[float, dict[str, str]]] = []

    def set(self, value: float, tags: dict[str, str] | None = None) -> None:
        self.calls.append((value, tags or {}))

    inc = observe = set


def test_decisions_are_only_noted_until_the_flush_hands_them_to_ray() -> None:
    fakes: dict[str, Fake] = {}

    def factory(kind: str, name: str, description: str, tags: tuple[str, ...]) -> Fake:
        fakes[name.removeprefix(PREFIX)] = Fake(kind)
        return fakes[name.removeprefix(PREFIX)]

    metrics = CoordinatorMetrics(factory)
    assert set(fakes) == set(METRICS)
    h = Harness(make_policy(pools={"default": {"size": 1}}))
    h.node("n1", cpu=2, memory=GiB)
    first = h.acquire({"cpu": 1}, priority="high")
    metrics.decisions([first])
    _, decisions = h.submit({"pools": {"default": 1}})
    _, waiting = h.submit({"pools": {"default": 1}}, timeout=1)
    metrics.decisions(decisions + waiting)
    assert all(not fake.calls for fake in fakes.values())  # nothing reaches Ray yet
    h.clock.advance(2)
    metrics.decisions(h.tick())  # the waiter times out
    h.s.health("n1", NodeSample(memory_percent=50.0, cpu_percent=10.0), h.now)
    metrics.flush(h.s)
    assert fakes["grants"].calls == [(1, {"priority": "high"}), (1, {"priority": "normal"})]
    assert fakes["rejections"].calls == [(1, {"reason": "timeout"})]
    assert [tags for _, tags in fakes["wait_seconds"].calls] == [
        {"priority": "high"},
        {"priority": "normal"},
    ]
    cpu = {"node": "n1", "resource": "cpu"}
    assert (1.0, cpu) in fakes["granted"].calls and (2.0, cpu) in fakes["capacity"].calls
    assert fakes["node_memory_percent"].calls == [(50.0, {"node": "n1"})]
    assert not any(tags.get("resource") == "gpu" for _, tags in fakes["capacity"].calls)
    # A second flush adds only what is new: counters never count twice.
    metrics.job_started("high", "ml", 12.5)
    metrics.flush(h.s)
    assert len(fakes["grants"].calls) == 2 and len(fakes["rejections"].calls) == 1
    job = {"priority": "high", "tenant": "ml"}
    assert fakes["job_starts"].calls == [(1, job)]
    assert fakes["job_wait_seconds"].calls == [(12.5, job)]


def test_a_failing_metrics_backend_disables_metrics_not_the_coordinator() -> None:
    def broken(kind: str, name: str, description: str, tags: tuple[str, ...]) -> Any:
        raise RuntimeError("no metrics agent")

    metrics = CoordinatorMetrics(broken)
    assert not metrics.enabled
    h = Harness(make_policy())
    h.node("n1", cpu=2)
    metrics.decisions([h.acquire({"cpu": 1})])
    metrics.flush(h.s)  # nothing raised


# -- on a real Ray ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def loop() -> Iterator[Loop]:
    with local_ray(num_cpus=2, memory=4 * GiB, system_config={"metrics_report_interval_ms": 1000}):
        yield Loop()


@pytest.fixture(scope="module")
def manager(loop: Loop) -> ResourceManager:
    return deployed(loop, POLICY, nodes=1)


def scrape() -> list[tuple[str, dict[str, str], float]]:
    """Every sample of every node's metrics endpoint (all on 127.0.0.1)."""
    samples = []
    for node in ray.nodes():
        port = node.get("MetricsExportPort")
        if not node.get("Alive") or not port:
            continue
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:  # loopback only
            text = response.read().decode()
        for line in text.splitlines():
            match = SAMPLE.match(line)
            if match and not line.startswith("#"):
                labels = dict(LABEL.findall(match["labels"] or ""))
                samples.append((match["name"], labels, float(match["value"])))
    return samples


def value(
    samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str
) -> float | None:
    found = [
        v
        for n, tags, v in samples
        if n == name and all(tags.get(k) == w for k, w in labels.items())
    ]
    return sum(found) if found else None


def test_metrics_reach_rays_endpoint_with_plausible_values(
    manager: ResourceManager, loop: Loop
) -> None:
    node_id = ray.nodes()[0]["NodeID"]

    async def activity() -> None:
        for priority in ("high", "normal", "normal"):
            async with manager.acquire({"cpu": 0.5}, priority=priority):
                pass
        held = await manager.acquire({"pools": {"rpc": 1}})
        with pytest.raises(AcquireTimeout):
            await manager.acquire({"pools": {"rpc": 1}}, timeout=0.3)
        batch = await manager.acquire({"cpu": 2}, priority="batch", preemptible=True)
        urgent = await manager.acquire({"cpu": 1}, priority="critical", timeout=30)
        assert urgent.node_id == batch.node_id  # after the batch lease was taken back
        await manager.release(urgent)
        await manager.release(held)
        # Left held: gauges then have something to show.
        await manager.acquire({"cpu": 0.25, "memory": "256MiB"})
        # What a queued job's supervisor reports once its lease is granted (jobs.py).
        await deploy.coordinator().job_started.remote("high", "ml", 1.5)

    loop.run(activity())

    def complete() -> list[tuple[str, dict[str, str], float]] | None:
        samples = scrape()
        wanted = {
            "grants": value(samples, "ray_anya_resource_grants_total", priority="critical"),
            "timeouts": value(samples, "ray_anya_resource_rejections_total", reason="timeout"),
            "preemptions": value(
                samples, "ray_anya_resource_revocations_total", cause="preemption"
            ),
            "granted": value(samples, "ray_anya_resource_granted", node=node_id, resource="memory"),
        }
        return samples if all(v is not None and v > 0 for v in wanted.values()) else None

    samples = None
    deadline = time.monotonic() + 30  # a few 1 s export rounds, under load
    while samples is None and time.monotonic() < deadline:
        samples = complete()
        if samples is None:
            time.sleep(0.5)
    assert samples is not None, sorted({n for n, _, _ in scrape() if "anya" in n})

    def v(name: str, **labels: str) -> float | None:
        return value(samples, "ray_" + PREFIX + name, **labels)

    cpu = {"node": node_id, "resource": "cpu"}
    memory = {"node": node_id, "resource": "memory"}
    ledger = loop.run(manager.snapshot())["nodes"][node_id]["resources"]
    assert v("capacity", **cpu) == ledger["cpu"]["capacity"] / 1000  # cores, not thousandths
    assert v("capacity", **memory) == ledger["memory"]["capacity"] <= 4 * GiB
    assert v("granted", **cpu) == 0.25 and v("granted", **memory) == 256 * 1024**2
    assert v("free", **cpu) == ledger["cpu"]["free"] / 1000
    assert v("grantable", **cpu) == ledger["cpu"]["grantable"] / 1000
    assert v("node_pressured", **memory) == 0.0
    assert 0 < (v("node_memory_percent", node=node_id) or 0) < 100
    # normal: two cpu leases, the rpc slot and the lease left held.
    assert v("grants_total", priority="high") == 1 and v("grants_total", priority="normal") == 4
    assert (v("grants_total", priority="batch"), v("grants_total", priority="critical")) == (1, 1)
    assert v("rejections_total", reason="timeout") == 1
    assert v("revocations_total", cause="preemption") == 1
    assert (v("reclaims_total", cause="released") or 0) >= 5
    assert v("wait_seconds_count", priority="critical") == 1
    assert v("wait_seconds_count", priority="normal") == 4
    # The critical request waited for the batch lease's grace period (0.5 s).
    assert (v("wait_seconds_sum", priority="critical") or 0) > 0
    assert v("pool_size", pool="rpc") == 1 and v("pool_in_use", pool="rpc") == 0
    assert v("leases") == 1 and v("queue_waiting") == 0
    assert v("job_starts_total", priority="high", tenant="ml") == 1
    assert v("job_wait_seconds_count", priority="high", tenant="ml") == 1


def test_history_has_an_entry_per_heartbeat_and_the_documented_shape(
    manager: ResourceManager, loop: Loop
) -> None:
    async def some() -> list[dict[str, Any]] | None:
        entries = await manager.history()
        return entries if len(entries) >= 3 else None

    entries = loop.run(eventually(some, timeout=20))
    for entry in entries:
        assert set(entry) == {"at", "resources", "pools", "nodes", "leases", "waiting"}
        for row in entry["resources"].values():
            assert set(row) == {"capacity", "granted", "free", "waiting"}
            assert row["free"] + row["granted"] <= row["capacity"]
        assert set(entry["pools"]) == {"default", "rpc"}
        (node,) = entry["nodes"].values()
        assert set(node) == {"memory_percent", "cpu_percent", "pressured", "granted"}
    ats = [e["at"] for e in entries]
    assert ats == sorted(ats)
    # One a heartbeat: the ring's interval is max(heartbeat, 1 hour / 3600 entries) = 1 s.
    gaps = [b - a for a, b in itertools.pairwise(ats)]
    assert all(0.5 <= gap <= 5 for gap in gaps), gaps
    asked = time.time()
    recent = loop.run(manager.history(seconds=2.5))
    assert 1 <= len(recent) <= 4
    assert all(e["at"] >= asked - 2.5 for e in recent)
    assert len(loop.run(manager.history(seconds=0))) <= 1


def test_warm_leases_are_shown_as_idle_or_busy(manager: ResourceManager, loop: Loop) -> None:
    async def run() -> None:
        mine = await ResourceManager.new()  # its own channel; closing gives all back
        busy = await mine.acquire({"cpu": 0.1}, warm=True)
        idle = await mine.acquire({"cpu": 0.2}, warm=True)
        await mine.release(idle)  # stays with its manager, idle

        async def shown() -> bool:
            rows = {r["lease_id"]: r["warm"] for r in await manager.leases()}
            snap = await manager.snapshot()
            return (
                rows.get(busy.lease_id) == "busy"
                and rows.get(idle.lease_id) == "idle"
                and (snap["warm"] == {"idle": 1, "busy": 1})
            )

        await eventually(shown, timeout=10)

        def gauges() -> tuple[float | None, float | None]:
            samples = scrape()
            name = "ray_" + PREFIX + "warm_leases"
            return value(samples, name, use="idle"), value(samples, name, use="busy")

        deadline = time.monotonic() + 30  # Ray exports every few seconds
        while gauges() != (1.0, 1.0) and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        assert gauges() == (1.0, 1.0)
        await mine.close()

        async def gone() -> bool:
            return (await manager.snapshot())["warm"] == {"idle": 0, "busy": 0}

        await eventually(gone, timeout=10)

    loop.run(run())
