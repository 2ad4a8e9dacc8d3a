"""Which leases to revoke so that a blocked request can run.

Only ``preemptible`` leases are ever chosen. A lease may be taken for a request
whose effective priority is strictly higher than the lease's priority, or,
whatever the priorities, when the request's tenant is still within its
guaranteed share and the lease was granted to a tenant that was borrowing
(Kueue's "reclaim from borrowers first"). Victims are taken borrowers first, then
lowest priority, then newest; the set is then pruned to a minimal one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from anya_resource.core.model import Amounts, LeaseRecord, LeaseState, Request

if TYPE_CHECKING:
    from anya_resource.core.ledger import NodeLedger
    from anya_resource.core.scheduler import Scheduler


def choose_victims(
    scheduler: Scheduler,
    request: Request,
    effective_priority: float,
    only_nodes: set[str] | None = None,
    fits_nowhere: bool = False,
) -> tuple[str | None, list[LeaseRecord]] | None:
    """``(node_id, victims)`` that make room for ``request``, or None if none can.

    ``fits_nowhere``: the caller knows ``request`` fits on no node as things are (a
    blocked head), so only nodes with preemptible leases are worth a look.
    """
    quota = scheduler.tenants.get(request.tenant)
    reclaims = quota is not None and quota.below_guarantee({**request.resources, **request.pools})

    def eligible(lease: LeaseRecord) -> bool:
        if not lease.preemptible or lease.state is not LeaseState.ACTIVE:
            return False
        if lease.priority < effective_priority:
            return True
        return reclaims and lease.borrowed and lease.tenant != request.tenant

    def order(lease: LeaseRecord) -> tuple[int, int, float]:
        return (0 if reclaims and lease.borrowed else 1, lease.priority, -lease.granted_at)

    pool_victims: list[LeaseRecord] = []
    if request.pools:
        shortfall = {
            pool: scheduler.pools[pool].in_use + slots - scheduler.pools[pool].size
            for pool, slots in request.pools.items()
        }
        shortfall = {pool: gap for pool, gap in shortfall.items() if gap > 0}
        if shortfall:
            holders = (
                lease
                for lease in scheduler.leases
                if eligible(lease) and any(lease.pools.get(p) for p in shortfall)
            )
            chosen = _cover(sorted(holders, key=order), shortfall, lambda lease: lease.pools)
            if chosen is None:
                return None
            pool_victims = chosen
    if not request.resources:
        return (None, pool_victims) if pool_victims else None
    taken = {lease.lease_id for lease in pool_victims}
    best: tuple[str, list[LeaseRecord]] | None = None
    for node in _candidate_nodes(scheduler, request, only_nodes, fits_nowhere):
        shortfall = _node_shortfall(node, request.resources, pool_victims)
        if not shortfall:
            return (node.node_id, pool_victims) if pool_victims else None
        on_node = [
            lease
            for lease in scheduler.leases.preemptible_by_node.get(node.node_id, {}).values()
            if lease.lease_id not in taken and eligible(lease)
        ]
        if not _could_cover(on_node, shortfall):
            continue  # all of them together would not make room: no need to order them
        chosen = _cover(sorted(on_node, key=order), shortfall, lambda lease: lease.resources)
        if chosen is not None and (best is None or _cost(chosen) < _cost(best[1])):
            best = (node.node_id, chosen)
    if best is None:
        return None
    return best[0], pool_victims + best[1]


def _candidate_nodes(
    scheduler: Scheduler,
    request: Request,
    only_nodes: set[str] | None = None,
    fits_nowhere: bool = False,
) -> Iterable[NodeLedger]:
    if request.node is not None:
        node = scheduler.nodes.get(request.node)
        if only_nodes is not None and request.node not in only_nodes:
            return []
        return [node] if node is not None else []
    nodes = scheduler.placer.nodes
    look_at: Iterable[str] | None = only_nodes
    if fits_nowhere and not request.pools:
        # A node helps only with victims on it (without pool victims to count in, no
        # node has room as it is), so nodes without preemptible leases are skipped.
        having = scheduler.leases.preemptible_by_node.keys()
        look_at = having if only_nodes is None else only_nodes & having
    if look_at is not None:
        position = scheduler.placer._position
        nodes = [
            nodes[position[i]]
            for i in sorted((i for i in look_at if i in position), key=position.__getitem__)
        ]
    return [node for node in nodes if all(node.limit(r) >= a for r, a in request.resources.items())]


def _node_shortfall(
    node: NodeLedger, demand: Mapping[str, int], already: list[LeaseRecord]
) -> Amounts:
    freed: Amounts = {}
    for lease in already:
        if lease.node_id == node.node_id:
            for resource, amount in lease.resources.items():
                freed[resource] = freed.get(resource, 0) + amount
    gaps = {r: a - node.free(r) - freed.get(r, 0) for r, a in demand.items()}
    return {r: gap for r, gap in gaps.items() if gap > 0}


def _could_cover(leases: list[LeaseRecord], shortfall: Amounts) -> bool:
    for resource, gap in shortfall.items():
        if sum(lease.resources.get(resource, 0) for lease in leases) < gap:
            return False
    return True


def _cover(
    ordered: list[LeaseRecord],
    shortfall: Amounts,
    get: Callable[[LeaseRecord], Mapping[str, int]],
) -> list[LeaseRecord] | None:
    """Greedy cover of ``shortfall`` in the given order, then pruned to a minimal set."""
    chosen: list[LeaseRecord] = []
    remaining = dict(shortfall)
    for lease in ordered:
        amounts = get(lease)
        if not any(amounts.get(r, 0) > 0 for r, gap in remaining.items() if gap > 0):
            continue
        chosen.append(lease)
        for resource in remaining:
            remaining[resource] -= amounts.get(resource, 0)
        if all(gap <= 0 for gap in remaining.values()):
            break
    else:
        return None
    # Drop, newest choices first, any victim the others already cover.
    for lease in list(reversed(chosen)):
        amounts = get(lease)
        if all(remaining[r] + amounts.get(r, 0) <= 0 for r in remaining):
            chosen.remove(lease)
            for resource in remaining:
                remaining[resource] += amounts.get(resource, 0)
    return chosen


def _cost(victims: list[LeaseRecord]) -> tuple[int, int]:
    return (len(victims), sum(lease.priority for lease in victims))
