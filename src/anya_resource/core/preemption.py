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
    rules = _Rules(state, request, effective_priority, excluded)
    pool_victims = _pool_victims(state, request, rules)
    if pool_victims is None:
        return None
    if not request.resources:
        return (None, pool_victims) if pool_victims else None
    taken = {lease.lease_id for lease in pool_victims}
    best: tuple[str, list[LeaseRecord]] | None = None
    for node in _candidate_nodes(state, request, only_nodes, fits_nowhere):
        shortfall = node_short(node, request.resources, _freed_on(node.node_id, pool_victims))
        if not shortfall:
            return (node.node_id, pool_victims) if pool_victims else None
        chosen = _cover_on(state, node.node_id, shortfall, rules, taken)
        if chosen is not None and (best is None or _cost(chosen) < _cost(best[1])):
            best = (node.node_id, chosen)
    if best is None:
        return None
    return best[0], pool_victims + best[1]


def choose_gang_victims(
    state: ClusterState,
    request: Request,
    effective_priority: float,
    target: Mapping[str, Amounts],
    excluded: Collection[str] = (),
) -> list[LeaseRecord] | None:
    """The victims that make room for a gang on ``target`` (node -> what its bundles
    take there, ``core/gangs.target``), as one set; None if no set can, or none is needed.

    Every node of the target must be covered, or nobody is revoked: a gang runs whole
    or not at all. A victim that is itself a gang frees something on each of its nodes,
    which counts wherever the target needs it; the set is then pruned to a minimal one.
    """
    rules = _Rules(state, request, effective_priority, excluded)
    victims = _pool_victims(state, request, rules)
    if victims is None:
        return None
    taken = {lease.lease_id for lease in victims}
    shortfalls: dict[str, Amounts] = {}
    for node_id, demand in target.items():
        node = state.nodes.get(node_id)
        if node is None:
            return None
        shortfall = node_short(node, demand)
        if not shortfall:
            continue
        shortfalls[node_id] = shortfall
        left = {r: gap - _freed_on(node_id, victims).get(r, 0) for r, gap in shortfall.items()}
        left = {r: gap for r, gap in left.items() if gap > 0}
        if not left:
            continue
        chosen = _cover_on(state, node_id, left, rules, taken)
        if chosen is None:
            return None
        victims += chosen
        taken.update(lease.lease_id for lease in chosen)
    for lease in list(reversed(victims)):
        if lease.pools or not lease.resources:
            continue  # a pool victim: its slots were what was short
        rest = [v for v in victims if v is not lease]
        if all(_covers(rest, node_id, gaps) for node_id, gaps in shortfalls.items()):
            victims = rest
    return victims or None


class _Rules:
    """Which leases may be taken for ``request``, and in which order (see the module)."""

    __slots__ = ("effective", "excluded", "reclaims", "tenant")

    def __init__(
        self,
        state: ClusterState,
        request: Request,
        effective: float,
        excluded: Collection[str],
    ) -> None:
        quota = state.tenants.get(request.tenant)
        self.reclaims = quota is not None and quota.below_guarantee(tenant_demand(request))
        self.effective = effective
        self.excluded = excluded
        self.tenant = request.tenant

    def eligible(self, lease: LeaseRecord) -> bool:
        if not lease.preemptible or lease.state is not LeaseState.ACTIVE:
            return False
        if lease.lease_id in self.excluded:
            return False
        if lease.priority < self.effective:
            return True
        return self.reclaims and lease.borrowed and lease.tenant != self.tenant

    def order(self, lease: LeaseRecord) -> tuple[int, int, float]:
        return (0 if self.reclaims and lease.borrowed else 1, lease.priority, -lease.granted_at)


def _pool_victims(state: ClusterState, request: Request, rules: _Rules) -> list[LeaseRecord] | None:
    """The leases to take for the pool slots ``request`` lacks now; None if none can."""
    if not request.pools:
        return []
    # The pool slots it lacks now (the admission rule, without the head's hold).
    shortfall = {b.what: b.short for b in blocks(state, request) if b.kind is BlockKind.POOL}
    if not shortfall:
        return []
    holders = (
        lease
        for lease in state.leases
        if rules.eligible(lease) and any(lease.pools.get(p) for p in shortfall)
    )
    return _cover(sorted(holders, key=rules.order), shortfall, lambda lease: lease.pools)


def _cover_on(
    state: ClusterState, node_id: str, shortfall: Amounts, rules: _Rules, taken: Collection[str]
) -> list[LeaseRecord] | None:
    """The fewest eligible leases on ``node_id`` whose amounts there cover ``shortfall``."""
    on_node = [
        lease
        for lease in state.leases.preemptible_by_node.get(node_id, {}).values()
        if lease.lease_id not in taken and rules.eligible(lease)
    ]
    if not _covers(on_node, node_id, shortfall):
        return None  # all of them together would not make room: no need to order them
    return _cover(sorted(on_node, key=rules.order), shortfall, lambda lease: lease.on_node(node_id))


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


def _freed_on(node_id: str, already: list[LeaseRecord]) -> Amounts:
    """What the victims chosen already free on ``node_id``."""
    freed: Amounts = {}
    for lease in already:
        if lease.bundles is None:  # most leases: their resources, if on this node
            if lease.node_id != node_id:
                continue
            amounts = lease.resources
        else:
            amounts = lease.on_node(node_id)
        for resource, amount in amounts.items():
            freed[resource] = freed.get(resource, 0) + amount
    return freed


def _covers(leases: list[LeaseRecord], node_id: str, shortfall: Mapping[str, int]) -> bool:
    """Whether ``leases`` together free ``shortfall`` on ``node_id``."""
    freed = _freed_on(node_id, leases)
    return all(freed.get(resource, 0) >= gap for resource, gap in shortfall.items())


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
