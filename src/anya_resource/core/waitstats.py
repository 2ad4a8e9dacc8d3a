"""How long requests waited to be granted: recent samples per priority class."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

WAIT_SAMPLES = 2048  # recent waits kept per priority class, for percentiles


def percentile(values: Iterable[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100); None for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


class WaitStats:
    __slots__ = ("by_class",)

    def __init__(self) -> None:
        self.by_class: dict[str, deque[float]] = {}

    def record(self, priority_name: str, waited: float) -> None:
        samples = self.by_class.get(priority_name)
        if samples is None:
            samples = self.by_class[priority_name] = deque(maxlen=WAIT_SAMPLES)
        samples.append(waited)

    def summary(self) -> dict[str, dict[str, float | int | None]]:
        """p50/p95/p99 of recent waits to grant, per priority class."""
        return {
            name: {
                "count": len(samples),
                "p50": percentile(samples, 50),
                "p95": percentile(samples, 95),
                "p99": percentile(samples, 99),
            }
            for name, samples in self.by_class.items()
        }
