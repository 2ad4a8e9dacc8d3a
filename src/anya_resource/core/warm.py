"""Warm leases: which held leases the queue wants back. Decided here, pure.

A client manager keeps a lease it gave back *warm* (held, idle) for its next acquire of
the same kind, so that acquire and release take no Ray call (client.py). The coordinator
cannot tell a warm lease from one in use, and need not: while a request waits that could
use what a lease holds, and that the lease does not outrank, the lease's manager is told
to give it back. An idle warm lease then goes back at once; a busy one is not reused when
its use ends. So priorities, aging, FIFO among equals and quotas hold across processes as
if every acquire went to the coordinator: a lower or equal-priority lease never stays
warm while such a request waits (an older waiter of its own class comes first).

"Could use": the lease is on a node the waiter may be placed on and holds a node resource
it asks for, or holds a slot of a pool it asks for, or belongs to its tenant while that
tenant is at its limit. "Outranks": the lease's base priority is above the waiter's
effective priority (aging included). One waiter per shape is looked at, the best of its
group: the others of that shape are outranked by it, or want the same things back.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from anya_resource.core.model import LeaseRecord, LeaseState, tenant_demand

if TYPE_CHECKING:
    from anya_resource.core.scheduler import Scheduler
    from anya_resource.core.waitqueue import Waiter


def wanted_back(scheduler: Scheduler, now: float) -> dict[str, set[str]]:
    """listener -> the ids of its leases that waiting requests want back."""
    wanted: dict[str, set[str]] = {}
    if not scheduler.queue:
        return wanted
    for best in scheduler.queue.group_bests(now):
        effective = scheduler.queue.effective(best, now)
        for lease in _useful_to(scheduler, best):
            listener = lease.listener
            if (
                listener is not None
                and lease.state is LeaseState.ACTIVE
                and not lease.detached
                and lease.priority <= effective
            ):
                wanted.setdefault(listener, set()).add(lease.lease_id)
    return wanted


def _useful_to(scheduler: Scheduler, waiter: Waiter) -> Iterable[LeaseRecord]:
    request = waiter.request
    leases = scheduler.leases
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
    quota = scheduler.tenants.get(request.tenant)
    if quota is not None and not quota.within_limit(tenant_demand(request)):
        for lease in leases:
            if lease.tenant == request.tenant:
                yield lease


__all__ = ["wanted_back"]
