"""Budgets: leases drawn from a held lease, never past its amounts. Pure.

A Ray job queued here (``core/jobs.py``) runs on a lease: its *budget*. Everything the
job leases in turn (its ``acquire`` calls, its ``@leased`` tasks, its pools' slots) is
drawn from that budget: the request names the budget's lease id and token
(``Request.within``), and it is granted only while everything drawn from the budget,
this one included, fits within the budget's amounts. That is the per-job cap.

A budget that is a gang (a job across nodes) has a share on each of its nodes (its
bundles there; one bundle of its placement group in Ray): a drawn lease goes in one
share (the one with the most room left, so a job's work spreads over its nodes) and is
placed on that node; no share is ever drawn past its amounts. Pool slots are the
budget's as a whole.

A drawn lease holds nothing of the cluster: the budget's lease holds it already, on the
budget's nodes, in the budget's tenant. So drawn leases are never counted on a node, a
pool or a tenant, never preempted for others (giving one back would free nothing for
them), and never wait in the cluster's queue; they wait here, best priority first, FIFO
among equals, the first blocking the ones behind it (so a large request is not starved
by a stream of small ones). When the budget's lease ends in any way, everything drawn
from it ends, and its waiters are rejected; when it is revoked, what is drawn from it is
revoked with the same deadline.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any

from anya_resource.core.leases import BUDGET_KEY_PREFIX, LeaseTable
from anya_resource.core.model import Amounts, Bundle, LeaseRecord, LeaseState, Request, charged
from anya_resource.core.waitqueue import Waiter
from anya_resource.errors import InvalidRequest, LeaseExpired, LeaseRevoked, NotLeaseHolder
from anya_resource.quantities import format_quantity


@dataclass(slots=True)
class Budget:
    """One budget: a held lease's amounts, and what is drawn from them now."""

    lease_id: str
    node_id: str
    tenant: str
    total: Amounts  # the budget lease's resources and pool slots
    # Each bundle's node and node resources (one for a one-node budget), and what is
    # drawn of each: a drawn lease is charged to one bundle (``LeaseRecord.within_bundle``).
    bundles: list[Bundle] = field(default_factory=list)
    bundle_used: list[Amounts] = field(default_factory=list)
    used: Amounts = field(default_factory=dict)
    drawn: set[str] = field(default_factory=set)  # ids of the leases drawn from it
    waiting: dict[str, Waiter] = field(default_factory=dict)  # by request id, FIFO

    @classmethod
    def of(cls, lease: LeaseRecord) -> Budget:
        # One share per node (its bundles there summed, in the order they name the
        # nodes): what Ray reserves as one bundle of the budget's placement group.
        bundles = [(node_id, lease.on_node(node_id)) for node_id in lease.nodes()]
        return cls(
            lease.lease_id,
            lease.node_id,
            lease.tenant,
            dict(charged(lease.resources, lease.pools)),
            bundles,
            [{} for _ in bundles],
        )

    def never_fits(self, request: Request) -> str | None:
        """Why ``request`` can never be drawn from this budget, or None."""
        for name, amount in demand_of(request).items():
            total = self.total.get(name, 0)
            if amount > total:
                held = format_quantity(name, total) if total else f"no {name}"
                return (
                    f"the job's budget ({self.lease_id}) holds {held}; "
                    f"{format_quantity(name, amount)} were asked for"
                )
        if request.resources and not any(
            _within(request.resources, amounts) for amounts in self._bundles_for(request)
        ):
            largest = ", ".join(
                format_quantity(name, max((a.get(name, 0) for _, a in self.bundles), default=0))
                for name in request.resources
            )
            return (
                f"the job's budget ({self.lease_id}) holds at most {largest} in one bundle "
                f"(of {len(self.bundles)}); a lease is drawn from one bundle"
            )
        return None

    def fits(self, request: Request) -> bool:
        """Whether ``request`` fits beside everything drawn from the budget now."""
        return self.place(request) is not None

    def place(self, request: Request) -> int | None:
        """The bundle ``request`` is drawn from now: the one with the most room left
        among those it fits in (and its pools fit the budget); None if none."""
        used, total = self.used, self.total
        if not all(used.get(p, 0) + a <= total.get(p, 0) for p, a in request.pools.items()):
            return None
        if not request.resources:
            return 0
        best, best_room = None, -1.0
        for index, (node_id, amounts) in enumerate(self.bundles):
            if request.node is not None and node_id != request.node:
                continue
            taken = self.bundle_used[index]
            room = _room_after(request.resources, amounts, taken)
            if room is not None and room > best_room:
                best, best_room = index, room
        return best

    def nodes(self) -> list[str]:
        return list(dict.fromkeys(node_id for node_id, _ in self.bundles))

    def _bundles_for(self, request: Request) -> list[Amounts]:
        return [a for node, a in self.bundles if request.node is None or node == request.node]

    def free(self) -> Amounts:
        return {name: total - self.used.get(name, 0) for name, total in self.total.items()}

    def charge(self, lease: LeaseRecord) -> None:
        self.drawn.add(lease.lease_id)
        self.take(lease.resources, lease.pools, lease.within_bundle or 0)

    def take(self, resources: Amounts, pools: Amounts, index: int) -> None:
        """Count ``resources`` in bundle ``index``, and both in the budget's totals."""
        for name, amount in charged(resources, pools).items():
            self.used[name] = self.used.get(name, 0) + amount
        if resources:
            taken = self.bundle_used[index]
            for name, amount in resources.items():
                taken[name] = taken.get(name, 0) + amount

    def trial(self) -> Budget:
        """A copy to try draws on (a what-if): its figures are its own."""
        return Budget(
            self.lease_id,
            self.node_id,
            self.tenant,
            self.total,
            self.bundles,
            [dict(taken) for taken in self.bundle_used],
            dict(self.used),
        )

    def refund(self, lease: LeaseRecord) -> None:
        self.drawn.discard(lease.lease_id)
        _take_away(self.used, charged(lease.resources, lease.pools))
        if lease.resources:
            _take_away(self.bundle_used[lease.within_bundle or 0], lease.resources)

    def view(self) -> dict[str, Any]:
        """For listings: the budget, what is drawn of it, how many leases and waiters."""
        return {
            "total": dict(self.total),
            "used": dict(self.used),
            "leases": len(self.drawn),
            "waiting": len(self.waiting),
        }

    def best(self) -> Waiter | None:
        """The waiter to serve first: highest priority, then the earliest."""
        if not self.waiting:
            return None
        return min(self.waiting.values(), key=lambda w: (-w.request.priority, w.seq))

    def comes_first(self, waiter: Waiter) -> bool:
        """Whether ``waiter`` would be served before everyone waiting now."""
        best = self.best()
        return best is None or (-waiter.request.priority, waiter.seq) < (
            -best.request.priority,
            best.seq,
        )


def demand_of(request: Request) -> Amounts:
    return charged(request.resources, request.pools)


def _within(demand: Amounts, amounts: Amounts) -> bool:
    return all(a <= amounts.get(name, 0) for name, a in demand.items())


def _room_after(demand: Amounts, amounts: Amounts, taken: Amounts) -> float | None:
    """The share of the bundle left free after ``demand`` (0..1); None if it does not fit."""
    room = 0.0
    for name, total in amounts.items():
        after = total - taken.get(name, 0) - demand.get(name, 0)
        if after < 0:
            return None
        room += after / total if total else 0.0
    if any(name not in amounts for name in demand):
        return None
    return room / (len(amounts) or 1)


def _take_away(into: Amounts, amounts: Amounts) -> None:
    for name, amount in amounts.items():
        left = into.get(name, 0) - amount
        if left:
            into[name] = left
        else:
            into.pop(name, None)


def budget_lease(leases: LeaseTable, lease_id: str, key: object) -> LeaseRecord:
    """The lease of the budget ``lease_id``, if ``key`` is its budget key and it can be
    drawn from now; raises saying why not."""
    if not leases.minter.genuine(BUDGET_KEY_PREFIX + lease_id, key):
        raise NotLeaseHolder(
            f"within: not the key of budget {lease_id}; expected the key the budget's "
            "holder was given (ANYA_RESOURCE_BUDGET in a queued job's environment)"
        )
    lease = leases.active.get(lease_id)
    if lease is None:
        raise LeaseExpired(
            f"within: the budget lease {lease_id} has ended (its job ended or was "
            "preempted); nothing more can be drawn from it"
        )
    if lease.within is not None:
        raise InvalidRequest(
            f"within: lease {lease_id} is itself drawn from a budget; expected the "
            f"budget's own lease ({lease.within})"
        )
    if lease.state is LeaseState.REVOKING:
        raise LeaseRevoked(
            f"within: the budget lease {lease_id} is being taken back "
            f"({lease.revoke_reason}); nothing more can be drawn from it"
        )
    return lease


class Budgets:
    """Every budget in use, and the requests waiting to be drawn from one."""

    def __init__(self) -> None:
        self.by_lease: dict[str, Budget] = {}
        self.waiters: dict[str, tuple[Waiter, Budget]] = {}  # request id -> where it waits
        self._deadlines: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self.by_lease)

    def for_request(self, request: Request, leases: LeaseTable) -> Budget:
        """The budget ``request`` is to be drawn from; raises if it cannot be."""
        lease = budget_lease(leases, str(request.within), request.within_key)
        lease_id = lease.lease_id
        if request.node is not None and request.node not in lease.nodes():
            raise InvalidRequest(
                f"node: {request.node!r}, but the budget lease {lease_id} holds its "
                f"capacity on {lease.nodes()}; expected one of those nodes or none"
            )
        if request.bundles:
            raise InvalidRequest(
                f"bundles: a gang cannot be drawn from the job's budget {lease_id} (each "
                "draw goes in one of its bundles); expected its bundles asked one by one"
            )
        return self.open(lease)

    def open(self, lease: LeaseRecord) -> Budget:
        """The budget of ``lease`` (a held lease drawn from nothing), made on first use."""
        budget = self.by_lease.get(lease.lease_id)
        if budget is None:
            budget = self.by_lease[lease.lease_id] = Budget.of(lease)
        return budget

    def close(self, lease_id: str) -> Budget | None:
        """The budget of a lease that ended (its waiters forgotten here), or None."""
        budget = self.by_lease.pop(lease_id, None)
        if budget is not None:
            for request_id in budget.waiting:
                self.waiters.pop(request_id, None)
        return budget

    def wait(self, budget: Budget, waiter: Waiter) -> None:
        budget.waiting[waiter.request_id] = waiter
        self.waiters[waiter.request_id] = (waiter, budget)
        if waiter.deadline is not None:
            heapq.heappush(self._deadlines, (waiter.deadline, waiter.request_id))

    def unwait(self, request_id: str) -> None:
        found = self.waiters.pop(request_id, None)
        if found is not None:
            found[1].waiting.pop(request_id, None)

    def overdue(self, now: float) -> list[Waiter]:
        """Waiters whose timeout ran out (entries of those served meanwhile skipped)."""
        due: list[Waiter] = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, request_id = heapq.heappop(self._deadlines)
            found = self.waiters.get(request_id)
            if found is not None:
                due.append(found[0])
        return due


__all__ = ["Budget", "Budgets", "budget_lease", "demand_of"]
