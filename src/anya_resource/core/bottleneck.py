"""What holds work back: the binding resource or pool, hot nodes, tenants at a cap.

Works on a snapshot (``views.snapshot``), so the same analysis serves the
coordinator, the CLI and the simulator. Every finding carries the figures it
rests on and one plain-language recommendation.
"""

from __future__ import annotations

from typing import Any

from anya_resource.quantities import BYTE_RESOURCES, format_amount

HOT_UTILISATION = 0.9


def _fmt_wait(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds:.1f} s"


def _pressure(waiting: float, free: float, capacity: float) -> float:
    """Waiting demand against free capacity, comparable across units: free counts as
    at least 1% of the capacity (a bare ``max(free, 1)`` in core units would rank one
    waiting core, 1000 milli-units, above ten requests waiting on a full pool)."""
    return waiting / max(free, capacity / 100, 1e-9)


def find_bottlenecks(snap: dict[str, Any]) -> list[dict[str, Any]]:
    """Findings, most binding first."""
    findings: list[dict[str, Any]] = []
    waits = snap.get("waits", {})
    p95 = max((w["p95"] for w in waits.values() if w.get("p95") is not None), default=None)
    oldest = max(snap["queue"].get("oldest_wait", {}).values(), default=None)
    for name, row in snap["resources"].items():
        waiting, free = row["waiting"], max(0, row["free"])
        if waiting <= 0:
            continue
        pressure = _pressure(waiting, free, row["capacity"] - row["reserve"])
        findings.append(
            {
                "kind": "resource",
                "name": name,
                "pressure": pressure,
                "figures": {**row, "p95_wait_s": p95, "oldest_wait_s": oldest},
                "message": (
                    f"{name}: {format_amount(name, row['granted'])} of "
                    f"{format_amount(name, row['grantable'])} granted, "
                    f"{format_amount(name, waiting)} waiting, p95 wait {_fmt_wait(p95)}"
                ),
                "recommendation": (
                    f"add nodes with more {name}, or lower the {name} asked per request"
                    if name in BYTE_RESOURCES or name in ("cpu", "gpu")
                    else f"raise {name}"
                ),
            }
        )
    for name, pool in snap["pools"].items():
        if pool["waiting"] <= 0:
            continue
        findings.append(
            {
                "kind": "pool",
                "name": name,
                "pressure": _pressure(pool["waiting"], max(0, pool["free"]), pool["size"]),
                "figures": {**pool, "p95_wait_s": p95, "oldest_wait_s": oldest},
                "message": (
                    f"{name} pool: {pool['in_use']}/{pool['size']} in use, "
                    f"{pool['waiting']} waiting, p95 wait {_fmt_wait(p95)}"
                ),
                "recommendation": "raise the pool size or lower concurrency",
            }
        )
    for name, tenant in snap["tenants"].items():
        limit = tenant.get("limit") or {}
        at_cap = [
            r
            for r, used in tenant["usage"].items()
            if r in limit and used >= limit[r] and tenant["waiting"].get(r)
        ]
        for resource in at_cap:
            findings.append(
                {
                    "kind": "tenant",
                    "name": name,
                    "pressure": float(tenant["waiting"][resource]) / max(limit[resource], 1),
                    "figures": {"resource": resource, **tenant},
                    "message": (
                        f"tenant {name}: at its hard limit of "
                        f"{format_amount(resource, limit[resource])} {resource} with "
                        f"{format_amount(resource, tenant['waiting'][resource])} more waiting"
                    ),
                    "recommendation": f"raise tenants.{name}.limit.{resource} or spread the work over time",
                }
            )
    for node_id, node in snap["nodes"].items():
        hot = [
            r
            for r, row in node["resources"].items()
            if row["grantable"] > 0 and row["granted"] / row["grantable"] >= HOT_UTILISATION
        ]
        if node["pressured"] or hot:
            findings.append(
                {
                    "kind": "node",
                    "name": node_id,
                    "pressure": 0.0,
                    "figures": {"pressured": node["pressured"], "hot": hot},
                    "message": (
                        f"node {node_id[:12]}: "
                        + ", ".join(
                            [f"{r} under measured pressure" for r in node["pressured"]]
                            + [f"{r} over {HOT_UTILISATION:.0%} granted" for r in hot]
                        )
                    ),
                    "recommendation": (
                        "it receives no new grants of that resource until use falls; "
                        "move work or add capacity"
                        if node["pressured"]
                        else "new work goes to other nodes first; add capacity if all are hot"
                    ),
                }
            )
    kinds = {"resource": 0, "pool": 0, "tenant": 1, "node": 2}
    findings.sort(key=lambda f: (kinds[f["kind"]], -f["pressure"]))
    return findings


def binding(findings: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The single most binding resource or pool, if work is waiting on one."""
    for finding in findings:
        if finding["kind"] in ("resource", "pool", "tenant"):
            return finding
    return None
