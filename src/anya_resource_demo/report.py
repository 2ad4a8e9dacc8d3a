"""The final report of a workload run: grants and waits per class, nodes, balance, bottleneck.

Built from the clients' grant records and the coordinator's snapshots taken
before, during and after the run. Everything in it is plain data (JSON as is).
The coordinator's own figures sit beside the clients' so that each can be checked
against the other: every grant a client saw is one the coordinator counted, and a
client's wait (its whole acquire call) is never shorter than the coordinator's
(from the request's arrival to its grant).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from anya_resource.core.bottleneck import binding
from anya_resource.messages import Snapshot
from anya_resource.quantities import MILLI
from anya_resource_demo.runner import Plan
from anya_resource_demo.stats import (
    GrantRecord,
    coefficient_of_variation,
    cpu_seconds_by_node,
    grants_per_window,
    starved,
    waits_by_class,
)

WINDOW_S = 10.0


@dataclass
class Samples:
    """What the live loop saw of the cluster, one entry per refresh."""

    node_cpu: dict[str, list[float]] = field(default_factory=dict)  # % of the node's CPUs
    node_memory: dict[str, list[float]] = field(default_factory=dict)  # % of its memory
    bottlenecks: Counter[str] = field(default_factory=Counter)  # binding finding's name
    findings: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> last finding
    count: int = 0

    def add(self, snap: Snapshot) -> None:
        self.count += 1
        for node_id, node in snap["nodes"].items():
            cpu, memory = node_use(snap, node_id, node)
            if cpu is not None:
                self.node_cpu.setdefault(node_id, []).append(cpu)
            if memory is not None:
                self.node_memory.setdefault(node_id, []).append(memory)
        top = binding(snap.get("bottlenecks", []))
        if top is not None:
            self.bottlenecks[top["name"]] += 1
            self.findings[top["name"]] = top


def node_use(
    snap: Snapshot, node_id: str, node: dict[str, Any]
) -> tuple[float | None, float | None]:
    """The node's own measured CPU and memory use, in % of what Ray gives the node.

    The agent sums the node's own processes (its raylet and workers), which is what
    tells one embedded node from another on a single machine.
    """
    health = snap.get("health", {}).get(node_id)
    if health is None:
        return None, None
    cpu_capacity = node["resources"]["cpu"]["capacity"] / MILLI
    memory_capacity = node["resources"]["memory"]["capacity"]
    cpu = health["node_cpu_percent"] * health["cpu_count"] / cpu_capacity if cpu_capacity else None
    memory = health["node_rss"] / memory_capacity * 100 if memory_capacity else None
    return cpu, memory


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _delta(after: Snapshot, before: Snapshot, key: str) -> dict[str, int]:
    """Counters of ``after`` less those of ``before`` (a reused coordinator counts on)."""
    old = before["counters"].get(key, {})
    return {
        reason: count - old.get(reason, 0)
        for reason, count in after["counters"].get(key, {}).items()
        if count - old.get(reason, 0)
    }


@dataclass(frozen=True)
class RunWindow:
    """When the measured run started and ended (wall clock), and whether Ctrl-C ended it."""

    start: float
    end: float
    interrupted: bool = False

    @property
    def seconds(self) -> float:
        return max(0.0, self.end - self.start)


def build_report(
    plans: Sequence[Plan],
    records: Sequence[GrantRecord],
    run: RunWindow,
    snapshots: tuple[Snapshot, Snapshot],
    samples: Samples,
    labels: dict[str, str],
) -> dict[str, Any]:
    """The report; ``snapshots`` are the coordinator's before the run and after the drain."""
    before, after = snapshots
    classes = [plan.kind.priority for plan in plans]
    # Clipped to the run: the drain after it would count as more than 100 %.
    cpu_seconds = cpu_seconds_by_node(records, list(after["nodes"]), run.start, run.end)
    return {
        "run": {
            "seconds": round(run.seconds, 3),
            "interrupted": run.interrupted,
            "nodes": len(after["nodes"]),
        },
        "classes": _classes(plans, records, after),
        "work": _work(plans, records),
        "nodes": _nodes(records, cpu_seconds, run, after, samples, labels),
        "balance": _balance(records, cpu_seconds, run, classes),
        "preemptions": _delta(after, before, "revoked").get("preemption", 0),
        "revocations": _delta(after, before, "revoked"),
        "rejections": _delta(after, before, "rejected"),
        "bottleneck": _bottleneck(samples),
        "coordinator": {
            "granted": after["counters"]["granted"] - before["counters"]["granted"],
            "leases_at_end": after["leases"],
            "waiting_at_end": after["queue"]["waiting"],
            "waits": after.get("waits", {}),
        },
    }


def _classes(
    plans: Sequence[Plan], records: Sequence[GrantRecord], after: Snapshot
) -> dict[str, Any]:
    waits = waits_by_class(records, [plan.kind.priority for plan in plans])
    result = {}
    for plan in plans:
        kind = plan.kind
        mine = [r for r in records if r.kind == kind.name]
        result[kind.priority] = {
            "job": kind.name,
            "tenant": kind.tenant,
            "lease": {"cpu": kind.cpu, "memory": kind.memory},
            "clients": plan.clients,
            # Tasks let through, each on a lease: a warm one (@leased) may serve several,
            # so the coordinator's grants ("coordinator_wait_s" count) are at most these.
            "grants": len(mine),
            "failed": sum(not r.ok for r in mine),
            "wait_s": waits[kind.priority],
            "coordinator_wait_s": after.get("waits", {}).get(kind.priority),
        }
    return result


def _work(plans: Sequence[Plan], records: Sequence[GrantRecord]) -> dict[str, Any]:
    counts = {plan.kind.name: plan.kind.items for plan in plans}  # what each kind's items are
    txs = [r for r in records if r.ok and counts.get(r.kind) == "transactions"]
    rows = [r for r in records if r.ok and counts.get(r.kind) == "rows"]
    scored = sum(r.items for r in rows)
    return {
        "transactions": {
            "verified": sum(r.items for r in txs),
            "valid": sum(r.good for r in txs),
            "rejected": sum(r.items - r.good for r in txs),
            "tampered_accepted": sum(r.missed for r in txs),
        },
        "inference": {
            "rows": scored,
            "accuracy": sum(r.good for r in rows) / scored if scored else None,
        },
    }


def _nodes(
    records: Sequence[GrantRecord],
    cpu_seconds: dict[str, float],
    run: RunWindow,
    after: Snapshot,
    samples: Samples,
    labels: dict[str, str],
) -> dict[str, Any]:
    grants = Counter(r.node_id for r in records)
    result = {}
    for node_id, node in after["nodes"].items():
        cpus = node["resources"]["cpu"]["grantable"] / MILLI
        possible = cpus * run.seconds
        result[node_id] = {
            "label": labels.get(node_id, node_id[:8]),
            "grants": grants.get(node_id, 0),
            "cpu_seconds": round(cpu_seconds.get(node_id, 0.0), 3),
            "utilisation": cpu_seconds.get(node_id, 0.0) / possible if possible else None,
            "measured_cpu_percent": _mean(samples.node_cpu.get(node_id, [])),
            "measured_memory_percent": _mean(samples.node_memory.get(node_id, [])),
            "leases_at_end": node["leases"],
        }
    return result


def _balance(
    records: Sequence[GrantRecord],
    cpu_seconds: dict[str, float],
    run: RunWindow,
    classes: list[str],
) -> dict[str, Any]:
    windows = grants_per_window(records, classes, run.start, run.end, WINDOW_S)
    return {
        "cpu_seconds_cv": coefficient_of_variation(list(cpu_seconds.values())),
        "window_s": WINDOW_S,
        "grants_per_window": windows,
        "starved_windows": starved(windows),
    }


def _bottleneck(samples: Samples) -> dict[str, Any] | None:
    if not samples.bottlenecks:
        return None
    name, times = samples.bottlenecks.most_common(1)[0]
    finding = samples.findings[name]
    return {
        "name": name,
        "binding_in": times,
        "samples": samples.count,
        "message": finding["message"],
        "recommendation": finding["recommendation"],
    }
