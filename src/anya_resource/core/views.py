"""Read-only views of the scheduler: the snapshot and wait-time percentiles."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from anya_resource.core.model import NODE_RESOURCES

if TYPE_CHECKING:
    from anya_resource.core.scheduler import Scheduler


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
        nodes[node_id] = {
            "alive": node.alive,
            "pressured": sorted(node.pressured),
            "health_factor": round(node.health_factor, 3),
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
