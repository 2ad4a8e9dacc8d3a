"""Placement groups kept a moment after their lease ended, for the next lease of the
same layout. Pure: which group to reuse, which to give up, and when.

Ray places a new group on a node only once its view of the node shows the room free,
and that view lags a group's removal by about 0.1 s; a group asked for within it fails
its first attempt and is placed about a second later (measured: ~970 ms, on Ray 2.60).
A lease ended and another of the same layout granted at once (an acquire loop, a gang
given back and asked for again, a job requeued) is the common case, so the ended lease's
group is kept as a *spare* for ``keep_s`` seconds: a grant of the same layout (the same
nodes, the same amounts on each) takes it as it is, with no Ray call; a grant that needs
the room a spare holds on a node has that spare given up first; a spare not taken in
time is given up. The core's ledgers never see spares: their room is free to grant, and
``clear_for`` says which spares a grant needs gone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeAlias

from anya_resource.core.model import Amounts, Bundle
from anya_resource.core.requests import RAY_RESERVED

# Per bundle of a placement group (one per node, in order): the node, and what Ray
# reserves there (cpu, gpu, memory), sorted.
Layout: TypeAlias = tuple[tuple[str, tuple[tuple[str, int], ...]], ...]
KEEP_S = 1.0


def layout_of(placed: Iterable[Bundle]) -> Layout:
    """The layout of a group for a lease's bundles: one per node, what Ray reserves."""
    merged: dict[str, Amounts] = {}
    for node_id, amounts in placed:
        into = merged.setdefault(node_id, {})
        for resource, amount in amounts.items():
            if resource in RAY_RESERVED and amount > 0:
                into[resource] = into.get(resource, 0) + amount
    return tuple((node, tuple(sorted(amounts.items()))) for node, amounts in merged.items())


@dataclass(frozen=True, slots=True)
class Spare:
    group_id: str
    layout: Layout
    since: float

    def on(self, node_id: str) -> Amounts:
        """What it holds on ``node_id``."""
        return next((dict(amounts) for node, amounts in self.layout if node == node_id), {})


@dataclass
class SpareGroups:
    """The spares, by layout (most recent last)."""

    keep_s: float = KEEP_S
    by_layout: dict[Layout, list[Spare]] = field(default_factory=dict)

    def __len__(self) -> int:
        return sum(len(spares) for spares in self.by_layout.values())

    def put(self, spare: Spare) -> None:
        self.by_layout.setdefault(spare.layout, []).append(spare)

    def take(self, layout: Layout) -> Spare | None:
        """A spare of ``layout`` to reuse (the most recent), or None."""
        spares = self.by_layout.get(layout)
        if not spares:
            return None
        spare = spares.pop()
        if not spares:
            del self.by_layout[layout]
        return spare

    def clear_for(self, layout: Layout, free_after: Mapping[str, Mapping[str, int]]) -> list[Spare]:
        """The spares to give up before a group of ``layout`` is asked for: on each of
        its nodes, the oldest first, until what Ray has there (``free_after``, what the
        ledger has free after the grant, less what the spares hold) is enough."""
        gone: list[Spare] = []
        for node, _ in layout:
            room = dict(free_after.get(node, {}))
            here = sorted(
                (s for s in self._all() if s.on(node) and s not in gone), key=lambda s: s.since
            )
            for spare in here:
                for resource, amount in spare.on(node).items():
                    room[resource] = room.get(resource, 0) - amount
            for spare in here:
                if not _short(room):
                    break
                gone.append(spare)
                for resource, amount in spare.on(node).items():
                    room[resource] = room.get(resource, 0) + amount
        for spare in gone:
            self._drop(spare)
        return gone

    def expired(self, now: float) -> list[Spare]:
        """The spares kept ``keep_s`` or longer: to give up now."""
        old = [s for s in self._all() if now - s.since >= self.keep_s]
        for spare in old:
            self._drop(spare)
        return old

    def held(self) -> list[Spare]:
        return list(self._all())

    def _all(self) -> Iterable[Spare]:
        for spares in self.by_layout.values():
            yield from spares

    def _drop(self, spare: Spare) -> None:
        spares = self.by_layout.get(spare.layout, [])
        if spare in spares:
            spares.remove(spare)
            if not spares:
                del self.by_layout[spare.layout]


def _short(free: Mapping[str, int]) -> bool:
    return any(amount < 0 for amount in free.values())


__all__ = ["KEEP_S", "Layout", "Spare", "SpareGroups", "layout_of"]
