"""The cluster as the scheduler knows it: what every decision is made on. Pure.

``ClusterState`` holds the nodes, pools, tenants, leases, the queue, the head's
reservation and the budgets. Its ``charge`` and ``refund`` are the only writers of the
accounting (a node's granted amounts, a pool's slots in use, a tenant's usage, what is
drawn from a budget), so invariant 2 (free + granted = capacity) has two places to
look at, not one per caller. Queries (core/views.py, whatif, positions, bottleneck
figures, history, the verdict) take a ``ClusterState`` and never the scheduler; a
what-if works on ``trial()``, a copy whose ledgers are its own, so a dry run cannot
leave a trace on the live ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from anya_resource.config import Policy
from anya_resource.core.budgets import Budgets
from anya_resource.core.leases import LeaseTable
from anya_resource.core.ledger import NodeLedger, PoolLedger
from anya_resource.core.model import Amounts, LeaseRecord, NodeSample, charged, tenant_demand
from anya_resource.core.placement import Placer
from anya_resource.core.quotas import TenantQuota
from anya_resource.core.waitqueue import Waiter, WaitQueue


@dataclass(slots=True)
class Reservation:
    """What the blocked head of the queue holds back from everyone else."""

    request_id: str
    node_id: str | None
    nodes: dict[str, Amounts]
    pools: Amounts
    tenant: str
    tenant_amounts: Amounts
    # The head's own tenant is at its hard limit: until that tenant gives something back
    # the head cannot run wherever capacity is, so it holds no node capacity or pool
    # slots (that would only keep other tenants waiting) and preempts nobody.
    tenant_limited: bool = False


@dataclass(slots=True)
class Freed:
    """Where capacity came back since the last pass (``everything`` for a full pass)."""

    nodes: set[str] = field(default_factory=set)
    pools: set[str] = field(default_factory=set)
    tenants: set[str] = field(default_factory=set)
    everything: bool = False
    # Budgets something drawn from them came back to (core/budgets.py): what they free
    # is for their own waiters only, so it is not part of the cluster's truth value.
    budgets: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return self.everything or bool(self.nodes or self.pools or self.tenants)

    def widen(self, held: Reservation, held_nodes: Mapping[str, Amounts]) -> None:
        """Add where a reservation that is gone or moved held capacity back."""
        self.nodes.update(held_nodes)
        self.pools.update(held.pools)
        self.tenants.add(held.tenant)


class ClusterState:
    """The scheduler's truth (see the module's doc); changed by the scheduler only."""

    __slots__ = (
        "budgets",
        "leases",
        "maybe_idle",
        "nodes",
        "placer",
        "policy",
        "pools",
        "queue",
        "reservation",
        "revoking_for",
        "samples",
        "tenants",
        "waiting_demand",
    )

    def __init__(self, policy: Policy, leases: LeaseTable) -> None:
        self.policy = policy
        self.nodes: dict[str, NodeLedger] = {}
        self.placer = Placer(policy.placement)  # an index of ``nodes`` for placement
        self.pools = {name: PoolLedger(name, p.size) for name, p in policy.pools.items()}
        self.tenants = {n: TenantQuota.from_policy(n, t) for n, t in policy.tenants.items()}
        self.leases = leases
        self.queue = WaitQueue(policy.aging.per_second, policy.aging.max_boost)
        self.reservation: Reservation | None = None
        self.budgets = Budgets()  # what jobs draw from their leases (core/budgets.py)
        self.waiting_demand: Amounts = {}  # what the queue asks for in all, per name
        self.samples: dict[str, NodeSample] = {}  # the last measured use of each node
        self.revoking_for: dict[str, set[str]] = {}  # head request -> leases revoked for it
        self.maybe_idle: set[str] = set()  # tenants not in the policy that gave back

    # -- accounting: the only writers --------------------------------------------------

    def charge(self, lease: LeaseRecord) -> None:
        """Count ``lease`` as taken: from its budget, or on its node, pools and tenant."""
        if lease.within is not None:
            self.budgets.by_lease[lease.within].charge(lease)
            return
        if lease.bundles is None:
            self.nodes[lease.node_id].take(lease.resources)
        else:
            for node_id, amounts in lease.bundles:
                self.nodes[node_id].take(amounts)
        pools = lease.pools
        for pool, slots in pools.items():
            self.pools[pool].in_use += slots
        self.quota(lease.tenant).charge(charged(lease.resources, pools))

    def refund(self, lease: LeaseRecord) -> list[NodeLedger]:
        """Undo ``charge``; the nodes it was on that are still here."""
        if lease.within is not None:
            budget = self.budgets.by_lease.get(lease.within)
            if budget is not None:
                budget.refund(lease)
            return []
        back: list[NodeLedger] = []
        for node_id, amounts in lease.placed():
            node = self.nodes.get(node_id)
            if node is not None:
                node.give_back(amounts)
                self.placer.note_freed(node, amounts)
                back.append(node)
        pools = lease.pools
        for pool, slots in pools.items():
            self.pools[pool].in_use -= slots
        self.quota(lease.tenant).refund(charged(lease.resources, pools))
        if lease.tenant not in self.policy.tenants:
            self.maybe_idle.add(lease.tenant)
        return back

    def quota(self, tenant: str) -> TenantQuota:
        """``tenant``'s record, made on first use (a tenant the policy does not name)."""
        quota = self.tenants.get(tenant)
        if quota is None:
            quota = self.tenants[tenant] = TenantQuota(tenant)
        return quota

    def forget_idle_tenants(self) -> None:
        """Drop the records of unnamed tenants that hold nothing any more.

        Tenants named after Ray jobs come and go; they are not kept forever. Done at the
        tick rather than at each release, so that a tenant that takes and gives back all
        the time keeps one record instead of a new one per grant.
        """
        for tenant in self.maybe_idle:
            quota = self.tenants.get(tenant)
            if quota is not None and not any(quota.usage.values()):
                del self.tenants[tenant]
        self.maybe_idle.clear()

    # -- the queue ---------------------------------------------------------------------

    def enqueue(self, waiter: Waiter) -> None:
        self.queue.push(waiter)
        demand = self.waiting_demand
        for resource, amount in tenant_demand(waiter.request).items():
            demand[resource] = demand.get(resource, 0) + amount

    def dequeue(self, waiter: Waiter) -> None:
        """``waiter`` leaves the queue (granted or rejected): so does what it held back."""
        self.queue.remove(waiter.request_id)
        for resource, amount in tenant_demand(waiter.request).items():
            self.waiting_demand[resource] -= amount
        if self.reservation is not None and self.reservation.request_id == waiter.request_id:
            self.reservation = None
        self.revoking_for.pop(waiter.request_id, None)

    def holds_back(self, waiter: Waiter, now: float) -> Reservation | None:
        """The reservation ``waiter`` must leave alone: None if it comes before the head."""
        held = self.reservation
        if held is None:
            return None
        head = self.queue.by_id.get(held.request_id)
        if head is None or self.queue.rank(waiter, now) < self.queue.rank(head, now):
            return None
        return held

    # -- trials --------------------------------------------------------------------------

    def trial(self) -> ClusterState:
        """A copy to try grants on: its own nodes, placer, pools and tenants.

        The leases, queue, reservation and budgets are shared and must only be read:
        a trial charges and refunds, it never grants, queues or ends anything.
        """
        twin = ClusterState.__new__(ClusterState)
        twin.policy = self.policy
        twin.nodes = {node_id: node.copy() for node_id, node in self.nodes.items()}
        twin.placer = self.placer.copy(twin.nodes)
        twin.pools = {name: PoolLedger(name, p.size, p.in_use) for name, p in self.pools.items()}
        twin.tenants = {name: quota.copy() for name, quota in self.tenants.items()}
        twin.leases = self.leases
        twin.queue = self.queue
        twin.reservation = self.reservation
        twin.budgets = self.budgets
        twin.waiting_demand = self.waiting_demand
        twin.samples = self.samples
        twin.revoking_for = self.revoking_for
        twin.maybe_idle = set()
        return twin


__all__ = ["ClusterState", "Freed", "Reservation"]
