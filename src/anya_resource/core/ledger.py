"""Capacity accounting: what each node and pool has, has granted and may grant.

A node's *grantable* amount of a resource is its capacity minus the policy's
reserve, and zero for new grants while the node is under pressure for that
resource. ``free = grantable - granted`` may go negative only when a capacity
report shrinks below what is already granted; no grant is ever made into it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from anya_resource.core.model import NODE_RESOURCES, Amounts
from anya_resource.quantities import to_units


@dataclass(slots=True)
class NodeLedger:
    node_id: str
    capacity: Amounts
    reserve: Amounts
    granted: Amounts = field(default_factory=lambda: dict.fromkeys(NODE_RESOURCES, 0))
    # Resources the node may not grant more of right now (measured pressure): set only
    # through ``set_pressure``, which keeps ``ceilings`` true.
    pressured: set[str] = field(default_factory=set)
    health_factor: float = 1.0  # 1 healthy .. 0 saturated; weights spread placement
    alive: bool = True
    # Resources whose capacity report fell below what was already granted.
    shrunk: set[str] = field(default_factory=set)
    limits: Amounts = field(default_factory=dict)  # capacity minus reserve
    # What others use of the node outside any lease (plain Ray work, other placement
    # groups), as Ray last reported it: not free for leases, whatever the ledger says.
    outside: Amounts = field(default_factory=dict)
    outside_seen: Amounts = field(default_factory=dict)  # the last reading of it
    # What may be granted in all, per resource: the limit, or under pressure no more than
    # is granted already. The pressure cap is applied here once; every fit, free and
    # headroom figure reads it (they run on every grant and release).
    ceilings: Amounts = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._set_limits()

    def _set_limits(self) -> None:
        self.limits = {
            r: max(0, self.capacity.get(r, 0) - self.reserve.get(r, 0)) for r in NODE_RESOURCES
        }
        self._set_ceilings()

    def _set_ceilings(self) -> None:
        limits, granted, outside = self.limits, self.granted, self.outside
        self.ceilings = {
            r: (min(limits[r], granted[r]) if r in self.pressured else limits[r])
            - outside.get(r, 0)
            for r in NODE_RESOURCES
        }

    def set_outside(self, amounts: Mapping[str, int]) -> bool:
        """What others use of the node now; True if that is less than before."""
        before = self.outside
        self.outside = {r: a for r, a in amounts.items() if a > 0}
        self._set_ceilings()
        return any(self.outside.get(r, 0) < a for r, a in before.items())

    def set_pressure(self, resource: str, on: bool) -> None:
        """Stop (``on``) or resume new grants of ``resource`` here."""
        if on:
            self.pressured.add(resource)
        else:
            self.pressured.discard(resource)
        self._set_ceilings()

    def limit(self, resource: str) -> int:
        """Capacity minus reserve: the ceiling no grant may pass."""
        return self.limits.get(resource, 0)

    def grantable(self, resource: str) -> int:
        return self.ceilings.get(resource, 0)

    def free(self, resource: str) -> int:
        return self.ceilings.get(resource, 0) - self.granted[resource]

    def fits(self, demand: Mapping[str, int], held: Mapping[str, int] | None = None) -> bool:
        """Whether ``demand`` fits in what is free, after ``held`` (a reservation)."""
        return self.headroom_if_fits(demand, held) is not None

    def headroom_if_fits(
        self, demand: Mapping[str, int], held: Mapping[str, int] | None = None
    ) -> float | None:
        """Mean fraction of the demanded resources left free after the grant (0..1),
        if ``demand`` fits after ``held``; None if it does not.

        Fit and headroom in one pass over the demand: placement asks both of every
        node it looks at.
        """
        total = 0.0
        granted, limits, ceilings = self.granted, self.limits, self.ceilings
        for resource, amount in demand.items():
            used = granted[resource]
            taken = used + held.get(resource, 0) if held else used
            if taken + amount > ceilings[resource]:
                return None
            limit = limits[resource]
            if limit > 0:
                total += (limit - used - amount) / limit
        return total / (len(demand) or 1)

    def take(self, demand: Mapping[str, int]) -> None:
        for resource, amount in demand.items():
            self.granted[resource] += amount
        if self.pressured:
            self._set_ceilings()

    def give_back(self, demand: Mapping[str, int]) -> None:
        for resource, amount in demand.items():
            self.granted[resource] -= amount
        if self.pressured:
            self._set_ceilings()
        if self.shrunk:
            self.shrunk = {r for r in self.shrunk if self.granted[r] > self.limit(r)}

    def resize(self, capacity: Amounts, reserve: Amounts) -> None:
        """A new capacity report; what is already granted stays granted."""
        self.capacity = capacity
        self.reserve = reserve
        self._set_limits()
        self.shrunk = {r for r in NODE_RESOURCES if self.granted[r] > self.limit(r)}

    def mark_overcommit(self, resources: Iterable[str]) -> None:
        """After re-taking earlier grants (a restore): mark what now passes the limit."""
        self.shrunk.update(r for r in resources if self.granted[r] > self.limit(r))

    def overcommitted_by_shrink(self, resource: str) -> bool:
        return resource in self.shrunk

    def copy(self) -> NodeLedger:
        """An independent ledger with the same figures (for a trial, core/whatif.py)."""
        return NodeLedger(
            self.node_id,
            self.capacity,
            self.reserve,
            dict(self.granted),
            set(self.pressured),
            self.health_factor,
            self.alive,
            set(self.shrunk),
            outside=dict(self.outside),
        )


@dataclass(slots=True)
class PoolLedger:
    name: str
    size: int
    in_use: int = 0

    @property
    def free(self) -> int:
        return self.size - self.in_use


def reserve_for(capacity: Mapping[str, int], reserve_policy: Mapping[str, object]) -> Amounts:
    """The policy's reserve (absolute, or ``"10%"`` of capacity) in core units."""
    reserve: Amounts = {}
    for resource, value in reserve_policy.items():
        if isinstance(value, str) and value.strip().endswith("%"):
            percent = float(value.strip()[:-1])
            reserve[resource] = int(capacity.get(resource, 0) * percent / 100)
        else:
            reserve[resource] = to_units(resource, value)
    return reserve
