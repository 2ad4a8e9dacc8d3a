"""Figures of a workload run, from its grant records: waits, balance, starvation.

Pure functions (no Ray, no clock): the demo's report and the balance benchmark
both compute their figures here, and the unit tests check them on made-up records.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from anya_resource.core.views import percentile


@dataclass(frozen=True)
class GrantRecord:
    """One lease of the workload, as its client saw it (wall-clock seconds)."""

    kind: str
    priority: str
    requested: float  # the client asked for the lease (called ``.remote``)
    # When the lease was the task's own: its body started (a task submitted ahead waits
    # in Ray behind another of its lease until then); ``.remote``'s return if it failed.
    granted: float
    ended: float  # the task's result was back (or its failure)
    node_id: str
    cpu: float
    ok: bool = True
    items: int = 0
    good: int = 0
    missed: int = 0

    @property
    def wait(self) -> float:
        return self.granted - self.requested

    def cpu_seconds(self, start: float = -math.inf, end: float = math.inf) -> float:
        """CPU granted times how long it was held, within ``start``..``end`` if given."""
        return self.cpu * max(0.0, min(self.ended, end) - max(self.granted, start))


def wait_summary(waits: Sequence[float]) -> dict[str, float | int | None]:
    """Count, mean and nearest-rank p50/p95/p99 of waits in seconds."""
    return {
        "count": len(waits),
        "mean": statistics.fmean(waits) if waits else None,
        "p50": percentile(waits, 50),
        "p95": percentile(waits, 95),
        "p99": percentile(waits, 99),
    }


def waits_by_class(
    records: Iterable[GrantRecord], classes: Sequence[str]
) -> dict[str, dict[str, float | int | None]]:
    """Wait-to-grant figures per priority class (every class listed, even without grants)."""
    waits: dict[str, list[float]] = {name: [] for name in classes}
    for record in records:
        waits.setdefault(record.priority, []).append(record.wait)
    return {name: wait_summary(values) for name, values in waits.items()}


def cpu_seconds_by_node(
    records: Iterable[GrantRecord],
    nodes: Sequence[str],
    start: float = -math.inf,
    end: float = math.inf,
) -> dict[str, float]:
    """Granted CPU-seconds per node (within ``start``..``end``); nodes with none count as 0."""
    totals = dict.fromkeys(nodes, 0.0)
    for record in records:
        held = record.cpu_seconds(start, end)
        totals[record.node_id] = totals.get(record.node_id, 0.0) + held
    return totals


def coefficient_of_variation(values: Sequence[float]) -> float | None:
    """Population standard deviation over the mean; None when undefined."""
    if len(values) < 2:
        return None
    mean = statistics.fmean(values)
    if mean <= 0:
        return None
    return statistics.pstdev(values) / mean


def grants_per_window(
    records: Iterable[GrantRecord],
    classes: Sequence[str],
    start: float,
    end: float,
    window: float = 10.0,
) -> dict[str, list[int]]:
    """Grants per class in each whole ``window`` from ``start``; a partial last one is dropped."""
    count = max(0, math.floor((end - start) / window + 1e-9))
    windows = {name: [0] * count for name in classes}
    for record in records:
        index = math.floor((record.granted - start) / window)
        if 0 <= index < count:
            windows.setdefault(record.priority, [0] * count)[index] += 1
    return windows


def starved(windows: dict[str, list[int]]) -> dict[str, list[int]]:
    """Per class, the indexes of the windows in which it got no grant (empty: none)."""
    return {
        name: [i for i, n in enumerate(counts) if n == 0]
        for name, counts in windows.items()
        if any(n == 0 for n in counts)
    }
