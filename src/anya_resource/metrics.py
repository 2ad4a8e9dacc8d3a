"""Prometheus metrics of the coordinator, exported through Ray's metrics agent.

The coordinator records with ``ray.util.metrics``; Ray's agent on the coordinator's
node serves them with Ray's own on its metrics export port
(``ray.nodes()[i]["MetricsExportPort"]``), each name with Ray's ``ray_`` prefix and
counters with ``_total`` added: ``anya_resource_grants`` is scraped as
``ray_anya_resource_grants_total``.

Recording stays off the acquire path: a decision only bumps a Python counter
(a dict update, where a Ray metric record is a call into Ray's C++ core), and ``flush``, once per heartbeat,
hands the sums to Ray and sets the gauges from the ledgers. Rejections, reclaims and
revocations are taken as differences of the scheduler's own counters, so they can
never disagree with ``snapshot()["counters"]``.

Units: memory and disk in bytes, cpu and gpu in cores/devices, pools in slots, waits
in seconds, measured use in percent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from anya_resource.core.model import NODE_RESOURCES, Decision, Grant
from anya_resource.quantities import FRACTIONAL_RESOURCES, MILLI

if TYPE_CHECKING:
    from anya_resource.core.scheduler import Scheduler

log = logging.getLogger(__name__)

PREFIX = "anya_resource_"
# Grant waits span a free grant (0) to minutes behind a busy pool.
WAIT_BOUNDARIES = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300]
MAX_PENDING_WAITS = 100_000  # waits kept between two flushes; past that they are dropped

# name -> (kind, description, tag keys)
METRICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "capacity": ("gauge", "Node capacity (Ray's, capped by the machine's)", ("node", "resource")),
    "grantable": (
        "gauge",
        "What a node may grant now: capacity - reserve, pressure",
        ("node", "resource"),
    ),
    "granted": ("gauge", "Granted on a node by active leases", ("node", "resource")),
    "free": ("gauge", "Grantable minus granted on a node", ("node", "resource")),
    "node_memory_percent": ("gauge", "Measured memory use that pressure acts on", ("node",)),
    "node_cpu_percent": ("gauge", "Measured CPU use that pressure acts on", ("node",)),
    "node_pressured": ("gauge", "1 while a node is under measured pressure", ("node", "resource")),
    "waiting": ("gauge", "Demand waiting in the queue, cluster-wide", ("resource",)),
    "pool_size": ("gauge", "Slots of a pool, cluster-wide", ("pool",)),
    "pool_in_use": ("gauge", "Slots of a pool held by leases", ("pool",)),
    "pool_waiting": ("gauge", "Slots of a pool asked for by waiting requests", ("pool",)),
    "leases": ("gauge", "Active leases", ()),
    "warm_leases": ("gauge", "Warm leases held by client processes, by use", ("use",)),
    "queue_waiting": ("gauge", "Requests waiting", ()),
    "grants": ("counter", "Leases granted", ("priority",)),
    "rejections": (
        "counter",
        "Requests refused or given up (timeout, cancelled, ...)",
        ("reason",),
    ),
    "reclaims": ("counter", "Leases ended, by cause (released, expired, revoked, ...)", ("cause",)),
    "revocations": ("counter", "Leases revoked, by cause (preemption, pressure)", ("cause",)),
    "wait_seconds": ("histogram", "Wait from request to grant", ("priority",)),
    # Whole Ray jobs (jobs.py): each start, and how long it waited in the queue for it.
    "job_starts": ("counter", "Queued Ray jobs started", ("priority", "tenant")),
    "job_wait_seconds": (
        "histogram",
        "Wait of a queued Ray job, from submit (or requeue) to its lease",
        ("priority", "tenant"),
    ),
}


def _natural(resource: str, amount: int) -> float:
    """Core units to the exported ones: cores and devices, not thousandths."""
    return amount / MILLI if resource in FRACTIONAL_RESOURCES else float(amount)


def _ray_factory(kind: str, name: str, description: str, tags: tuple[str, ...]) -> Any:
    from ray.util import metrics

    if kind == "gauge":
        return metrics.Gauge(name, description, tag_keys=tags)
    if kind == "counter":
        return metrics.Counter(name, description, tag_keys=tags)
    return metrics.Histogram(name, description, boundaries=WAIT_BOUNDARIES, tag_keys=tags)


class CoordinatorMetrics:
    """The coordinator's metrics. ``factory`` makes one metric (tests pass a fake)."""

    def __init__(
        self, factory: Callable[[str, str, str, tuple[str, ...]], Any] = _ray_factory
    ) -> None:
        self.metrics: dict[str, Any] = {}
        try:
            for short, (kind, description, tags) in METRICS.items():
                self.metrics[short] = factory(kind, PREFIX + short, description, tags)
        except Exception as exc:  # no metrics is better than no coordinator
            log.warning("metrics disabled: %s", exc)
            self.metrics = {}
        self._grants: dict[str, int] = {}
        self._waits: list[tuple[str, float]] = []
        self._job_waits: list[tuple[dict[str, str], float]] = []
        self._seen: dict[str, dict[str, int]] = {
            "rejections": {},
            "reclaims": {},
            "revocations": {},
        }

    @property
    def enabled(self) -> bool:
        return bool(self.metrics)

    def decisions(self, decisions: Iterable[Decision]) -> None:
        """Note the grants among ``decisions`` (cheap: no Ray call here)."""
        for decision in decisions:
            if isinstance(decision, Grant):
                self.grant(decision)

    def grant(self, grant: Grant) -> None:
        """Note one grant: its priority class and how long it waited."""
        priority = grant.lease.priority_name
        self._grants[priority] = self._grants.get(priority, 0) + 1
        if len(self._waits) < MAX_PENDING_WAITS:
            self._waits.append((priority, grant.waited))

    def job_started(self, priority: str, tenant: str, waited: float) -> None:
        """Note that a queued Ray job got its lease after ``waited`` seconds."""
        if len(self._job_waits) < MAX_PENDING_WAITS:
            self._job_waits.append(({"priority": priority, "tenant": tenant}, waited))

    def flush(self, scheduler: Scheduler, warm: Mapping[str, int] | None = None) -> None:
        """Hand what was noted since the last flush to Ray, and set every gauge
        (``warm``: warm leases by use, idle and busy, as their managers reported)."""
        if not self.metrics:
            self._grants.clear()
            self._waits.clear()
            self._job_waits.clear()
            return
        self._flush_events(scheduler)
        self._set_gauges(scheduler)
        for use, count in (warm or {}).items():
            self.metrics["warm_leases"].set(float(count), tags={"use": use})

    def _flush_events(self, scheduler: Scheduler) -> None:
        grants, self._grants = self._grants, {}
        for priority, count in grants.items():
            self.metrics["grants"].inc(count, tags={"priority": priority})
        waits, self._waits = self._waits, []
        histogram = self.metrics["wait_seconds"]
        for priority, waited in waits:
            histogram.observe(max(0.0, waited), tags={"priority": priority})
        job_waits, self._job_waits = self._job_waits, []
        for tags, waited in job_waits:
            self.metrics["job_starts"].inc(1, tags=tags)
            self.metrics["job_wait_seconds"].observe(max(0.0, waited), tags=tags)
        counters = scheduler.counters
        for short, tag, totals in (
            ("rejections", "reason", counters.rejected),
            ("reclaims", "cause", counters.reclaimed),
            ("revocations", "cause", counters.revoked),
        ):
            self._inc_deltas(short, tag, totals)

    def _inc_deltas(self, short: str, tag: str, totals: Mapping[str, int]) -> None:
        seen = self._seen[short]
        for key, total in totals.items():
            delta = total - seen.get(key, 0)
            if delta > 0:
                self.metrics[short].inc(delta, tags={tag: key})
            seen[key] = total

    def _set_gauges(self, scheduler: Scheduler) -> None:
        m = self.metrics
        for node_id, node in scheduler.nodes.items():
            for r in NODE_RESOURCES:
                capacity = node.capacity.get(r, 0)
                if capacity == 0 and node.granted[r] == 0:
                    continue  # no gpu or disk here: a row of zeros is only noise
                tags = {"node": node_id, "resource": r}
                m["capacity"].set(_natural(r, capacity), tags=tags)
                m["grantable"].set(_natural(r, node.grantable(r)), tags=tags)
                m["granted"].set(_natural(r, node.granted[r]), tags=tags)
                m["free"].set(_natural(r, node.free(r)), tags=tags)
            for r in ("memory", "cpu"):
                m["node_pressured"].set(
                    1.0 if r in node.pressured else 0.0, tags={"node": node_id, "resource": r}
                )
            sample = scheduler.samples.get(node_id)
            if sample is not None:
                m["node_memory_percent"].set(sample.memory_percent, tags={"node": node_id})
                m["node_cpu_percent"].set(sample.cpu_percent, tags={"node": node_id})
        demand = scheduler.waiting_demand
        for r in NODE_RESOURCES:
            m["waiting"].set(_natural(r, demand.get(r, 0)), tags={"resource": r})
        for name, pool in scheduler.pools.items():
            tags = {"pool": name}
            m["pool_size"].set(float(pool.size), tags=tags)
            m["pool_in_use"].set(float(pool.in_use), tags=tags)
            m["pool_waiting"].set(float(demand.get(name, 0)), tags=tags)
        m["leases"].set(float(len(scheduler.leases)))
        m["queue_waiting"].set(float(len(scheduler.queue)))


__all__ = ["METRICS", "PREFIX", "WAIT_BOUNDARIES", "CoordinatorMetrics"]
