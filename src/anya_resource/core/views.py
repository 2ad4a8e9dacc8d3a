"""Read-only views of the scheduler: the snapshot and wait-time percentiles."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from anya_resource.core.model import NODE_RESOURCES

if TYPE_CHECKING:
    from anya_resource.core.model import Request
    from anya_resource.core.scheduler import Scheduler
    from anya_resource.core.waitqueue import Waiter


def percentile(values: Iterable[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100); None for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def wait_stats(scheduler: Scheduler) -> dict[str, dict[str, float | int | None]]:
    """p50/p95/p99 of recent waits to grant, per priority class."""
    return {
        name: {
            "count": len(samples),
            "p50": percentile(samples, 50),
            "p95": percentile(samples, 95),
            "p99": percentile(samples, 99),
        }
        for name, samples in scheduler.waits.items()
    }


def snapshot(scheduler: Scheduler, now: float) -> dict[str, Any]:
    """Per node, resource, pool and tenant: capacity, granted, free, waiting."""
    reservation = scheduler.reservation
    nodes: dict[str, Any] = {}
    totals = {
        r: {"capacity": 0, "reserve": 0, "grantable": 0, "granted": 0, "free": 0}
        for r in NODE_RESOURCES
    }
    for node_id, node in scheduler.nodes.items():
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
        sample = scheduler.samples.get(node_id)
        nodes[node_id] = {
            "alive": node.alive,
            "pressured": sorted(node.pressured),
            "health_factor": round(node.health_factor, 3),
            # The measured use behind ``pressured`` (None before the first heartbeat).
            "memory_percent": None if sample is None else sample.memory_percent,
            "cpu_percent": None if sample is None else sample.cpu_percent,
            "leases": len(scheduler.leases.by_node.get(node_id, {})),
            "resources": resources,
        }
    waiting_by_tenant: dict[str, dict[str, int]] = {}
    waiting_by_priority: dict[str, int] = {}
    oldest: dict[str, float] = {}
    for waiter in scheduler.queue.by_id.values():
        request = waiter.request
        tenant = waiting_by_tenant.setdefault(request.tenant, {})
        for r, a in {**request.resources, **request.pools}.items():
            tenant[r] = tenant.get(r, 0) + a
        name = request.priority_name
        waiting_by_priority[name] = waiting_by_priority.get(name, 0) + 1
        oldest[name] = max(oldest.get(name, 0.0), now - waiter.submitted_at)
    demand = scheduler.waiting_demand
    return {
        "demand": waiting_demand(scheduler, now),
        "at": now,
        "epoch": scheduler.leases.epoch,
        "placement": scheduler.policy.placement,
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
            for name, pool in scheduler.pools.items()
        },
        "tenants": {
            name: {
                "usage": {r: a for r, a in quota.usage.items() if a},
                "guaranteed": dict(quota.guaranteed),
                "limit": dict(quota.limit) if quota.limit is not None else None,
                "waiting": waiting_by_tenant.get(name, {}),
            }
            for name, quota in scheduler.tenants.items()
        },
        "queue": {
            "waiting": len(scheduler.queue),
            "by_priority": waiting_by_priority,
            "oldest_wait": oldest,
            "head": reservation.request_id if reservation else None,
            "head_node": reservation.node_id if reservation else None,
        },
        "leases": len(scheduler.leases),
        "counters": {
            "submitted": scheduler.counters.submitted,
            "granted": scheduler.counters.granted,
            "rejected": dict(scheduler.counters.rejected),
            "reclaimed": dict(scheduler.counters.reclaimed),
            "revoked": dict(scheduler.counters.revoked),
        },
        "waits": wait_stats(scheduler),
    }


def _blocked_by_tenant(
    scheduler: Scheduler, waiter: Waiter, demand: Mapping[str, int]
) -> list[str]:
    """The resources whose tenant hard limit ``waiter`` would pass now (empty: none).

    As ``Scheduler.place`` sees it: the head's tenant quota is held for the head, so a
    later request of the same tenant counts it as used.
    """
    quota = scheduler.tenants.get(waiter.request.tenant)
    if quota is None or quota.limit is None:
        return []
    held: Mapping[str, int] = {}
    head = scheduler.reservation
    if head is not None and head.tenant == quota.name and head.request_id != waiter.request_id:
        held = head.tenant_amounts
    return [
        r
        for r, amount in demand.items()
        if r in quota.limit and quota.usage.get(r, 0) + held.get(r, 0) + amount > quota.limit[r]
    ]


def _ages(ages: list[float]) -> dict[str, float | None]:
    return {
        "p50_wait_s": percentile(ages, 50),
        "p95_wait_s": percentile(ages, 95),
        "oldest_wait_s": max(ages, default=None),
    }


def _short_of(scheduler: Scheduler, request: Request, most_free: Mapping[str, int]) -> list[str]:
    """The resources and pools that ``request`` finds too little of free anywhere it may go.

    Empty when each would fit somewhere on its own: then no single node has all of it at
    once, or the head of the queue holds it back; either way it waits for all it asks.
    """
    if request.node is not None:
        node = scheduler.nodes.get(request.node)
        short = [r for r, a in request.resources.items() if node is None or a > node.free(r)]
    else:
        short = [r for r, a in request.resources.items() if a > most_free.get(r, 0)]
    short += [
        p
        for p, slots in request.pools.items()
        if scheduler.pools[p].in_use + slots > scheduler.pools[p].size
    ]
    return short or [*request.resources, *request.pools]


def waiting_demand(scheduler: Scheduler, now: float) -> dict[str, Any]:
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
    most_free = {
        r: max((node.free(r) for node in scheduler.nodes.values()), default=0)
        for r in NODE_RESOURCES
    }
    for waiter in scheduler.queue.by_id.values():
        request = waiter.request
        demand = {**request.resources, **request.pools}
        age = now - waiter.submitted_at
        limited = _blocked_by_tenant(scheduler, waiter, demand)
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
        short = _short_of(scheduler, request, most_free)
        for r, amount in demand.items():
            if r not in short:
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
        "pools": rows(scheduler.pools),
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
