"""Which node gets a grant: spread or pack, without scanning every node.

Two cheap tricks keep a decision flat at 1,000 nodes:

* an upper bound of the free amount of each resource over all nodes, exact after
  a full scan and only ever raised in between, rejects a request that fits
  nowhere in O(1) (the common case for a request that must wait);
* the search starts at a rotating cursor and stops after it found ``choices``
  nodes that fit (power of k choices), so a roomy cluster costs O(k);
* it walks only the nodes that have any of the scarcest resource asked for (the
  5 GPU nodes of 1,000, say), so a scarce resource does not make it O(nodes).

``spread`` takes, among the nodes found, the most headroom after the grant
weighted by node health; ``pack`` first tries the node it packed last, then the
fullest node found.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from anya_resource.core.ledger import NodeLedger
from anya_resource.core.model import NODE_RESOURCES


class Placer:
    def __init__(self, strategy: str, choices: int = 4, max_examine: int = 64) -> None:
        if strategy not in ("spread", "pack"):
            raise ValueError(f"placement: got {strategy!r}, expected 'spread' or 'pack'")
        self.strategy = strategy
        self.choices = choices
        self.max_examine = max_examine
        self.nodes: list[NodeLedger] = []
        self._position: dict[str, int] = {}
        self._cursor = 0
        self._last_packed: NodeLedger | None = None
        self.free_bound: dict[str, int] = dict.fromkeys(NODE_RESOURCES, 0)
        # resource -> the nodes whose limit of it is above 0, in joining order
        self._having: dict[str, list[NodeLedger]] = {r: [] for r in NODE_RESOURCES}

    # -- membership ---------------------------------------------------------

    def add(self, node: NodeLedger) -> None:
        self._position[node.node_id] = len(self.nodes)
        self.nodes.append(node)
        self._index(node)
        self.note_freed(node)

    def remove(self, node_id: str) -> None:
        position = self._position.pop(node_id)
        removed = self.nodes[position]
        last = self.nodes.pop()
        if last.node_id != node_id:
            self.nodes[position] = last
            self._position[last.node_id] = position
        self._unindex(removed)
        if self._last_packed is not None and self._last_packed.node_id == node_id:
            self._last_packed = None

    def resized(self, node: NodeLedger) -> None:
        """``node`` reported a new capacity: its place in the index, and the bound."""
        self._unindex(node)
        self._index(node)
        self.note_freed(node)

    def _index(self, node: NodeLedger) -> None:
        for resource, limit in node.limits.items():
            if limit > 0:
                self._having[resource].append(node)

    def _unindex(self, node: NodeLedger) -> None:
        for having in self._having.values():
            if node in having:
                having.remove(node)

    def candidates(self, demand: Mapping[str, int]) -> list[NodeLedger]:
        """The nodes that have some of every resource asked for: those having the scarcest."""
        nodes = self.nodes
        for resource in demand:
            having = self._having[resource]
            if len(having) < len(nodes):
                nodes = having
        return nodes

    def note_freed(self, node: NodeLedger, resources: Iterable[str] = NODE_RESOURCES) -> None:
        """Capacity went up on ``node`` (for ``resources``): the bound must stay an upper bound."""
        bound = self.free_bound
        for resource in resources:
            free = node.free(resource)
            if free > bound[resource]:
                bound[resource] = free

    def in_order(self, node_ids: Iterable[str]) -> list[NodeLedger]:
        """The alive ones of ``node_ids``, in the order the search walks them."""
        position = self._position
        known = sorted((i for i in node_ids if i in position), key=position.__getitem__)
        return [self.nodes[position[i]] for i in known]

    def copy(self, nodes: Mapping[str, NodeLedger]) -> Placer:
        """The same search over ``nodes`` (copies of this placer's, by id): a trial's."""
        twin = Placer(self.strategy, self.choices, self.max_examine)
        twin.nodes = [nodes[node.node_id] for node in self.nodes]
        twin._position = dict(self._position)
        twin._cursor = self._cursor
        last = self._last_packed
        twin._last_packed = None if last is None else nodes.get(last.node_id)
        twin.free_bound = dict(self.free_bound)
        twin._having = {r: [nodes[n.node_id] for n in having] for r, having in self._having.items()}
        return twin

    # -- choice ---------------------------------------------------------------

    def choose(
        self,
        demand: Mapping[str, int],
        held: Mapping[str, Mapping[str, int]],
        exclude: Collection[str] = (),
    ) -> NodeLedger | None:
        """A node where ``demand`` fits outside the reservations ``held`` (node -> amounts),
        other than the nodes ``exclude`` names (a gang's bundles that must be apart)."""
        bound = self.free_bound
        for resource, amount in demand.items():
            if amount > bound[resource]:
                return None
        pack = self.strategy == "pack"
        if pack:
            last = self._last_packed
            if (
                last is not None
                and last.alive
                and last.node_id not in exclude
                and last.fits(demand, held.get(last.node_id))
            ):
                return last
        choice = self._search(demand, held, exclude)
        if choice is None:
            if not exclude:  # with nodes left out, failing says nothing of the others
                self._tighten_bound(demand)
        elif pack:
            self._last_packed = choice
        return choice

    def choose_many(
        self, demand: Mapping[str, int], held: Mapping[str, Mapping[str, int]], count: int
    ) -> list[NodeLedger]:
        """Up to ``count`` distinct nodes where ``demand`` fits (outside ``held``), the
        best-scoring of the first ``count + choices - 1`` found from the cursor on (a
        gang of bundles all alike, one per node): fewer only if fewer have room."""
        bound = self.free_bound
        for resource, amount in demand.items():
            if amount > bound[resource]:
                return []
        nodes = self.candidates(demand)
        total = len(nodes)
        if total == 0:
            return []
        wanted = count + self.choices - 1
        found: list[tuple[float, int, NodeLedger]] = []
        start = self._cursor % total
        examined = 0
        for examined in range(1, total + 1):
            index = start + examined - 1
            node = nodes[index if index < total else index - total]
            if node.alive:
                score = self.score(node, demand, held)
                if score is not None:
                    found.append((score, -examined, node))
                    if len(found) >= wanted:
                        break
            if len(found) >= count and examined >= self.max_examine:
                break
        self._cursor = start + examined
        found.sort(reverse=True)
        return [node for _, _, node in found[:count]]

    def score(
        self, node: NodeLedger, demand: Mapping[str, int], held: Mapping[str, Mapping[str, int]]
    ) -> float | None:
        """How good ``node`` is for ``demand`` (higher is better); None if it does not fit.

        ``spread``: the headroom left after the grant, weighted by node health;
        ``pack``: the less headroom left, the better.
        """
        headroom = node.headroom_if_fits(demand, held.get(node.node_id) if held else None)
        if headroom is None:
            return None
        return -headroom if self.strategy == "pack" else headroom * node.health_factor

    def best_among(
        self,
        nodes: Iterable[NodeLedger],
        demand: Mapping[str, int],
        held: Mapping[str, Mapping[str, int]],
    ) -> NodeLedger | None:
        """The best-scoring of ``nodes`` (the first wins a tie); None if it fits on none."""
        best: NodeLedger | None = None
        best_score = 0.0
        for node in nodes:
            score = self.score(node, demand, held)
            if score is not None and (best is None or score > best_score):
                best, best_score = node, score
        return best

    def _search(
        self,
        demand: Mapping[str, int],
        held: Mapping[str, Mapping[str, int]],
        exclude: Collection[str] = (),
    ) -> NodeLedger | None:
        """The best-scoring of the first ``choices`` nodes that fit, from the cursor on."""
        nodes = self.candidates(demand)
        count = len(nodes)
        if count == 0:
            return None
        best: NodeLedger | None = None
        best_score = 0.0
        found = 0
        start = self._cursor % count
        examined = 0
        for examined in range(1, count + 1):
            index = start + examined - 1
            node = nodes[index if index < count else index - count]
            if node.alive and (not exclude or node.node_id not in exclude):
                score = self.score(node, demand, held)
                if score is not None:
                    if best is None or score > best_score:
                        best, best_score = node, score
                    found += 1
                    if found >= self.choices:
                        break
            if found and examined >= self.max_examine:
                break
        self._cursor = start + examined
        return best

    def _tighten_bound(self, demand: Mapping[str, int]) -> None:
        # The search just found no room anywhere: make the bound exact for what was
        # asked, so that the next request as large is turned away in O(1). Only the
        # nodes that have a resource can have any of it free (the others' free is at
        # most 0, hence the floor of 0: the bound stays an upper bound).
        bound = self.free_bound
        for resource in demand:
            most = 0
            for node in self._having[resource]:
                if node.alive:
                    free = node.free(resource)
                    if free > most:
                        most = free
            bound[resource] = most
