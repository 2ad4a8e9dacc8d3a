"""What happens to a waiter and a lease: granted, rejected, revoked, reclaimed.

Each step changes the state (``ClusterState.charge`` / ``refund`` for the accounting),
writes the journal entry that must be durable before anyone is told, counts itself,
remembers its idempotency key and appends its decision to ``out``. The scheduler's
event methods and the settle pass (core/settle.py) are built of these steps; nothing
else changes a lease.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from anya_resource.core.budgets import Budget
from anya_resource.core.gangs import GangPlacement
from anya_resource.core.hints import Hints
from anya_resource.core.idempotency import KeyMemory
from anya_resource.core.journal import Ended, Entry, Extended, Granted, Revoking
from anya_resource.core.ledger import NodeLedger
from anya_resource.core.model import (
    Decision,
    Grant,
    LeaseRecord,
    LeaseState,
    Reclaim,
    ReclaimReason,
    Reject,
    RejectReason,
    Revoke,
    RevokeCause,
    tenant_demand,
)
from anya_resource.core.state import ClusterState, Freed
from anya_resource.core.waitqueue import Waiter
from anya_resource.core.waitstats import WaitStats
from anya_resource.errors import InvalidRequest, LeaseExpired, LeaseRevoked


@dataclass(slots=True)
class Counters:
    submitted: int = 0
    granted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    reclaimed: dict[str, int] = field(default_factory=dict)
    revoked: dict[str, int] = field(default_factory=dict)


def _count(counts: dict[str, int], key: str) -> None:
    counts[key] = counts.get(key, 0) + 1


class Lifecycle:
    """The steps (see the module's doc), over one state and its records."""

    __slots__ = ("counters", "hints", "journal", "keys", "revoke_deadlines", "state", "waits")

    def __init__(self, state: ClusterState) -> None:
        self.state = state
        # What changed in the set of leases since the caller last took it: the journal's
        # entries, written before any decision they carry is told (core/journal.py).
        self.journal: list[Entry] = []
        self.counters = Counters()
        self.keys = KeyMemory()
        self.waits = WaitStats()
        self.hints = Hints()
        self.revoke_deadlines: list[tuple[float, str]] = []  # (deadline, lease id), a heap

    # -- a held lease's life -----------------------------------------------------------

    def renew(
        self, lease_id: str, token: object, now: float, ttl: float | None = None
    ) -> LeaseRecord:
        """Push the lease's expiry to ``now + ttl``; says if it was revoked or expired.

        A renewal is also the holder's claim on a lease restored after a restart.
        """
        leases = self.state.leases
        lease = leases.held_with(lease_id, token)
        if lease is None:
            leases.raise_ended(lease_id)
        leases.unconfirmed.discard(lease_id)
        if lease.state is LeaseState.REVOKING:
            raise LeaseRevoked(
                f"lease {lease_id} was revoked ({lease.revoke_reason}); release it by "
                f"{lease.revoke_deadline}"
            )
        if now >= lease.expires_at:
            # Not renewed within its TTL: the next tick reclaims it; it is never revived.
            raise LeaseExpired(f"lease {lease_id} expired at {lease.expires_at}; acquire anew")
        max_ttl = self.state.policy.lease.max_ttl
        if ttl is None:
            ttl = lease.ttl
        elif isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl <= max_ttl:
            raise InvalidRequest(f"ttl: got {ttl!r}, expected (0, {max_ttl}]")
        if ttl > lease.ttl:
            # Past what a restart would give it (a full TTL from then): kept, so that the
            # holder is never cut short of what it was promised.
            self.journal.append(Extended(lease_id, now + ttl))
        leases.extend(lease, now + ttl)
        return lease

    # -- grants ------------------------------------------------------------------------

    def grant(
        self, waiter: Waiter, where: NodeLedger | GangPlacement, now: float, out: list[Decision]
    ) -> None:
        """Grant ``waiter`` on ``where`` (which has the room: the caller placed it): a
        node, or for a gang the node of each bundle."""
        state = self.state
        request = waiter.request
        if waiter.request_id in state.queue:
            state.dequeue(waiter)
        # A tenant the policy does not name has no guarantee: all it holds is borrowed,
        # its first lease too (granted before it has a quota record).
        borrowed = state.quota(request.tenant).would_borrow(tenant_demand(request))
        lease = self._new_lease(waiter, where.node_id, request.tenant, request.preemptible, now)
        lease.borrowed = borrowed
        lease.reserve = request.reserve
        if isinstance(where, GangPlacement):
            lease.bundles = where.bundles(request.bundles)
        if lease.preemptible:
            self.hints.preempt_dirty.update(lease.nodes())
        state.charge(lease)
        if state.reservation is not None and state.reservation.request_id == waiter.request_id:
            state.reservation = None
        state.revoking_for.pop(waiter.request_id, None)
        self._granted(waiter, lease, now, out)

    def grant_within(self, waiter: Waiter, budget: Budget, now: float, out: list[Decision]) -> None:
        """Grant from a budget: in the bundle with most room where it fits (on that
        bundle's node), in its tenant, preemptible only with it, run in its placement
        group (``Budget.place``; the caller knows it fits)."""
        self.state.budgets.unwait(waiter.request_id)
        index = budget.place(waiter.request) or 0
        node_id = budget.bundles[index][0] if budget.bundles else budget.node_id
        lease = self._new_lease(waiter, node_id, budget.tenant, False, now)
        lease.within = budget.lease_id
        lease.within_bundle = index
        owner = self.state.leases.active.get(budget.lease_id)
        lease.placement_group = owner.placement_group if owner is not None else None
        self.state.charge(lease)
        self._granted(waiter, lease, now, out)

    def _new_lease(
        self, waiter: Waiter, node_id: str, tenant: str, preemptible: bool, now: float
    ) -> LeaseRecord:
        request = waiter.request
        lease_id, fencing, token = self.state.leases.next_ids()
        # Positional: the keyword form costs twice as much, and this runs per grant.
        return LeaseRecord(
            lease_id,
            waiter.request_id,
            token,
            fencing,
            node_id,
            request.resources,
            request.pools,
            request.priority,
            request.priority_name,
            tenant,
            request.ttl,
            now,
            now + request.ttl,
            preemptible,
            request.holder,
            request.detached,
            request.idempotency_key,
        )

    def _granted(self, waiter: Waiter, lease: LeaseRecord, now: float, out: list[Decision]) -> None:
        """Record a grant: the table, the key, the wait, the journal, the decision."""
        request = waiter.request
        self.state.leases.add(lease)
        if request.idempotency_key is not None:
            self.keys.remember(request.idempotency_key, "lease", lease.lease_id)
        waited = now - waiter.submitted_at
        self.waits.record(request.priority_name, waited)
        self.counters.granted += 1
        self.journal.append(Granted(lease))
        out.append(Grant(waiter.request_id, lease, waited))

    # -- refusals ----------------------------------------------------------------------

    def reject(
        self, waiter: Waiter, reason: RejectReason, message: str, out: list[Decision]
    ) -> None:
        """``waiter`` leaves the queue (or its budget's) without a grant."""
        state = self.state
        if waiter.request_id in state.queue:
            state.dequeue(waiter)
        else:
            state.budgets.unwait(waiter.request_id)
        key = waiter.request.idempotency_key
        if key is not None:
            self.keys.refused(key, reason, message)
        _count(self.counters.rejected, reason.value)
        out.append(Reject(waiter.request_id, reason, f"{waiter.request_id}: {message}"))

    # -- ends --------------------------------------------------------------------------

    def revoke(
        self,
        lease: LeaseRecord,
        cause: RevokeCause,
        reason: str,
        now: float,
        out: list[Decision],
    ) -> None:
        """Ask the holder to let go by the grace deadline (reclaimed at it otherwise)."""
        deadline = now + self.state.policy.lease.preemption_grace_s
        lease.state = LeaseState.REVOKING
        lease.revoke_reason = reason
        lease.revoke_deadline = deadline
        heapq.heappush(self.revoke_deadlines, (deadline, lease.lease_id))
        self.journal.append(Revoking(lease.lease_id, reason, deadline))
        out.append(Revoke(lease.lease_id, lease.node_id, reason, deadline, cause, lease.listener))
        budget = self.state.budgets.by_lease.get(lease.lease_id)
        if budget is not None:
            # What the job drew from it goes with it: its holders hear so now, and have
            # the same grace to let go.
            for drawn_id in sorted(budget.drawn):
                drawn = self.state.leases.active[drawn_id]
                if drawn.state is LeaseState.ACTIVE:
                    self.revoke(drawn, RevokeCause.BUDGET, f"its job's budget: {reason}", now, out)

    def reclaim(
        self,
        lease: LeaseRecord,
        reason: ReclaimReason,
        out: list[Decision],
        freed: Freed,
        by: str | None = None,
    ) -> None:
        """The lease ends; ``freed`` learns where capacity came back (``by``: who let go)."""
        state = self.state
        if lease.lease_id not in state.leases.active:
            return  # it ended already, with the budget it was drawn from
        state.leases.remove(lease.lease_id, reason)
        self.journal.append(Ended(lease.lease_id))
        nodes = state.refund(lease)
        if lease.within is not None:
            freed.budgets.add(lease.within)
        else:
            for node in nodes:
                self.hints.preempt_dirty.add(node.node_id)
                freed.nodes.add(node.node_id)
            freed.pools.update(lease.pools)
            freed.tenants.add(lease.tenant)
            budget = state.budgets.close(lease.lease_id)
            if budget is not None:
                self.end_budget(budget, out, freed)
        _count(self.counters.reclaimed, reason.value)
        tell = None if reason is ReclaimReason.CANCELLED else tell_of(lease, by)
        out.append(Reclaim(lease.lease_id, lease.node_id, reason, tell))

    def reclaim_id(
        self, lease_id: str, reason: ReclaimReason, out: list[Decision], freed: Freed
    ) -> None:
        """``reclaim`` by id: none if it ended already (with the budget it was drawn from)."""
        lease = self.state.leases.active.get(lease_id)
        if lease is not None:
            self.reclaim(lease, reason, out, freed)

    def reclaim_holders_on(self, node_id: str, out: list[Decision], freed: Freed) -> None:
        """The leases of every process that lived on ``node_id`` (gone with it)."""
        leases = self.state.leases
        for key in list(leases.holders_by_node.get(node_id, {})):
            for lease_id in list(leases.by_holder.get(key, ())):
                self.reclaim_id(lease_id, ReclaimReason.NODE_LOST, out, freed)

    def end_budget(self, budget: Budget, out: list[Decision], freed: Freed) -> None:
        """A budget's lease ended: what was drawn from it ends, its waiters are refused."""
        for lease_id in sorted(budget.drawn):
            self.reclaim_id(lease_id, ReclaimReason.BUDGET_ENDED, out, freed)
        message = f"the job's budget {budget.lease_id} it was to be drawn from ended"
        for waiter in list(budget.waiting.values()):
            self.reject(waiter, RejectReason.BUDGET_ENDED, message, out)


def tell_of(lease: LeaseRecord, by: str | None = None) -> str | None:
    """Who to tell that ``lease`` is gone: nobody if its listener let go itself."""
    listener = lease.listener
    return None if listener is not None and listener == by else listener


__all__ = ["Counters", "Lifecycle", "tell_of"]
