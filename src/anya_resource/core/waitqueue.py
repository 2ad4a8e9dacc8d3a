"""The waiting queue: effective priority with aging, FIFO among equals.

Effective priority = base priority + min(max_boost, per_second * time waited).
Within one base priority the oldest request is always the most aged, so each
base class is a plain FIFO and the global order is a merge of the class heads.

Waiters are also grouped by *shape* (same resources, pools, tenant and node
constraint). Requests of one shape fit in exactly the same places, so when the
best of a shape does not fit, none of that shape does: a scheduling pass looks
at one waiter per shape, not at every waiter. That keeps the cost of a decision
flat as the queue grows to 100,000 requests of a few dozen shapes.

The queue also keeps, per node resource, the smallest amount any shape asks for
(its *floor*), and which tenants and pools the shapes use. A release that frees
less than the floor of a resource every shape asks for, and touches none of those
tenants and pools, can serve no waiter: the scheduler then skips the pass.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from anya_resource.core.model import Request

GANG_BUNDLES = 5  # where a gang's shape keeps its bundles (``Request.shape``)


@dataclass(slots=True)
class Waiter:
    request_id: str
    request: Request
    submitted_at: float
    deadline: float | None
    seq: int


class ShapeGroup:
    """Waiters of one shape, one FIFO per base priority."""

    __slots__ = ("classes", "shape")

    def __init__(self, shape: tuple[Any, ...]) -> None:
        self.shape = shape
        self.classes: dict[int, OrderedDict[str, Waiter]] = {}

    def __len__(self) -> int:
        return sum(len(fifo) for fifo in self.classes.values())

    def push(self, waiter: Waiter) -> None:
        self.classes.setdefault(waiter.request.priority, OrderedDict())[waiter.request_id] = waiter

    def remove(self, waiter: Waiter) -> None:
        fifo = self.classes[waiter.request.priority]
        del fifo[waiter.request_id]
        if not fifo:
            del self.classes[waiter.request.priority]

    def heads(self) -> Iterator[Waiter]:
        for fifo in self.classes.values():
            yield fifo[next(iter(fifo))]


class Floor:
    """The smallest amount of each resource the shapes ask for, and who asks at all.

    A lazy min-heap per resource (amounts whose count fell to zero are dropped when
    they surface), so a shape coming or going costs O(log shapes), not a rescan.
    """

    __slots__ = ("_counts", "_heaps", "asking", "pools", "tenants")

    def __init__(self) -> None:
        self.asking: dict[str, int] = {}  # resource -> shapes that ask for it
        self.tenants: dict[str, int] = {}  # tenant -> shapes
        self.pools: dict[str, int] = {}  # pool -> shapes
        self._counts: dict[tuple[str, int], int] = {}
        self._heaps: dict[str, list[int]] = {}

    def add(self, shape: tuple[Any, ...]) -> None:
        resources, pools, tenant = _per_node(shape), shape[1], shape[2]
        for resource, amount in resources:
            self.asking[resource] = self.asking.get(resource, 0) + 1
            key = (resource, amount)
            count = self._counts.get(key, 0)
            self._counts[key] = count + 1
            if count == 0:
                heapq.heappush(self._heaps.setdefault(resource, []), amount)
        for pool, _ in pools:
            self.pools[pool] = self.pools.get(pool, 0) + 1
        self.tenants[tenant] = self.tenants.get(tenant, 0) + 1

    def remove(self, shape: tuple[Any, ...]) -> None:
        resources, pools, tenant = _per_node(shape), shape[1], shape[2]
        for resource, amount in resources:
            _decrement(self.asking, resource)
            _decrement(self._counts, (resource, amount))
        for pool, _ in pools:
            _decrement(self.pools, pool)
        _decrement(self.tenants, tenant)

    def smallest(self, resource: str) -> int:
        heap = self._heaps.get(resource)
        while heap:
            if (resource, heap[0]) in self._counts:
                return heap[0]
            heapq.heappop(heap)
        return 0


def _per_node(shape: tuple[Any, ...]) -> tuple[tuple[str, int], ...]:
    """The least a shape needs free on one node to use it, per resource it always asks
    for: its resources, or for a gang (``Request.shape``'s bundles) the smallest amount
    of each resource that every bundle asks for."""
    if len(shape) <= GANG_BUNDLES:
        resources: tuple[tuple[str, int], ...] = shape[0]
        return resources
    bundles = [dict(bundle) for bundle in shape[GANG_BUNDLES]]
    common = set(bundles[0]).intersection(*bundles[1:])
    return tuple(sorted((r, min(b[r] for b in bundles)) for r in common))


def _decrement(counts: dict[Any, int], key: Any) -> None:
    left = counts[key] - 1
    if left:
        counts[key] = left
    else:
        del counts[key]


class WaitQueue:
    def __init__(self, per_second: float, max_boost: float) -> None:
        self.per_second = per_second
        self.max_boost = max_boost
        self.by_id: dict[str, Waiter] = {}
        self.groups: dict[tuple[Any, ...], ShapeGroup] = {}
        self.floor = Floor()
        self._deadlines: list[tuple[float, int, str]] = []

    def __len__(self) -> int:
        return len(self.by_id)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self.by_id

    def effective(self, waiter: Waiter, now: float) -> float:
        boost = min(self.max_boost, self.per_second * max(0.0, now - waiter.submitted_at))
        return waiter.request.priority + boost

    def push(self, waiter: Waiter) -> None:
        self.by_id[waiter.request_id] = waiter
        shape = waiter.request.shape
        group = self.groups.get(shape)
        if group is None:
            group = self.groups[shape] = ShapeGroup(shape)
            self.floor.add(shape)
        group.push(waiter)
        if waiter.deadline is not None:
            heapq.heappush(self._deadlines, (waiter.deadline, waiter.seq, waiter.request_id))

    def remove(self, request_id: str) -> Waiter | None:
        waiter = self.by_id.pop(request_id, None)
        if waiter is None:
            return None
        shape = waiter.request.shape
        group = self.groups[shape]
        group.remove(waiter)
        if not group.classes:
            del self.groups[shape]
            self.floor.remove(shape)
        return waiter

    def none_can_use(
        self,
        free_on: Callable[[str], Iterable[int]],
        pools: Iterable[str],
        tenants: Iterable[str],
    ) -> bool:
        """Whether no waiting shape could use what was freed (settled queue assumed).

        ``free_on(resource)`` gives what is free of it on each node that gained
        capacity; ``pools`` and ``tenants`` are the pools and tenants that gave back.
        True when some resource every shape asks for is, on each of those nodes,
        below the least any shape asks for.
        """
        floor = self.floor
        if not floor.tenants.keys().isdisjoint(tenants) or not floor.pools.keys().isdisjoint(pools):
            return False
        shapes = len(self.groups)
        for resource, asking in floor.asking.items():
            if asking == shapes:
                smallest = floor.smallest(resource)
                if all(free < smallest for free in free_on(resource)):
                    return True
        return False

    def rank(self, waiter: Waiter, now: float) -> tuple[float, int]:
        """Sort key: higher effective priority first, then first come."""
        return (-self.effective(waiter, now), waiter.seq)

    def group_bests(self, now: float) -> list[Waiter]:
        """The best waiter of each shape, best first."""
        bests = [min(g.heads(), key=lambda w: self.rank(w, now)) for g in self.groups.values()]
        bests.sort(key=lambda w: self.rank(w, now))
        return bests

    def best(self, now: float) -> Waiter | None:
        best: Waiter | None = None
        best_rank: tuple[float, int] | None = None
        for group in self.groups.values():
            for head in group.heads():
                rank = self.rank(head, now)
                if best_rank is None or rank < best_rank:
                    best, best_rank = head, rank
        return best

    def overdue(self, now: float) -> list[Waiter]:
        """Waiters whose timeout has passed (they are not removed here)."""
        due: list[Waiter] = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, request_id = heapq.heappop(self._deadlines)
            waiter = self.by_id.get(request_id)
            if waiter is not None:
                due.append(waiter)
        return due
