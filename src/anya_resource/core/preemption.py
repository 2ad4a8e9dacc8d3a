"""Which leases to revoke so that a blocked request can run.

Only ``preemptible`` leases are ever chosen. A lease may be taken for a request
whose effective priority is strictly higher than the lease's priority, or,
whatever the priorities, when the request's tenant is still within its
guaranteed share and the lease was granted to a tenant that was borrowing
(Kueue's "reclaim from borrowers first"). Victims are taken borrowers first, then
lowest priority, then newest; the set is then pruned to a minimal one.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping

from anya_resource.core.admission import BlockKind, blocks, node_short
from anya_resource.core.ledger import NodeLedger
from anya_resource.core.model import Amounts, LeaseRecord, LeaseState, Request, tenant_demand
from anya_resource.core.state import ClusterState


def choose_victims(
    state: ClusterState,
    request: Request,
    effective_priority: float,
    only_nodes: set[str] | None = None,
    fits_nowhere: bool = False,
    excluded: Collection[str] = (),
) -> tuple[str | None, list[LeaseRecord]] | None:
    """``(node_id, victims)`` that make room for ``request``, or None if none can.

    ``fits_nowhere``: the caller knows ``request`` fits on no node as things are (a
    blocked head), so only nodes with preemptible leases are worth a look. ``excluded``:
    leases never to choose (a what-if's earlier victims, already taken).
    """
    quota = state.tenants.get(request.tenant)
    reclaims = quota is not None and quota.below_guarantee(tenant_demand(request))

    def eligible(lease: LeaseRecord) -> bool:
        if not lease.preemptible or lease.state is not LeaseState.ACTIVE:
            return False
        if lease.lease_id in excluded:
            return False
        if lease.priority < effective_priority:
            return True
        return reclaims and lease.borrowed and lease.tenant != request.tenant

    def order(lease: LeaseRecord) -> tuple[int, int, float]:
        return (0 if reclaims and lease.borrowed else 1, lease.priority, -lease.granted_at)

    pool_victims: list[LeaseRecord] = []
    if request.pools:
        # The pool slots it lacks now (the admission rule, without the head's hold).
        shortfall = {b.what: b.short for b in blocks(state, request) if b.kind is BlockKind.POOL}
        if shortfall:
            holders = (
                lease
                for lease in state.leases
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
    for node in _candidate_nodes(state, request, only_nodes, fits_nowhere):
        shortfall = node_short(node, request.resources, _freed_on(node, pool_victims))
        if not shortfall:
            return (node.node_id, pool_victims) if pool_victims else None
        on_node = [
            lease
            for lease in state.leases.preemptible_by_node.get(node.node_id, {}).values()
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
    state: ClusterState,
    request: Request,
    only_nodes: set[str] | None = None,
    fits_nowhere: bool = False,
) -> Iterable[NodeLedger]:
    if request.node is not None:
        node = state.nodes.get(request.node)
        if only_nodes is not None and request.node not in only_nodes:
            return []
        return [node] if node is not None else []
    nodes: list[NodeLedger] = state.placer.nodes
    look_at: Iterable[str] | None = only_nodes
    if fits_nowhere and not request.pools:
        # A node helps only with victims on it (without pool victims to count in, no
        # node has room as it is), so nodes without preemptible leases are skipped.
        having = state.leases.preemptible_by_node.keys()
        look_at = having if only_nodes is None else only_nodes & having
    if look_at is not None:
        nodes = state.placer.in_order(look_at)
    return [node for node in nodes if all(node.limit(r) >= a for r, a in request.resources.items())]


def _freed_on(node: NodeLedger, already: list[LeaseRecord]) -> Amounts:
    """What the victims chosen already (for pool slots) free on ``node``."""
    freed: Amounts = {}
    for lease in already:
        if lease.node_id == node.node_id:
            for resource, amount in lease.resources.items():
                freed[resource] = freed.get(resource, 0) + amount
    return freed


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
