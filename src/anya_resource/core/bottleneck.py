"""What holds work back: the binding resource or pool, hot nodes, tenants at a cap.

Works on a snapshot (``views.snapshot``), so the same analysis serves the
coordinator, the CLI and the simulator. Every finding carries the figures it
rests on, one plain-language recommendation, and ``text``: both on one line
("postgres pool: 20/20 in use, 35 waiting, p95 wait 2.1 s: raise the pool size or
lower concurrency").

Demand that its own tenant's hard limit blocks is charged to that tenant, never to
the resources or pools it asks for: adding nodes or pool slots would not let it
run, so calling them the bottleneck would send an operator the wrong way.
"""

from __future__ import annotations

from typing import Any

from anya_resource.messages import Snapshot
from anya_resource.quantities import format_amount

HOT_UTILISATION = 0.9  # granted / grantable at which a node counts as hot
HOT_PERCENT = 90.0  # measured use at which a node counts as hot without a policy threshold

# Resource and pool findings (capacity) come first, then tenants (policy), then nodes
# (where, rather than what). Within a kind, the most pressed first.
_KIND_ORDER = {"resource": 0, "pool": 0, "tenant": 1, "node": 2}


def _fmt_wait(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds:.1f} s"


def _pressure(waiting: float, free: float, capacity: float) -> float:
    """Waiting demand against free capacity, comparable across units: free counts as
    at least 1% of the capacity (a bare ``max(free, 1)`` in core units would rank one
    waiting core, 1000 milli-units, above ten requests waiting on a full pool)."""
    return waiting / max(free, capacity / 100, 1e-9)


def _finding(
    kind: str,
    name: str,
    pressure: float,
    figures: dict[str, Any],
    message: str,
    recommendation: str,
) -> dict[str, Any]:
    return {
        "kind": kind,
        "name": name,
        "pressure": pressure,
        "figures": figures,
        "message": message,
        "recommendation": recommendation,
        "text": f"{message}: {recommendation}",
    }


def _granted_p95(snap: Snapshot) -> float | None:
    """The worst p95 of recent waits to grant, over the priority classes."""
    waits = snap.get("waits", {})
    return max((w["p95"] for w in waits.values() if w.get("p95") is not None), default=None)


def _resource_findings(snap: Snapshot) -> list[dict[str, Any]]:
    findings = []
    demand = snap.get("demand", {}).get("resources", {})
    granted_p95 = _granted_p95(snap)
    for name, row in snap["resources"].items():
        waits = demand.get(name)
        if not waits or waits["on_capacity"] <= 0:
            continue
        waiting = waits["on_capacity"]
        free = max(0, row["free"])
        p95 = waits["p95_wait_s"] if waits["p95_wait_s"] is not None else granted_p95
        pressured = [
            node_id for node_id, node in snap["nodes"].items() if name in node.get("pressured", ())
        ]
        message = (
            f"{name}: {format_amount(name, row['granted'])} of "
            f"{format_amount(name, row['grantable'])} granted, "
            f"{format_amount(name, waiting)} waiting in {waits['requests']} requests, "
            f"p95 wait {_fmt_wait(p95)}"
        )
        if pressured:
            message += f", {len(pressured)} node(s) under measured {name} pressure"
            recommendation = (
                f"nodes under {name} pressure grant no more {name}: find what uses it "
                f"outside its leases there, or add nodes"
            )
        else:
            recommendation = f"add nodes with more {name}, or ask for less {name} per request"
        findings.append(
            _finding(
                "resource",
                name,
                _pressure(waiting, free, row["capacity"] - row["reserve"]),
                {
                    **row,
                    **waits,
                    "granted_p95_wait_s": granted_p95,
                    "pressured_nodes": pressured,
                },
                message,
                recommendation,
            )
        )
    return findings


def _pool_findings(snap: Snapshot) -> list[dict[str, Any]]:
    findings = []
    demand = snap.get("demand", {}).get("pools", {})
    granted_p95 = _granted_p95(snap)
    for name, pool in snap["pools"].items():
        waits = demand.get(name)
        if not waits or waits["on_capacity"] <= 0:
            continue
        waiting = waits["on_capacity"]
        p95 = waits["p95_wait_s"] if waits["p95_wait_s"] is not None else granted_p95
        findings.append(
            _finding(
                "pool",
                name,
                _pressure(waiting, max(0, pool["free"]), pool["size"]),
                {**pool, **waits, "granted_p95_wait_s": granted_p95},
                f"{name} pool: {pool['in_use']}/{pool['size']} in use, {waiting} waiting, "
                f"p95 wait {_fmt_wait(p95)}",
                "raise the pool size or lower concurrency",
            )
        )
    return findings


def _tenant_findings(snap: Snapshot) -> list[dict[str, Any]]:
    findings = []
    for name, blocked in snap.get("demand", {}).get("tenants", {}).items():
        tenant = snap["tenants"].get(name, {})
        limit = tenant.get("limit") or {}
        usage = tenant.get("usage", {})
        for resource in blocked["blocked_on"]:
            cap = limit.get(resource, 0)
            waiting = blocked["at_limit"].get(resource, 0)
            findings.append(
                _finding(
                    "tenant",
                    name,
                    float(waiting) / max(cap, 1),
                    {"resource": resource, **tenant, **blocked},
                    f"tenant {name}: {format_amount(resource, usage.get(resource, 0))} in use, "
                    f"at its hard limit of {format_amount(resource, cap)} {resource} with "
                    f"{format_amount(resource, waiting)} more waiting, "
                    f"p95 wait {_fmt_wait(blocked['p95_wait_s'])}",
                    f"raise tenants.{name}.limit.{resource}, or spread its work over time",
                )
            )
    return findings


def _node_findings(snap: Snapshot) -> list[dict[str, Any]]:
    findings = []
    for node_id, node in snap["nodes"].items():
        pressured = list(node.get("pressured", ()))
        readings = {"memory": node.get("memory_percent"), "cpu": node.get("cpu_percent")}
        hot = [
            r
            for r, row in node["resources"].items()
            if r not in pressured
            and row["grantable"] > 0
            and row["granted"] / row["grantable"] >= HOT_UTILISATION
        ]
        busy = [
            r
            for r, percent in readings.items()
            if r not in pressured and percent is not None and percent >= HOT_PERCENT
        ]
        if not (pressured or hot or busy):
            continue
        parts = []
        for r in pressured:
            reading = readings.get(r)
            used = "" if reading is None else f" ({reading:.0f}% in use)"
            parts.append(f"{r} under measured pressure{used}")
        parts += [f"{r} {readings[r]:.0f}% in use (measured)" for r in busy]
        for r in hot:
            row = node["resources"][r]
            parts.append(f"{r} {row['granted'] / row['grantable']:.0%} granted")
        if pressured:
            what = "/".join(pressured)
            recommendation = (
                f"it gets no new {what} grants and gives back its preemptible {what} "
                f"leases until use falls below the policy's low mark: move or stop what "
                f"uses it there, or add nodes"
            )
        elif busy:
            recommendation = (
                "placement prefers other nodes while it is this busy; look for work "
                "running there outside its leases"
            )
        else:
            recommendation = "new work goes to other nodes first; add capacity if all are hot"
        findings.append(
            _finding(
                "node",
                node_id,
                0.0,
                {"pressured": pressured, "hot": hot, "busy": busy, **readings},
                f"node {node_id[:12]}: " + ", ".join(parts),
                recommendation,
            )
        )
    return findings


def find_bottlenecks(snap: Snapshot) -> list[dict[str, Any]]:
    """Findings, most binding first."""
    findings = (
        _resource_findings(snap)
        + _pool_findings(snap)
        + _tenant_findings(snap)
        + _node_findings(snap)
    )
    findings.sort(key=lambda f: (_KIND_ORDER[f["kind"]], -f["pressure"]))
    return findings


def binding(findings: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The single most binding resource, pool or tenant limit, if work waits on one."""
    for finding in findings:
        if finding["kind"] in ("resource", "pool", "tenant"):
            return finding
    return None
