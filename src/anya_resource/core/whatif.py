"""Dry runs: would ``count`` such requests be granted now, where, and at whose cost.

The answer comes from placing the requests, and preempting for them, on a trial copy of
the state (``ClusterState.trial``) with the same placement, admission and preemption
code ``submit`` uses, so it can never disagree with what ``submit`` would do; the
live ledgers are never written.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from anya_resource.core import gangs
from anya_resource.core.admission import Block, never_fits, place, why_not
from anya_resource.core.budgets import Budget, demand_of
from anya_resource.core.gangs import GangPlacement
from anya_resource.core.ledger import NodeLedger
from anya_resource.core.model import LeaseRecord, Request
from anya_resource.core.preemption import choose_gang_victims, choose_victims
from anya_resource.core.state import ClusterState
from anya_resource.core.waitqueue import Waiter
from anya_resource.messages import WhatIfAnswer
from anya_resource.quantities import format_amount


@dataclass
class WhatIf:
    """A dry run's answer. The counts say one thing: ``granted_now`` +
    ``granted_after_preemption`` + ``would_wait`` == ``requested``, unless ``infeasible``
    says why none could ever be granted (then all three are 0: none would wait)."""

    requested: int
    granted_now: int = 0  # fit in free capacity, no preemption needed
    granted_after_preemption: int = 0
    would_wait: int = 0
    nodes: dict[str, int] = field(default_factory=dict)
    preempted: list[dict[str, Any]] = field(default_factory=list)
    infeasible: str | None = None
    blocked_by: str | None = None

    def to_dict(self) -> WhatIfAnswer:
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


def what_if(
    state: ClusterState,
    request: Request,
    count: int,
    now: float,
    memo: dict[tuple[Any, ...], Block | None] | None = None,
) -> WhatIf:
    """How many of ``count`` such requests would be granted now (see the module's doc)."""
    result = WhatIf(requested=count)
    infeasible = never_fits(state, request, memo)
    if infeasible is not None:
        result.infeasible = str(infeasible)  # none would wait: none could ever be granted
        return result
    trial = state.trial()
    # Submitted now, it would come after everyone waiting of its effective priority.
    held = trial.holds_back(Waiter("", request, now, None, sys.maxsize), now)
    victims: list[LeaseRecord] = []
    granted = 0
    for _ in range(count):
        where = place(trial, request, held, None)
        if where is None:
            chosen = _victims(trial, request, {lease.lease_id for lease in victims})
            if chosen is None:
                break
            for lease in chosen:
                trial.refund(lease)
                victims.append(lease)
            where = place(trial, request, held, None)
            if where is None:
                break
            result.granted_after_preemption += 1
        else:
            result.granted_now += 1
        lease = _would_be(request, where, now)
        trial.charge(lease)
        granted += 1
        for node_id, _ in lease.placed():  # a gang counts each bundle on its node
            result.nodes[node_id] = result.nodes.get(node_id, 0) + 1
    if granted < count:
        result.blocked_by = str(why_not(trial, request, held))
    result.would_wait = count - granted
    result.preempted = [lease.public() for lease in victims]
    return result


def _victims(trial: ClusterState, request: Request, taken: set[str]) -> list[LeaseRecord] | None:
    """What ``submit`` would preempt for ``request`` (not already ``taken``), or None."""
    priority = float(request.priority)
    if request.bundles:
        target = gangs.target(trial.placer, request.bundles, request.strategy)
        if not target:
            return None
        return choose_gang_victims(trial, request, priority, target, excluded=taken)
    plan = choose_victims(trial, request, priority, excluded=taken)
    return None if plan is None else plan[1]


def _would_be(request: Request, where: NodeLedger | GangPlacement, now: float) -> LeaseRecord:
    """The lease a grant of ``request`` on ``where`` would be, for the trial to count."""
    lease = LeaseRecord(
        "",
        "",
        "",
        0,
        where.node_id,
        request.resources,
        request.pools,
        request.priority,
        request.priority_name,
        request.tenant,
        request.ttl,
        now,
        now,
        request.preemptible,
        request.holder,
    )
    if isinstance(where, GangPlacement):
        lease.bundles = where.bundles(request.bundles)
    return lease


def what_if_within(budget: Budget, request: Request, count: int) -> WhatIf:
    """How many of ``count`` such requests the budget would grant now (changes nothing)."""
    result = WhatIf(requested=count, infeasible=budget.never_fits(request))
    if result.infeasible is not None:
        return result  # none would wait: none could ever be granted
    first = budget.best()
    if first is not None and request.priority <= first.request.priority:
        result.would_wait = count  # it would come after them (FIFO among equals)
        result.blocked_by = f"{len(budget.waiting)} request(s) wait before it in the job's budget"
        return result
    demand = demand_of(request)
    trial = budget.trial()
    while result.granted_now < count:
        index = trial.place(request)
        if index is None:
            break
        trial.take(request.resources, request.pools, index)
        node_id = trial.bundles[index][0] if trial.bundles else budget.node_id
        result.nodes[node_id] = result.nodes.get(node_id, 0) + 1
        result.granted_now += 1
    result.would_wait = count - result.granted_now
    if result.would_wait:
        drawn = ", ".join(
            f"{format_amount(n, budget.used.get(n, 0))} of {format_amount(n, budget.total[n])} {n}"
            for n in demand
        )
        result.blocked_by = f"the job's budget ({budget.lease_id}): {drawn} drawn"
    return result


__all__ = ["WhatIf", "what_if", "what_if_within"]
