"""The admission rule, once: whether a request fits, or what blocks it. Pure.

A request is granted only if every pool it asks for has the slots free (after what
the head of the queue holds), its tenant stays within its hard limit (counting what
the head holds of that tenant), and one node where it may go has all the resources it
asks for free at once (after the head's hold there). Placement, the explanation of a
wait, the feasibility check, the what-if, the preemption shortfall and the views'
demand split all ask ``blocks`` (or ``node_short`` for one node), so they cannot
disagree about why something waits.

A ``Block`` names the kind of block, what it is on, and the figures; ``str(block)``
says it in plain words. ``ever=True`` asks the same question of an empty cluster:
what a request could never be granted, whatever is released (pool sizes and tenant
limits come from the policy; node limits are capacity minus reserve).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from anya_resource.core import gangs
from anya_resource.core.gangs import GangPlacement
from anya_resource.core.ledger import NodeLedger
from anya_resource.core.model import NODE_RESOURCES, Amounts, Request, tenant_demand
from anya_resource.core.state import ClusterState, Freed, Reservation
from anya_resource.quantities import format_amount, format_quantity, format_request

NEVER_FITS_MEMORY = 4096  # shapes whose feasibility is remembered until the nodes change


class BlockKind(str, enum.Enum):
    POOL = "pool"  # too few slots of a pool (ever: the pool is smaller than asked)
    TENANT = "tenant"  # the tenant's hard limit
    CAPACITY = "capacity"  # a node resource: too little wherever the request may go
    SPLIT = "split"  # each fits somewhere, no node has all at once (or the head holds it)
    NO_NODE = "no_node"  # no node is alive
    GANG = "gang"  # no set of nodes holds every bundle of a gang at once, as its strategy asks


@dataclass(frozen=True, slots=True)
class Block:
    """Why a request does not fit: the kind, what it is on, and the figures."""

    kind: BlockKind
    what: str  # the pool, the tenant, or the node resource
    need: int = 0  # what the request asks of it
    used: int = 0  # in use now (0 when ``ever``)
    held: int = 0  # held back for the head of the queue
    total: int = 0  # the pool's size, the hard limit, the most a node has free (or may grant)
    resource: str = ""  # a tenant's: the resource at its limit
    where: str = "any node"
    ever: bool = False
    reason: str = ""  # a gang's: why its bundles do not fit together (in words)

    @property
    def short(self) -> int:
        """How much more would have to be free for it to fit (> 0 for a block)."""
        return self.used + self.held + self.need - self.total

    def __str__(self) -> str:
        kind, what = self.kind, self.what
        if kind is BlockKind.POOL:
            if self.ever:
                return f"pool {what!r} has {self.total} slots; {self.need} were asked for"
            held = f", {self.held} held for the head of the queue" if self.held else ""
            return f"pool {what!r}: {self.used}/{self.total} slots in use{held}"
        if kind is BlockKind.TENANT:
            r = self.resource
            if self.ever:
                return (
                    f"tenant {what!r} has a hard limit of {format_quantity(r, self.total)}; "
                    f"{format_quantity(r, self.need)} were asked for"
                )
            held = f", {format_amount(r, self.held)} held for the head" if self.held else ""
            return (
                f"tenant {what!r} is at its hard limit of {format_amount(r, self.total)} {r}: "
                f"{format_amount(r, self.used)} in use{held}, {format_amount(r, self.need)} needed"
            )
        if kind is BlockKind.GANG:
            return self.reason
        if kind is BlockKind.CAPACITY:
            if self.ever:
                return f"{what} is larger than {self.where} can ever grant (capacity minus reserve)"
            return (
                f"{what}: the most free on {self.where} is {format_amount(what, self.total)}, "
                f"{format_amount(what, self.need)} needed"
            )
        if kind is BlockKind.NO_NODE:
            return "no node is alive"
        return "no single node has all of it free at once (or the head holds it)"


def blocks(
    state: ClusterState,
    request: Request,
    held: Reservation | None = None,
    *,
    ever: bool = False,
    first: bool = False,
) -> list[Block]:
    """What keeps ``request`` from any node: its pools, then its tenant's hard limit.

    ``held``: the head's reservation, when ``request`` is not the head and does not
    outrank it. ``first``: stop at the first block (placement only needs a yes or no).
    """
    found: list[Block] = []
    for pool, slots in request.pools.items():
        ledger = state.pools[pool]
        used = 0 if ever else ledger.in_use
        kept = held.pools.get(pool, 0) if held is not None and not ever else 0
        if used + kept + slots > ledger.size:
            found.append(Block(BlockKind.POOL, pool, slots, used, kept, ledger.size, ever=ever))
            if first:
                return found
    if not (found and first):
        found += tenant_blocks(state, request, held, ever=ever, first=first)
    return found


def tenant_blocks(
    state: ClusterState,
    request: Request,
    held: Reservation | None = None,
    *,
    ever: bool = False,
    first: bool = False,
) -> list[Block]:
    """The part of ``blocks`` that is the tenant's hard limit."""
    found: list[Block] = []
    quota = state.tenants.get(request.tenant)
    if quota is None or quota.limit is None:
        return found
    tenant_held = (
        held.tenant_amounts
        if held is not None and held.tenant == request.tenant and not ever
        else None
    )
    for resource, amount in tenant_demand(request).items():
        cap = quota.limit.get(resource)
        if cap is None:
            continue
        used = 0 if ever else quota.usage.get(resource, 0)
        kept = tenant_held.get(resource, 0) if tenant_held else 0
        if used + kept + amount > cap:
            found.append(
                Block(
                    BlockKind.TENANT, request.tenant, amount, used, kept, cap, resource, ever=ever
                )
            )
            if first:
                return found
    return found


def node_short(
    node: NodeLedger, demand: Mapping[str, int], credit: Amounts | None = None
) -> Amounts:
    """What ``demand`` lacks on ``node`` now, beyond ``credit`` (what is about to be freed)."""
    short: Amounts = {}
    for resource, amount in demand.items():
        gap = amount - node.free(resource) - (credit.get(resource, 0) if credit else 0)
        if gap > 0:
            short[resource] = gap
    return short


def capacity_blocks(
    state: ClusterState, request: Request, free_anywhere: Amounts | None = None
) -> list[Block]:
    """The node resources ``request`` finds too little of free wherever it may go.

    ``free_anywhere``: ``most_free`` of every node, when the caller asks for many.
    """
    if request.bundles:
        return _gang_capacity_blocks(state, request)
    if request.node is not None:
        node = state.nodes.get(request.node)
        where = f"node {request.node}"
        free = {r: node.free(r) if node is not None else 0 for r in request.resources}
    else:
        where = "any node"
        free = free_anywhere or most_free(state.nodes.values(), request.resources)
    return [
        Block(BlockKind.CAPACITY, r, amount, total=free.get(r, 0), where=where)
        for r, amount in request.resources.items()
        if amount > free.get(r, 0)
    ]


def _gang_capacity_blocks(state: ClusterState, request: Request) -> list[Block]:
    """A gang's node resources that are too few free: a bundle larger than any node has
    free, or more in all than every node together has free."""
    nodes = list(state.nodes.values())
    found: list[Block] = []
    largest = most_free(nodes, request.resources)
    for resource in request.resources:
        need = max(b.get(resource, 0) for b in request.bundles)
        if need > largest.get(resource, 0):
            found.append(Block(BlockKind.CAPACITY, resource, need, total=largest[resource]))
            continue
        free = sum(max(0, node.free(resource)) for node in nodes)
        if request.resources[resource] > free:
            found.append(
                Block(
                    BlockKind.CAPACITY,
                    resource,
                    request.resources[resource],
                    total=free,
                    where="all nodes together",
                )
            )
    return found


def gang_block(request: Request, ever: bool = False, reason: str = "") -> Block:
    """The block of a gang whose bundles do not fit together (now, or ``ever``)."""
    count = len(request.bundles)
    said = reason or (
        f"no set of nodes has room for all {count} bundles at once ({request.strategy}), "
        "or the head of the queue holds it"
    )
    return Block(BlockKind.GANG, request.strategy, count, ever=ever, reason=said)


def most_free(nodes: Iterable[NodeLedger], resources: Iterable[str] = NODE_RESOURCES) -> Amounts:
    """The most of each resource free on any one of ``nodes`` (0 with no nodes)."""
    ledgers = list(nodes)
    return {r: max((node.free(r) for node in ledgers), default=0) for r in resources}


def why_not(state: ClusterState, request: Request, held: Reservation | None) -> Block:
    """The first thing that keeps ``request`` (known not to fit now) waiting."""
    found = blocks(state, request, held, first=True) or capacity_blocks(state, request)
    if found:
        return found[0]
    return gang_block(request) if request.bundles else Block(BlockKind.SPLIT, "")


def never_fits(
    state: ClusterState, request: Request, memo: dict[tuple[Any, ...], Block | None] | None = None
) -> Block | None:
    """Why ``request`` can never be granted, or None.

    ``memo`` remembers the answer per shape until the nodes change (the caller clears
    it then): pool sizes and tenant limits never change under a running scheduler.
    """
    if memo is not None and request.shape in memo:
        return memo[request.shape]
    found = blocks(state, request, ever=True, first=True)
    block = found[0] if found else _never_fits_a_node(state, request)
    if memo is not None:
        if len(memo) >= NEVER_FITS_MEMORY:
            memo.clear()
        memo[request.shape] = block
    return block


def _never_fits_a_node(state: ClusterState, request: Request) -> Block | None:
    resources = request.resources
    if not resources:
        return None if state.nodes else Block(BlockKind.NO_NODE, "", ever=True)
    if request.bundles:
        if not state.nodes:
            return Block(BlockKind.NO_NODE, "", ever=True)
        why = gangs.never_fits(state.placer.nodes, request.bundles, request.strategy)
        return None if why is None else gang_block(request, ever=True, reason=why)
    if request.node is not None:
        candidates: Iterable[NodeLedger] = [state.nodes[request.node]]
    else:
        candidates = state.placer.candidates(resources)
    for node in candidates:
        if all(node.limit(r) >= a for r, a in resources.items()):
            return None
    where = f"node {request.node}" if request.node else "any node"
    return Block(BlockKind.CAPACITY, format_request(resources), where=where, ever=True)


def place(
    state: ClusterState, request: Request, held: Reservation | None, scope: Freed | None
) -> NodeLedger | GangPlacement | None:
    """The node ``request`` may be granted on now, outside ``held``; None if none. For a
    gang, the node of every bundle (``core/gangs.py``), or None unless all fit at once.

    ``scope``: where capacity just came back; when the request's pools and tenant did
    not change, only those nodes can have become able to take it.
    """
    quota = state.tenants.get(request.tenant)
    limited = request.pools or (quota is not None and quota.limit is not None)
    if limited and blocks(state, request, held, first=True):
        return None
    held_nodes = held.nodes if held is not None else {}
    if request.bundles:
        if (
            scope is not None
            and not scope.pools & request.pools.keys()
            and request.tenant not in scope.tenants
        ):
            # It did not fit before: only room come back for one of its bundles helps.
            freed = (state.nodes[i] for i in scope.nodes if i in state.nodes)
            if not gangs.could_use(freed, request.bundles, held_nodes):
                return None
        return gangs.place(state.placer, request.bundles, request.strategy, held_nodes)
    if request.node is not None:
        node = state.nodes.get(request.node)
        if node is None or not node.fits(request.resources, held_nodes.get(node.node_id)):
            return None
        return node
    if not request.resources:
        # A pools-only lease is recorded on its holder's node (where the sockets live).
        home = state.nodes.get(request.holder.node_id or "")
        return home if home is not None else next(iter(state.nodes.values()), None)
    if (
        scope is not None
        and not scope.pools & request.pools.keys()
        and request.tenant not in scope.tenants
    ):
        freed_nodes = (state.nodes[i] for i in scope.nodes if i in state.nodes)
        return state.placer.best_among(freed_nodes, request.resources, held_nodes)
    return state.placer.choose(request.resources, held_nodes)


def fits(state: ClusterState, request: Request, held: Reservation | None) -> bool:
    """Whether ``request`` would be granted now: ``place`` without moving the placer's
    search (a query must leave no trace)."""
    if blocks(state, request, held, first=True):
        return False
    held_nodes = held.nodes if held is not None else {}
    if request.bundles:
        # On a copy of the placer: its search moves a cursor, and a query leaves no trace.
        placer = state.placer.copy(state.nodes)
        return gangs.place(placer, request.bundles, request.strategy, held_nodes) is not None
    if request.node is not None:
        nodes: Iterable[NodeLedger] = [n] if (n := state.nodes.get(request.node)) else []
    else:
        nodes = state.nodes.values()
    return any(node.fits(request.resources, held_nodes.get(node.node_id)) for node in nodes)


__all__ = [
    "Block",
    "BlockKind",
    "blocks",
    "capacity_blocks",
    "fits",
    "gang_block",
    "most_free",
    "never_fits",
    "node_short",
    "place",
    "tenant_blocks",
    "why_not",
]
