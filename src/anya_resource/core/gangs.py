"""Where a gang's bundles go: all of them at once, on nodes its strategy allows. Pure.

A gang is a request of two or more bundles of node resources (``Request.bundles``),
granted all together or not at all, with one of Ray's four placement-group strategies:

* ``PACK``: on one node if one has room for all of them, else on as few as it can
  (each bundle first tries the nodes the gang uses already);
* ``SPREAD``: each bundle on a node the gang does not use yet where it can, else on
  any node with room;
* ``STRICT_PACK``: all on one node, or wait;
* ``STRICT_SPREAD``: each on a node of its own, or wait.

Bundles are placed largest first, each by the policy's placer (spread or pack, power
of k choices), counting what the gang's earlier bundles take on a node as held there.
For bundles all alike (the usual gang) that greedy pass is exact: it fails only when
no node the strategy allows has room for one more. For bundles that differ, when it
fails, an exact search decides: a depth-first search over the nodes each bundle fits
on, up to ``EXACT_STEPS`` node checks (a small gang on a small cluster is always
settled exactly), then for ``STRICT_SPREAD`` a bipartite matching of bundles to the
nodes each fits on (Kuhn's augmenting paths), so a gang that could be placed is not
left waiting because of the order it was tried in.

A gang that did not fit can only fit after capacity came back on a node that has room
for one of its bundles (``could_use``): the settle pass asks that first, so a blocked
gang costs a look at the nodes that gave something back, not a search of the cluster.

``target`` says where a blocked gang will fit soonest (the head's hold, preemption for
it) and ``never_fits`` whether any set of nodes could ever hold it (capacity minus
reserve), as the one-node rules in ``core/admission.py`` do for a single bundle.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from anya_resource.core.ledger import NodeLedger
from anya_resource.core.model import DISTINCT_NODES, Amounts, Bundle
from anya_resource.core.placement import Placer

# Node checks the exact search may make once the greedy pass failed (its cost bound).
EXACT_STEPS = 1_000
# Exact matching for STRICT_SPREAD is tried up to this many bundles (recursion depth).
MATCH_MAX_BUNDLES = 256
# ... and up to this many (bundle, node) pairs to look at: a bound on its cost.
MATCH_MAX_EDGES = 200_000
# Larger first: the scarcest resources count most (a GPU bundle is the hardest to place).
_SIZE_ORDER = ("gpu", "cpu", "memory", "disk")


@dataclass(slots=True)
class GangPlacement:
    """The node of each bundle of a gang, in the order the bundles were asked for."""

    nodes: list[NodeLedger]

    @property
    def node_id(self) -> str:
        """The first bundle's node: a gang lease's ``node_id``."""
        return self.nodes[0].node_id

    def bundles(self, amounts: Sequence[Amounts]) -> list[Bundle]:
        """Each bundle's node and amounts, for the lease record."""
        return [(node.node_id, dict(a)) for node, a in zip(self.nodes, amounts, strict=True)]


def total(bundles: Iterable[Mapping[str, int]]) -> Amounts:
    """The sum of ``bundles``, per resource."""
    summed: Amounts = {}
    for bundle in bundles:
        _add(summed, bundle)
    return summed


def per_node(where: Iterable[Bundle]) -> dict[str, Amounts]:
    """What a placement takes on each node it uses (bundles on one node summed)."""
    taken: dict[str, Amounts] = {}
    for node_id, amounts in where:
        _add(taken.setdefault(node_id, {}), amounts)
    return taken


def place(
    placer: Placer,
    bundles: Sequence[Amounts],
    strategy: str,
    held: Mapping[str, Mapping[str, int]],
) -> GangPlacement | None:
    """A node for every bundle, outside ``held`` (node -> amounts); None if not all fit."""
    if strategy in ("PACK", "STRICT_PACK"):
        whole = placer.choose(total(bundles), held)
        if whole is not None:
            return GangPlacement([whole] * len(bundles))
        if strategy == "STRICT_PACK":
            return None
    alike = _alike(bundles)
    if alike and strategy != "PACK":
        # One node each, found in one walk: what a one-node request costs, a few times.
        nodes = placer.choose_many(bundles[0], held, len(bundles))
        if len(nodes) == len(bundles):
            return GangPlacement(nodes)
        if strategy == DISTINCT_NODES:
            return None  # exact: fewer nodes than bundles have room for one
        # SPREAD: these are all the nodes with room for one; the rest go on them again,
        # in turn, while they have room (exact for bundles alike, and no further walk).
        return _fill(nodes, bundles, held)
    chosen: list[NodeLedger | None] = [None] * len(bundles)
    taken: dict[str, Amounts] = {}  # what the gang's bundles placed so far take, per node
    used: list[NodeLedger] = []
    for index in _largest_first(bundles):
        bundle = bundles[index]
        around = _held_with(held, taken)
        node: NodeLedger | None = None
        if strategy == "PACK":
            node = next((n for n in used if n.fits(bundle, around.get(n.node_id))), None)
            if node is None:
                node = placer.choose(bundle, around)
        else:
            node = placer.choose(bundle, around, exclude=taken.keys())
            if node is None and strategy == "SPREAD":
                node = placer.choose(bundle, around)
        if node is None:
            if alike:
                return None  # the greedy pass is exact for bundles all alike
            exact = _exhaustive(placer, bundles, strategy, held)
            if exact is None and strategy == DISTINCT_NODES:
                return _match(placer, bundles, held)
            return exact
        chosen[index] = node
        if node.node_id not in taken:
            used.append(node)
        _add(taken.setdefault(node.node_id, {}), bundle)
    return GangPlacement([node for node in chosen if node is not None])


def could_use(
    nodes: Iterable[NodeLedger], bundles: Sequence[Amounts], held: Mapping[str, Mapping[str, int]]
) -> bool:
    """Whether any of ``nodes`` has room for one of the bundles now (outside ``held``)."""
    distinct = {tuple(sorted(b.items())): b for b in bundles}.values()
    return any(node.fits(b, held.get(node.node_id)) for node in nodes for b in distinct)


def target(placer: Placer, bundles: Sequence[Amounts], strategy: str) -> dict[str, Amounts]:
    """Where the blocked gang will fit soonest: per node, what it would take there.

    Each bundle (largest first) goes on the node with the smallest shortfall that could
    ever hold it beside the gang's earlier bundles there, as the strategy allows. Empty
    if no such set of nodes exists (then it never fits).
    """
    if strategy in ("PACK", "STRICT_PACK"):
        whole = total(bundles)
        node = soonest(placer.candidates(whole), whole, {}, ())
        if node is not None:
            return {node.node_id: whole}
        if strategy == "STRICT_PACK":
            return {}
    taken: dict[str, Amounts] = {}
    for index in _largest_first(bundles):
        bundle = bundles[index]
        nodes = placer.candidates(bundle)
        node = None
        if strategy == "PACK":
            used = [n for n in nodes if n.node_id in taken]
            node = soonest(used, bundle, taken, ())
        if node is None:
            node = soonest(nodes, bundle, taken, taken.keys())
        if node is None and strategy != DISTINCT_NODES:
            node = soonest(nodes, bundle, taken, ())
        if node is None:
            return {}
        _add(taken.setdefault(node.node_id, {}), bundle)
    return taken


def never_fits(
    nodes: Sequence[NodeLedger], bundles: Sequence[Amounts], strategy: str
) -> str | None:
    """Why no set of ``nodes`` could ever hold the gang (capacity minus reserve), or None.

    Exact for STRICT_PACK and STRICT_SPREAD (a matching on the nodes' limits); for PACK
    and SPREAD it says so only when certain: a bundle no node could hold, or more in all
    than all the nodes together.
    """
    count = len(bundles)
    if strategy == "STRICT_PACK":
        whole = total(bundles)
        if not any(_could_hold(node, whole) for node in nodes):
            return f"no node can ever hold all {count} bundles together (STRICT_PACK)"
        return None
    for index, bundle in enumerate(bundles):
        if not any(_could_hold(node, bundle) for node in nodes):
            return f"bundle {index} is larger than any node can ever grant"
    if strategy == DISTINCT_NODES:
        if count > len(nodes):
            return (
                f"STRICT_SPREAD needs {count} nodes, one per bundle; the cluster has {len(nodes)}"
            )
        fits_on = [[n for n in nodes if _could_hold(n, b)] for b in bundles]
        if _matching(fits_on) is None and count <= MATCH_MAX_BUNDLES:
            return f"no {count} distinct nodes can ever hold one bundle each (STRICT_SPREAD)"
        return None
    whole = total(bundles)
    for resource, amount in whole.items():
        if amount > sum(node.limit(resource) for node in nodes):
            return f"all {count} bundles need more {resource} than every node together can grant"
    return None


# -- helpers --------------------------------------------------------------------------


def _alike(bundles: Sequence[Amounts]) -> bool:
    first = bundles[0]
    return all(bundle == first for bundle in bundles)


def _largest_first(bundles: Sequence[Amounts]) -> list[int]:
    return sorted(
        range(len(bundles)),
        key=lambda i: tuple(bundles[i].get(r, 0) for r in _SIZE_ORDER),
        reverse=True,
    )


def _held_with(
    held: Mapping[str, Mapping[str, int]], taken: Mapping[str, Amounts]
) -> dict[str, Mapping[str, int]]:
    """``held`` plus what the gang's own earlier bundles take on each node."""
    if not taken:
        return dict(held)
    around: dict[str, Mapping[str, int]] = dict(held)
    for node_id, amounts in taken.items():
        merged = dict(held.get(node_id, {}))
        _add(merged, amounts)
        around[node_id] = merged
    return around


def soonest(
    nodes: Iterable[NodeLedger],
    bundle: Mapping[str, int],
    taken: Mapping[str, Amounts],
    exclude: Iterable[str],
) -> NodeLedger | None:
    """The node (not in ``exclude``) with the smallest shortfall for ``bundle`` beside
    ``taken`` there, among those that could ever hold both; None if none could."""
    skip = set(exclude)
    best, best_gap = None, float("inf")
    for node in nodes:
        if not node.alive or node.node_id in skip:
            continue
        already = taken.get(node.node_id, {})
        gap = 0.0
        for resource, amount in bundle.items():
            need = amount + already.get(resource, 0)
            limit = node.limit(resource)
            if need > limit:
                gap = float("inf")
                break
            gap += max(0, need - node.free(resource)) / max(1, limit)
        if gap < best_gap:
            best, best_gap = node, gap
    return best


def _fill(
    nodes: list[NodeLedger], bundles: Sequence[Amounts], held: Mapping[str, Mapping[str, int]]
) -> GangPlacement | None:
    """Bundles all alike on ``nodes`` (each with room for one), one per node in turn."""
    chosen: list[NodeLedger] = list(nodes)
    taken: dict[str, Amounts] = {node.node_id: dict(bundles[0]) for node in nodes}
    bundle = bundles[0]
    while len(chosen) < len(bundles):
        placed = False
        for node in nodes:
            around = _held_with({node.node_id: held.get(node.node_id, {})}, taken)
            if node.fits(bundle, around[node.node_id]):
                chosen.append(node)
                _add(taken[node.node_id], bundle)
                placed = True
                if len(chosen) == len(bundles):
                    break
        if not placed:
            return None
    return GangPlacement(chosen)


def _exhaustive(
    placer: Placer,
    bundles: Sequence[Amounts],
    strategy: str,
    held: Mapping[str, Mapping[str, int]],
) -> GangPlacement | None:
    """Every way to put the bundles on nodes (largest first, depth first), up to
    ``EXACT_STEPS`` node checks; the first that fits, or None (none, or not found)."""
    order = _largest_first(bundles)
    options = [[n for n in placer.candidates(bundles[i]) if n.alive] for i in order]
    distinct = strategy == DISTINCT_NODES
    taken: dict[str, Amounts] = {}
    chosen: dict[int, NodeLedger] = {}
    steps = 0

    def search(depth: int) -> bool:
        nonlocal steps
        if depth == len(order):
            return True
        bundle = bundles[order[depth]]
        for node in options[depth]:
            steps += 1
            if steps > EXACT_STEPS:
                return False
            node_id = node.node_id
            if distinct and node_id in taken:
                continue
            around = _held_with({node_id: held.get(node_id, {})}, {node_id: taken.get(node_id, {})})
            if not node.fits(bundle, around[node_id]):
                continue
            _add(taken.setdefault(node_id, {}), bundle)
            chosen[order[depth]] = node
            if search(depth + 1):
                return True
            _subtract(taken, node_id, bundle)
        return False

    if not search(0):
        return None
    return GangPlacement([chosen[i] for i in range(len(bundles))])


def _match(
    placer: Placer, bundles: Sequence[Amounts], held: Mapping[str, Mapping[str, int]]
) -> GangPlacement | None:
    """STRICT_SPREAD by exact matching of bundles to the nodes each fits on now."""
    if len(bundles) > MATCH_MAX_BUNDLES:
        return None
    fits_on: list[list[NodeLedger]] = []
    edges = 0
    for bundle in bundles:
        nodes = [
            n for n in placer.candidates(bundle) if n.alive and n.fits(bundle, held.get(n.node_id))
        ]
        edges += len(nodes)
        if not nodes or edges > MATCH_MAX_EDGES:
            return None
        fits_on.append(nodes)
    matched = _matching(fits_on)
    return None if matched is None else GangPlacement(matched)


def _matching(fits_on: Sequence[Sequence[NodeLedger]]) -> list[NodeLedger] | None:
    """A distinct node for each bundle from its own list (Kuhn's augmenting paths)."""
    if len(fits_on) > MATCH_MAX_BUNDLES:
        return None
    owner: dict[str, int] = {}  # node id -> the bundle on it
    by_id: dict[str, NodeLedger] = {}

    def augment(bundle: int, seen: set[str]) -> bool:
        for node in fits_on[bundle]:
            node_id = node.node_id
            if node_id in seen:
                continue
            seen.add(node_id)
            if node_id not in owner or augment(owner[node_id], seen):
                owner[node_id] = bundle
                by_id[node_id] = node
                return True
        return False

    for bundle in range(len(fits_on)):
        if not augment(bundle, set()):
            return None
    chosen: list[NodeLedger | None] = [None] * len(fits_on)
    for node_id, bundle in owner.items():
        chosen[bundle] = by_id[node_id]
    return [node for node in chosen if node is not None]


def _subtract(taken: dict[str, Amounts], node_id: str, amounts: Mapping[str, int]) -> None:
    left = taken[node_id]
    for resource, amount in amounts.items():
        left[resource] -= amount
    if not any(left.values()):
        del taken[node_id]


def _could_hold(node: NodeLedger, amounts: Mapping[str, int]) -> bool:
    return all(node.limit(r) >= a for r, a in amounts.items())


def _add(into: Amounts, amounts: Mapping[str, int]) -> None:
    for resource, amount in amounts.items():
        into[resource] = into.get(resource, 0) + amount


__all__ = [
    "GangPlacement",
    "could_use",
    "never_fits",
    "per_node",
    "place",
    "soonest",
    "target",
    "total",
]
