"""A node's measured use: pressure with hysteresis, placement weight, whom to revoke.

Past the policy's high mark for a resource a node grants no more of it, and stays so
until use falls to the low mark: a node hovering at the mark does not flap. Under
pressure its preemptible leases holding that resource are revoked one at a time,
lowest priority and newest first, the next only after the last one took effect.
"""

from __future__ import annotations

from collections.abc import Iterable

from anya_resource.config import PressurePolicy
from anya_resource.core.ledger import NodeLedger
from anya_resource.core.model import LeaseRecord, LeaseState, NodeSample


def observe(node: NodeLedger, sample: NodeSample, pressure: PressurePolicy) -> bool:
    """Take ``sample`` into ``node``'s pressure and health; whether some pressure lifted."""
    was = set(node.pressured)
    _hysteresis(node, "memory", sample.memory_percent, pressure.memory_high, pressure.memory_low)
    if pressure.cpu_high is not None and pressure.cpu_low is not None:
        _hysteresis(node, "cpu", sample.cpu_percent, pressure.cpu_high, pressure.cpu_low)
    busiest = max(sample.memory_percent, sample.cpu_percent)
    node.health_factor = max(0.05, 1.0 - busiest / 200.0)
    return bool(was - node.pressured)


def _hysteresis(node: NodeLedger, resource: str, percent: float, high: float, low: float) -> None:
    if percent >= high:
        node.set_pressure(resource, True)
    elif percent <= low:
        node.set_pressure(resource, False)


def pressure_victim(
    node_id: str, leases: Iterable[LeaseRecord], resource: str
) -> LeaseRecord | None:
    """The lease on ``node_id`` (under ``resource`` pressure) to revoke next, if any now."""
    on_node = list(leases)
    if any(lease.state is LeaseState.REVOKING for lease in on_node):
        return None  # one at a time: let the last revocation take effect first
    candidates = [
        lease
        for lease in on_node
        if lease.preemptible and lease.on_node(node_id).get(resource, 0) > 0
    ]
    if not candidates:
        return None
    return min(candidates, key=lambda lease: (lease.priority, -lease.granted_at))
