"""Read-only views of the state: the snapshot, and what the queue waits for."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from anya_resource.core.admission import BlockKind, blocks, capacity_blocks, most_free
from anya_resource.core.lifecycle import Counters
from anya_resource.core.model import NODE_RESOURCES, tenant_demand
from anya_resource.core.state import ClusterState
from anya_resource.core.waitstats import WaitStats, percentile
from anya_resource.messages import Snapshot


def ledgers(state: ClusterState) -> tuple[dict[str, Any], dict[str, dict[str, int]]]:
    """Per node its ledger and measured use, and the totals per resource.

    Shared by the snapshot and the history's compact entries (core/history.py).
    """
    reservation = state.reservation
    nodes: dict[str, Any] = {}
    totals = {
        r: {"capacity": 0, "reserve": 0, "grantable": 0, "granted": 0, "free": 0}
        for r in NODE_RESOURCES
    }
    for node_id, node in state.nodes.items():
        held = reservation.nodes.get(node_id, {}) if reservation else {}
        resources = {}
        for r in NODE_RESOURCES:
            row = {
                "capacity": node.capacity.get(r, 0),
                "reserve": min(node.reserve.get(r, 0), node.capacity.get(r, 0)),
                "grantable": node.grantable(r),
                "granted": node.granted[r],
                "free": node.free(r),
                "held_for_head": held.get(r, 0),
            }
            resources[r] = row
            for key in totals[r]:
                totals[r][key] += row[key]
        sample = state.samples.get(node_id)
        nodes[node_id] = {
            "alive": node.alive,
            "pressured": sorted(node.pressured),
            "health_factor": round(node.health_factor, 3),
            # The measured use behind ``pressured`` (None before the first heartbeat).
            "memory_percent": None if sample is None else sample.memory_percent,
            "cpu_percent": None if sample is None else sample.cpu_percent,
            "leases": len(state.leases.by_node.get(node_id, {})),
            "resources": resources,
        }
    return nodes, totals


def snapshot(state: ClusterState, now: float, counters: Counters, waits: WaitStats) -> Snapshot:
    """Per node, resource, pool and tenant: capacity, granted, free, waiting."""
    reservation = state.reservation
    nodes, totals = ledgers(state)
    waiting_by_tenant: dict[str, dict[str, int]] = {}
    waiting_by_priority: dict[str, int] = {}
    oldest: dict[str, float] = {}
    for waiter in state.queue.by_id.values():
        request = waiter.request
        tenant = waiting_by_tenant.setdefault(request.tenant, {})
        for r, a in tenant_demand(request).items():
            tenant[r] = tenant.get(r, 0) + a
        name = request.priority_name
        waiting_by_priority[name] = waiting_by_priority.get(name, 0) + 1
        oldest[name] = max(oldest.get(name, 0.0), now - waiter.submitted_at)
    demand = state.waiting_demand
    return {
        "demand": waiting_demand(state, now),
        "at": now,
        "epoch": state.leases.epoch,
        "placement": state.policy.placement,
        "nodes": nodes,
        "resources": {r: {**row, "waiting": demand.get(r, 0)} for r, row in totals.items()},
        "pools": {
            name: {
                "size": pool.size,
                "in_use": pool.in_use,
                "free": pool.free,
                "waiting": demand.get(name, 0),
                "held_for_head": reservation.pools.get(name, 0) if reservation else 0,
            }
            for name, pool in state.pools.items()
        },
        "tenants": {
            name: {
                "usage": {r: a for r, a in quota.usage.items() if a},
                "guaranteed": dict(quota.guaranteed),
                "limit": dict(quota.limit) if quota.limit is not None else None,
                "waiting": waiting_by_tenant.get(name, {}),
            }
            for name, quota in state.tenants.items()
        },
        "queue": {
            "waiting": len(state.queue),
            "by_priority": waiting_by_priority,
            "oldest_wait": oldest,
            "head": reservation.request_id if reservation else None,
            "head_node": reservation.node_id if reservation else None,
        },
        "leases": len(state.leases),
        "counters": {
            "submitted": counters.submitted,
            "granted": counters.granted,
            "rejected": dict(counters.rejected),
            "reclaimed": dict(counters.reclaimed),
            "revoked": dict(counters.revoked),
        },
        "waits": waits.summary(),
    }


def _ages(ages: list[float]) -> dict[str, float | None]:
    return {
        "p50_wait_s": percentile(ages, 50),
        "p95_wait_s": percentile(ages, 95),
        "oldest_wait_s": max(ages, default=None),
    }


def waiting_demand(state: ClusterState, now: float) -> dict[str, Any]:
    """What the queue waits for, split by what holds it back, with its waits so far.

    A request its tenant's hard limit blocks would not run even on an idle cluster:
    its demand is *at_tenant_limit* and counts against its tenant, not against the
    resources and pools it asks for. Of the rest, a resource or pool counts a request
    *on_capacity* when too little of it is free for the request (a request for cpu and
    memory on a cluster out of cpu waits on cpu, not on the idle memory), else
    *behind_other*. The wait figures are the ages of the requests waiting on capacity
    now (the grant-time waits are in ``waits``).
    """
    on_capacity: dict[str, int] = {}
    behind_other: dict[str, int] = {}
    at_limit: dict[str, int] = {}
    requests: dict[str, int] = {}
    ages: dict[str, list[float]] = {}
    tenants: dict[str, dict[str, Any]] = {}
    held = state.reservation
    free_anywhere = most_free(state.nodes.values())  # once, not per waiter
    for waiter in state.queue.by_id.values():
        request = waiter.request
        demand = tenant_demand(request)
        age = now - waiter.submitted_at
        # As placement sees it: the head's tenant quota is held for the head, so a later
        # request of the same tenant counts it as used.
        kept = held if held is not None and held.request_id != waiter.request_id else None
        limited = {b.resource for b in blocks(state, request, kept) if b.kind is BlockKind.TENANT}
        if limited:
            row = tenants.setdefault(
                request.tenant, {"at_limit": {}, "blocked_on": set(), "requests": 0, "ages": []}
            )
            row["requests"] += 1
            row["ages"].append(age)
            row["blocked_on"].update(limited)
            for r, amount in demand.items():
                row["at_limit"][r] = row["at_limit"].get(r, 0) + amount
                at_limit[r] = at_limit.get(r, 0) + amount
            continue
        # What it finds too little of free anywhere it may go; when each would fit
        # somewhere on its own, it waits for all it asks (no single node has all of it
        # at once, or the head holds it back).
        short = {b.what for b in blocks(state, request) if b.kind is BlockKind.POOL}
        short.update(b.what for b in capacity_blocks(state, request, free_anywhere))
        for r, amount in demand.items():
            if short and r not in short:
                behind_other[r] = behind_other.get(r, 0) + amount
                continue
            on_capacity[r] = on_capacity.get(r, 0) + amount
            requests[r] = requests.get(r, 0) + 1
            ages.setdefault(r, []).append(age)

    def rows(names: Iterable[str]) -> dict[str, Any]:
        return {
            name: {
                "on_capacity": on_capacity.get(name, 0),
                "behind_other": behind_other.get(name, 0),
                "at_tenant_limit": at_limit.get(name, 0),
                "requests": requests.get(name, 0),
                **_ages(ages.get(name, [])),
            }
            for name in names
            if on_capacity.get(name) or behind_other.get(name) or at_limit.get(name)
        }

    return {
        "resources": rows(NODE_RESOURCES),
        "pools": rows(state.pools),
        "tenants": {
            name: {
                "at_limit": row["at_limit"],
                "blocked_on": sorted(row["blocked_on"]),
                "requests": row["requests"],
                **_ages(row["ages"]),
            }
            for name, row in tenants.items()
        },
    }


__all__ = ["ledgers", "percentile", "snapshot", "waiting_demand"]
