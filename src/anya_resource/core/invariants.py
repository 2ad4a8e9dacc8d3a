"""The invariants of docs/architecture.md, checked against the cluster's state.

Tests call ``check_invariants`` after every step of randomised runs; the
coordinator calls it after a recovery. Each failure names the invariant.
"""

from __future__ import annotations

from anya_resource.core.budgets import Budget
from anya_resource.core.model import NODE_RESOURCES, LeaseRecord, LeaseState, charged
from anya_resource.core.state import ClusterState


class InvariantViolation(AssertionError):
    pass


def check_invariants(state: ClusterState) -> None:
    problems = list(_violations(state))
    if problems:
        raise InvariantViolation("; ".join(problems))


def _violations(s: ClusterState) -> list[str]:
    out: list[str] = []
    granted = {n: dict.fromkeys(NODE_RESOURCES, 0) for n in s.nodes}
    pools = dict.fromkeys(s.pools, 0)
    tenants: dict[str, dict[str, int]] = {}
    fencing: set[int] = set()
    drawn: dict[str, dict[str, int]] = {}  # budget lease -> what is drawn from it
    for lease in s.leases:
        if lease.fencing_token in fencing:
            out.append(f"inv4: fencing token {lease.fencing_token} used twice")
        fencing.add(lease.fencing_token)
        if lease.within is not None:
            _add(drawn.setdefault(lease.within, {}), charged(lease.resources, lease.pools))
            continue
        unknown = [node_id for node_id in lease.nodes() if node_id not in s.nodes]
        if unknown:
            out.append(f"inv2: lease {lease.lease_id} on unknown node(s) {unknown}")
            continue
        out.extend(_gang_violations(lease))
        for node_id, amounts in lease.placed():
            for r, a in amounts.items():
                granted[node_id][r] += a
        for p, a in lease.pools.items():
            pools[p] += a
        _add(tenants.setdefault(lease.tenant, {}), charged(lease.resources, lease.pools))
        if lease.fencing_token > s.leases.highest_fencing:
            out.append(f"inv4: lease {lease.lease_id} fencing above the highest issued")
        if lease.state is LeaseState.REVOKING and lease.revoke_deadline is None:
            out.append(f"inv3: revoked lease {lease.lease_id} has no deadline")
        if lease.request_id in s.queue:
            out.append(f"inv5/6: request {lease.request_id} both waits and holds {lease.lease_id}")
    for node_id, node in s.nodes.items():
        for r in NODE_RESOURCES:
            if node.granted[r] != granted[node_id][r]:
                out.append(
                    f"inv2: node {node_id} {r}: ledger says {node.granted[r]} granted, "
                    f"leases add up to {granted[node_id][r]}"
                )
            if node.free(r) + node.granted[r] != node.grantable(r):
                out.append(f"inv2: node {node_id} {r}: free + granted != grantable")
            if node.granted[r] > node.limit(r) and not node.overcommitted_by_shrink(r):
                out.append(
                    f"inv1: node {node_id} {r}: granted {node.granted[r]} > "
                    f"grantable {node.limit(r)}"
                )
    for name, pool in s.pools.items():
        if pool.in_use != pools[name]:
            out.append(f"inv2: pool {name}: {pool.in_use} in use, leases hold {pools[name]}")
        if pool.in_use > pool.size:
            out.append(f"inv1: pool {name}: {pool.in_use} in use > size {pool.size}")
    for name, quota in s.tenants.items():
        usage = tenants.get(name, {})
        for r, a in quota.usage.items():
            if a != usage.get(r, 0):
                out.append(
                    f"inv2: tenant {name} {r}: usage {a}, leases add up to {usage.get(r, 0)}"
                )
            limit = quota.hard_limit(r)
            if limit is not None and a > limit:
                out.append(f"inv1: tenant {name} {r}: usage {a} > hard limit {limit}")
    for name, usage in tenants.items():
        if name not in s.tenants and any(usage.values()):
            out.append(f"inv2: tenant {name} holds leases but has no quota record")
    if len(s.leases.by_request) != len(s.leases):
        out.append("inv5: leases and their requests are not one to one")
    out.extend(_budget_violations(s, drawn))
    return out


def _gang_violations(lease: LeaseRecord) -> list[str]:
    """inv10: a gang lease is whole: its bundles add up to what it is charged for."""
    if lease.bundles is None:
        return []
    out: list[str] = []
    if len(lease.bundles) < 2:
        out.append(f"inv10: gang lease {lease.lease_id} has {len(lease.bundles)} bundle(s)")
    summed: dict[str, int] = {}
    for _, amounts in lease.bundles:
        _add(summed, amounts)
    if summed != {r: a for r, a in lease.resources.items() if a}:
        out.append(
            f"inv10: gang lease {lease.lease_id}: bundles add up to {summed}, "
            f"it is charged {lease.resources}"
        )
    if lease.node_id != lease.bundles[0][0] if lease.bundles else False:
        out.append(f"inv10: gang lease {lease.lease_id}: node_id is not its first bundle's")
    return out


def _budget_violations(s: ClusterState, drawn: dict[str, dict[str, int]]) -> list[str]:
    """inv9: what is drawn from a budget is within it, counted once, and ends with it."""
    out: list[str] = []
    for lease_id in drawn.keys() - s.budgets.by_lease.keys():
        out.append(f"inv9: leases drawn from {lease_id}, which has no budget")
    for lease_id, budget in s.budgets.by_lease.items():
        owner = s.leases.active.get(lease_id)
        if owner is None or owner.within is not None:
            out.append(f"inv9: budget {lease_id} is not an active lease of the cluster")
            continue
        used = {r: a for r, a in drawn.get(lease_id, {}).items() if a}
        if used != budget.used:
            out.append(f"inv9: budget {lease_id} counts {budget.used}, its leases add up to {used}")
        for r, a in used.items():
            if a > budget.total.get(r, 0):
                out.append(f"inv9: budget {lease_id} {r}: {a} drawn > {budget.total.get(r, 0)}")
        out.extend(_bundle_violations(s, lease_id, budget))
        for request_id in budget.waiting:
            if s.budgets.waiters.get(request_id, (None, None))[1] is not budget:
                out.append(f"inv9: request {request_id} waits in {lease_id} untracked")
        best = budget.best()
        if best is not None and budget.fits(best.request):
            out.append(f"inv9: budget {lease_id}: its first waiter fits and was not granted")
    return out


def _bundle_violations(s: ClusterState, lease_id: str, budget: Budget) -> list[str]:
    """inv9, per bundle of a budget: what is drawn of each fits it, counted once."""
    out: list[str] = []
    recount: list[dict[str, int]] = [{} for _ in budget.bundles]
    for drawn_id in budget.drawn:
        lease = s.leases.active.get(drawn_id)
        if lease is None or not lease.resources:
            continue
        index = lease.within_bundle or 0
        if not 0 <= index < len(budget.bundles):
            out.append(f"inv9: lease {drawn_id} drawn from bundle {index} of {lease_id}")
            continue
        if lease.node_id != budget.bundles[index][0]:
            out.append(f"inv9: lease {drawn_id} is not on the node of its bundle {index}")
        _add(recount[index], lease.resources)
    for index, ((_, amounts), taken) in enumerate(
        zip(budget.bundles, budget.bundle_used, strict=True)
    ):
        if {r: a for r, a in taken.items() if a} != recount[index]:
            out.append(
                f"inv9: budget {lease_id} bundle {index} counts {taken}, not {recount[index]}"
            )
        for r, a in taken.items():
            if a > amounts.get(r, 0):
                out.append(f"inv9: budget {lease_id} bundle {index} {r}: {a} > {amounts.get(r, 0)}")
    return out


def _add(into: dict[str, int], amounts: dict[str, int]) -> None:
    for r, a in amounts.items():
        into[r] = into.get(r, 0) + a
