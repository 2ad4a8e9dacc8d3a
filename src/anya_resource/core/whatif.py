"""Dry runs: would ``count`` such requests be granted now, where, and at whose cost.

The answer comes from really placing the requests on the live ledgers, then
undoing every change, so it can never disagree with what ``submit`` would do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from anya_resource.core.ledger import NodeLedger
from anya_resource.core.model import LeaseRecord, LeaseState, Request
from anya_resource.core.preemption import choose_victims

if TYPE_CHECKING:
    from anya_resource.core.scheduler import Scheduler


@dataclass
class WhatIf:
    requested: int
    granted_now: int = 0  # fit in free capacity, no preemption needed
    granted_after_preemption: int = 0
    would_wait: int = 0
    nodes: dict[str, int] = field(default_factory=dict)
    preempted: list[dict[str, Any]] = field(default_factory=list)
    infeasible: str | None = None
    blocked_by: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "requested": self.requested,
            "granted_now": self.granted_now,
            "granted_after_preemption": self.granted_after_preemption,
            "would_wait": self.would_wait,
            "nodes": dict(self.nodes),
            "preempted": list(self.preempted),
            "infeasible": self.infeasible,
            "blocked_by": self.blocked_by,
        }


def what_if(scheduler: Scheduler, request: Request, count: int, now: float) -> WhatIf:
    result = WhatIf(requested=count)
    result.infeasible = scheduler.never_fits(request)
    if result.infeasible is not None:
        result.would_wait = count
        return result
    saved_placer = scheduler.placer.save()
    taken: list[NodeLedger] = []
    victims: list[LeaseRecord] = []
    held = None if scheduler.outranks_head(request, now) else scheduler.reservation
    try:
        for _ in range(count):
            node = scheduler.place(request, held, None)
            if node is None:
                plan = choose_victims(scheduler, request, float(request.priority))
                if plan is None:
                    break
                for lease in plan[1]:
                    _lift(scheduler, lease)
                    victims.append(lease)
                node = scheduler.place(request, held, None)
                if node is None:
                    break
                result.granted_after_preemption += 1
            else:
                result.granted_now += 1
            # A tenant without a record keeps none: the dry run leaves no trace.
            scheduler.count_in(
                node, request.resources, request.pools, scheduler.tenants.get(request.tenant)
            )
            taken.append(node)
            result.nodes[node.node_id] = result.nodes.get(node.node_id, 0) + 1
        if len(taken) < count:
            result.blocked_by = scheduler.explain_block(request, held)
    finally:
        for node in taken:
            scheduler.count_out(
                node, request.resources, request.pools, scheduler.tenants.get(request.tenant)
            )
        for lease in victims:
            _restore(scheduler, lease)
        scheduler.placer.restore(saved_placer)
    result.would_wait = count - len(taken)
    result.preempted = [lease.public() for lease in victims]
    return result


def _lift(scheduler: Scheduler, lease: LeaseRecord) -> None:
    """Take a victim's capacity out of the ledgers for the dry run (kept in the table)."""
    lease.state = LeaseState.REVOKING  # so that it is not chosen twice
    node = scheduler.nodes[lease.node_id]
    scheduler.count_out(node, lease.resources, lease.pools, scheduler.tenants[lease.tenant])


def _restore(scheduler: Scheduler, lease: LeaseRecord) -> None:
    lease.state = LeaseState.ACTIVE
    node = scheduler.nodes[lease.node_id]
    scheduler.count_in(node, lease.resources, lease.pools, scheduler.tenants[lease.tenant])
    node.mark_overcommit(lease.resources)  # a shrunk node's overcommit stays marked
