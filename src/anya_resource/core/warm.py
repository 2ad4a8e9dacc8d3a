"""Warm leases: which held leases the queue wants back. Decided here, pure.

A client manager keeps a lease it gave back *warm* (held, idle) for its next acquire of
the same kind, so that acquire and release take no Ray call (client.py). The coordinator
cannot tell a warm lease from one in use, and need not. For every waiting request it
finds the leases that could serve it, and says of each one of two things:

* **wanted**: the lease does not outrank the waiter (its base priority is at most the
  waiter's effective priority, aging included; FIFO among equals, since the waiter came
  after the lease was granted). Its manager gives it back at once if idle, and does not
  reuse it when its use ends. So priorities, aging and quotas hold across processes as
  if every acquire went to the coordinator: a lower or equal-priority lease never stays
  warm while such a request waits.
* **spare**: the lease outranks the waiter, so it may stay in use, and be reused by the
  work it outranks the waiter with; but it must not sit idle while the waiter waits. Its
  manager gives it back once it has been idle a moment (share.SPARE_IDLE_S).

"Could serve": the lease is on a node the waiter may be placed on and holds a node
resource it asks for, or holds a slot of a pool it asks for, or belongs to its tenant
while that tenant is at its limit. A manager is never asked for its own leases of the
waiter's kind (same shape, priority, tenant, preemptible): what a process waits for
while it holds leases of that kind is its own back-pressure (its share serves it
first, core/share.py). Its leases of other kinds are asked for like anyone's, so a
process's own low tasks give way to its high ones. One waiter per shape is looked at,
the best of its group: the others of that shape are outranked by it, or want the same
things back.

Within a job's budget (core/budgets.py) the same holds for the first waiter of each
budget, over the leases drawn from that budget (by base priority: a budget's waiters do
not age). Leases drawn from a budget are never wanted by the cluster's queue: giving one
back frees nothing outside its budget.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from anya_resource.core.admission import tenant_blocks
from anya_resource.core.model import LeaseRecord, LeaseState, Request, channel_of
from anya_resource.core.state import ClusterState
from anya_resource.core.waitqueue import Waiter


@dataclass
class WantedBack:
    """Per listener (a manager's channel), the ids of its leases waiters want back."""

    wanted: dict[str, set[str]] = field(default_factory=dict)  # not outranked: stop reusing
    spare: dict[str, set[str]] = field(default_factory=dict)  # outranked: only if idle


def wanted_back(state: ClusterState, now: float) -> WantedBack:
    """Which held leases the waiting requests want back, and how (see the module's doc)."""
    found = WantedBack()
    for best in state.queue.group_bests(now) if state.queue else ():
        effective = state.queue.effective(best, now)
        _ask(found, best.request, effective, _useful_to(state, best))
    for budget in state.budgets.by_lease.values():
        first = budget.best()
        if first is not None:
            drawn = (state.leases.active[lease_id] for lease_id in budget.drawn)
            _ask(found, first.request, first.request.priority, drawn)
    for listener, ids in found.wanted.items():  # wanted says more than spare
        spare = found.spare.get(listener)
        if spare is not None:
            spare -= ids
            if not spare:
                del found.spare[listener]
    return found


def _ask(
    found: WantedBack, request: Request, effective: float, leases: Iterable[LeaseRecord]
) -> None:
    """Note, of each of ``leases``, whether ``request`` wants it back or only idle."""
    own = channel_of(request.idempotency_key)
    for lease in leases:
        listener = lease.listener
        if (
            listener is None
            or lease.state is not LeaseState.ACTIVE
            or lease.detached
            or (listener == own and _same_kind(lease, request))
        ):
            continue
        level = found.wanted if lease.priority <= effective else found.spare
        level.setdefault(listener, set()).add(lease.lease_id)


def _same_kind(lease: LeaseRecord, request: Request) -> bool:
    """A lease its waiter's own process would reuse for it: same shape and priority."""
    return (
        lease.priority == request.priority
        and lease.resources == request.resources
        and lease.pools == request.pools
        and lease.tenant == request.tenant
        and lease.preemptible == request.preemptible
    )


def _useful_to(state: ClusterState, waiter: Waiter) -> Iterable[LeaseRecord]:
    for lease in _could_serve(state, waiter):
        if lease.within is None:
            yield lease


def _could_serve(state: ClusterState, waiter: Waiter) -> Iterable[LeaseRecord]:
    request = waiter.request
    leases = state.leases
    if request.resources:
        nodes = [request.node] if request.node is not None else list(leases.by_node)
        for node_id in nodes:
            for lease in leases.by_node.get(node_id, {}).values():
                if request.resources.keys() & lease.resources.keys():
                    yield lease
    if request.pools:
        for lease in leases:
            if request.pools.keys() & lease.pools.keys():
                yield lease
    if tenant_blocks(state, request, first=True):
        for lease in leases:
            if lease.tenant == request.tenant:
                yield lease


__all__ = ["WantedBack", "wanted_back"]
