"""Rich renderings of results for the command line (tables only; no I/O here)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from anya_resource.messages import Snapshot
from anya_resource.quantities import format_amount, format_bytes
from anya_resource.simulate import SimSummary


def format_seconds(value: float | int | None) -> str:
    """A wait for a table cell: ``0.25 -> '250 ms'``, ``3.5 -> '3.50 s'``, None -> ``-``."""
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    return f"{value:.2f} s"


def _percent(fraction: float) -> str:
    return f"{fraction * 100:.1f} %"


def _counts(counts: dict[str, int]) -> str:
    if not counts:
        return "0"
    total = sum(counts.values())
    return f"{total} (" + ", ".join(f"{reason} {n}" for reason, n in counts.items()) + ")"


def simulation_overview(summary: SimSummary) -> Table:
    config = summary.config
    capacity = config.get("capacity_per_node", {})
    per_node = ", ".join(
        f"{resource} {format_amount(resource, amount)}"
        for resource, amount in capacity.items()
        if amount
    )
    table = Table(title="Simulation", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    rows = [
        ("cluster", f"{summary.nodes} nodes x ({per_node or 'nothing'})"),
        (
            "workload",
            f"{summary.rate:g}/s for {summary.duration:g} s, seed {summary.seed}, "
            f"hold mean {config.get('hold_mean', '-')} s, "
            f"{config.get('preemptible_share', 0):.0%} preemptible",
        ),
        ("submitted", str(summary.submitted)),
        ("grants", str(summary.grants)),
        ("rejections", _counts(summary.rejections)),
        ("preemptions", str(summary.preemptions)),
        ("waiting at end", f"{summary.still_waiting} (peak {summary.peak_waiting})"),
        ("held at end", str(summary.held_at_end)),
        (
            "invariant checks",
            f"{summary.invariant_checks} passed",
        ),
        ("run time", f"{summary.wall_seconds:.2f} s for {summary.events} events"),
    ]
    for what, value in rows:
        table.add_row(what, value)
    return table


def simulation_waits(summary: SimSummary) -> Table:
    table = Table(
        title="Waits per priority (granted, timed out, and still waiting: wait so far)",
        title_justify="left",
    )
    table.add_column("priority", style="bold")
    for column in ("granted", "rejected", "waiting", "mean", "p50", "p95", "p99"):
        table.add_column(column, justify="right")
    for name, row in summary.waits.items():
        table.add_row(
            name,
            str(row["granted"]),
            str(row["rejected"]),
            str(row["waiting"]),
            format_seconds(row["mean"]),
            format_seconds(row["p50"]),
            format_seconds(row["p95"]),
            format_seconds(row["p99"]),
        )
    return table


def simulation_utilisation(summary: SimSummary) -> Table:
    table = Table(title="Utilisation", title_justify="left")
    table.add_column("resource", style="bold")
    table.add_column("granted / grantable, time-weighted", justify="right")
    for resource, fraction in summary.utilisation.items():
        table.add_row(resource, _percent(fraction))
    for pool, fraction in summary.pool_utilisation.items():
        table.add_row(f"pool {pool}", _percent(fraction))
    return table


def bottleneck_text(bottleneck: dict[str, Any] | None) -> Text:
    if bottleneck is None:
        return Text("Bottleneck: none; nothing waited on a resource at the sampled moments.")
    text = Text("Bottleneck: ", style="bold")
    text.append(bottleneck["message"])
    text.append(
        f" (binding in {bottleneck['binding_in']} of {bottleneck['samples']} samples)\n",
        style="dim",
    )
    text.append("  -> " + bottleneck["recommendation"])
    return text


def render_simulation(summary: SimSummary) -> RenderableType:
    """The whole summary: overview, waits, utilisation and the bottleneck."""
    return Group(
        simulation_overview(summary),
        simulation_waits(summary),
        simulation_utilisation(summary),
        bottleneck_text(summary.bottleneck),
    )


# -- operator views: status, leases, what-if (``cli_ops``) -----------------------------


def _used(granted: int, grantable: int) -> Text:
    if grantable <= 0:
        return Text("-" if granted == 0 else "over", style="dim" if granted == 0 else "red")
    share = granted / grantable
    style = "red" if share >= 0.9 else "yellow" if share >= 0.7 else "green"
    return Text(f"{share * 100:.0f}%", style=style)


def _short(node_id: str | None) -> str:
    return (node_id or "-")[:12]


def _shown_resources(snapshot: Snapshot) -> list[str]:
    """Resources some node has (a cluster without GPUs gets no gpu rows)."""
    return [
        name
        for name, row in snapshot.get("resources", {}).items()
        if row.get("capacity", 0) > 0 or row.get("granted", 0) > 0 or row.get("waiting", 0) > 0
    ]


def _nodes_cell(lease: dict[str, Any]) -> str:
    """Where a lease holds: its node, or a gang's nodes (one row, every node)."""
    bundles = lease.get("bundles") or []
    nodes = list(dict.fromkeys(b["node_id"] for b in bundles))
    if len(bundles) <= 1:
        return _short(lease.get("node_id"))
    return f"{len(nodes)} nodes: " + ",".join(node[:6] for node in nodes)


def _lease_amounts(lease: dict[str, Any]) -> str:
    """What a lease holds: its amounts, or a gang's as N x its bundle when they are alike."""
    bundles = lease.get("bundles") or []
    pools = lease.get("pools", {})
    if len(bundles) > 1:
        first = bundles[0]["resources"]
        if all(b["resources"] == first for b in bundles):
            each = _amounts(first)
            return f"{len(bundles)} x ({each})" + (f", {_amounts({}, pools)}" if pools else "")
        return f"{len(bundles)} bundles: " + _amounts(lease.get("resources", {}), pools)
    return _amounts(lease.get("resources", {}), pools)


def _amounts(amounts: dict[str, Any], pools: dict[str, Any] | None = None) -> str:
    parts = [f"{r} {format_amount(r, a)}" for r, a in amounts.items() if a]
    parts += [f"{p} {n}" for p, n in (pools or {}).items() if n]
    return ", ".join(parts) or "-"


def status_overview(snapshot: Snapshot, health: dict[str, Any]) -> Text:
    queue = snapshot.get("queue", {})
    text = Text()
    if health.get("is_healthy"):
        text.append("healthy", style="bold green")
    else:
        text.append("UNHEALTHY", style="bold red")
    alive = sum(1 for node in snapshot.get("nodes", {}).values() if node.get("alive"))
    warm = snapshot.get("warm") or {}
    warm_text = f" ({warm.get('idle', 0)} warm idle)" if warm.get("idle") else ""
    text.append(
        f"  {alive} node(s), {snapshot.get('leases', 0)} lease(s){warm_text}, "
        f"{queue.get('waiting', 0)} waiting, epoch {snapshot.get('epoch', '-')}, "
        f"placement {snapshot.get('placement', '-')}\n  "
        f"memory {health.get('memory_usage_percent', 0.0):.0f} %, "
        f"cpu {health.get('cpu_percent', 0.0):.0f} % (busiest node)"
    )
    for reason in health.get("reasons", []):
        text.append("\n  - " + reason, style="red")
    return text


def _node_facts(node: dict[str, Any], sample: dict[str, Any] | None) -> list[str | Text]:
    """A node's address, measured use, heartbeat, leases and notes: one row of cells."""
    notes = [] if node.get("alive", True) else ["DOWN"]
    notes += [f"{r} pressure" for r in node.get("pressured", [])]
    note = Text(", ".join(notes) or "-", style="red" if notes else "dim")
    if sample is None:
        return ["-", "-", "-", Text("none yet", style="dim"), str(node.get("leases", 0)), note]
    missed = sample.get("missed_heartbeats") or 0
    beat = Text(f"{missed} missed", style="red") if missed else Text("ok", style="green")
    return [
        str(sample.get("address", "")),
        f"{sample['memory_percent']:.0f}%",
        f"{sample['cpu_percent']:.0f}%",
        beat,
        str(node.get("leases", 0)),
        note,
    ]


def _resource_cells(resource: str, row: dict[str, Any]) -> list[str | Text]:
    return [
        resource,
        format_amount(resource, row["capacity"]),
        format_amount(resource, row["reserve"]),
        format_amount(resource, row["grantable"]),
        format_amount(resource, row["granted"]),
        format_amount(resource, max(0, row["free"])),
        _used(row["granted"], row["grantable"]),
    ]


def _compact_table(title: str) -> Table:
    return Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        collapse_padding=True,
        pad_edge=False,
    )


def status_nodes(snapshot: Snapshot, health: dict[str, Any]) -> Table:
    """One row per node: address, measured memory and CPU (last heartbeat), beats, leases."""
    measured = {node["node_id"]: node for node in health.get("nodes", [])}
    table = _compact_table("Nodes")
    table.add_column("node", no_wrap=True, style="bold")
    table.add_column("address", no_wrap=True)
    for column in ("mem", "cpu"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("heartbeat", no_wrap=True)
    table.add_column("leases", justify="right", no_wrap=True)
    table.add_column("notes")
    for node_id, node in snapshot.get("nodes", {}).items():
        table.add_row(_short(node_id), *_node_facts(node, measured.get(node_id)))
    return table


def status_capacity(snapshot: Snapshot) -> Table:
    """One row per node and resource: capacity, reserve, grantable, granted, free, used."""
    table = _compact_table("Capacity")
    table.add_column("node", no_wrap=True)
    table.add_column("resource", no_wrap=True)
    for column in ("capacity", "reserve", "grantable", "granted", "free", "used"):
        table.add_column(column, justify="right", no_wrap=True)
    resources = _shown_resources(snapshot)
    for node_id, node in snapshot.get("nodes", {}).items():
        for index, resource in enumerate(resources):
            table.add_row(
                Text(_short(node_id), style="bold") if index == 0 else "",
                *_resource_cells(resource, node["resources"][resource]),
                end_section=index == len(resources) - 1,
            )
    for index, resource in enumerate(resources):
        row = snapshot["resources"][resource]
        table.add_row(
            Text("cluster", style="bold") if index == 0 else "", *_resource_cells(resource, row)
        )
    waiting = [
        f"{format_amount(r, snapshot['resources'][r]['waiting'])} {r}"
        for r in resources
        if snapshot["resources"][r].get("waiting")
    ]
    if waiting:
        table.caption = "waiting for: " + ", ".join(waiting)
        table.caption_justify = "left"
    return table


def status_pools(snapshot: Snapshot) -> Table:
    table = Table(title="Pools", title_justify="left")
    table.add_column("pool", style="bold")
    for column in ("size", "in use", "free", "waiting", "used"):
        table.add_column(column, justify="right")
    for name, pool in snapshot.get("pools", {}).items():
        table.add_row(
            name,
            str(pool["size"]),
            str(pool["in_use"]),
            str(max(0, pool["free"])),
            str(pool["waiting"]),
            _used(pool["in_use"], pool["size"]),
        )
    return table


def status_tenants(snapshot: Snapshot) -> Table:
    table = Table(title="Tenants", title_justify="left")
    table.add_column("tenant", style="bold")
    for column in ("using", "guaranteed", "limit", "waiting"):
        table.add_column(column)
    for name, tenant in snapshot.get("tenants", {}).items():
        table.add_row(
            name,
            _amounts(tenant.get("usage", {})),
            _amounts(tenant.get("guaranteed", {})),
            _amounts(tenant["limit"]) if tenant.get("limit") else "none",
            _amounts(tenant.get("waiting", {})),
        )
    return table


def status_queue(snapshot: Snapshot) -> Table:
    queue = snapshot.get("queue", {})
    waits = snapshot.get("waits", {})
    table = Table(title="Waits per priority", title_justify="left")
    table.add_column("priority", style="bold")
    for column in ("waiting now", "oldest", "granted after waiting", "p50", "p95", "p99"):
        table.add_column(column, justify="right")
    names = list(dict.fromkeys([*waits, *queue.get("by_priority", {})]))
    for name in names:
        row = waits.get(name, {})
        table.add_row(
            name,
            str(queue.get("by_priority", {}).get(name, 0)),
            format_seconds(queue.get("oldest_wait", {}).get(name)),
            str(row.get("count", 0)),
            format_seconds(row.get("p50")),
            format_seconds(row.get("p95")),
            format_seconds(row.get("p99")),
        )
    return table


def bottlenecks_text(findings: list[dict[str, Any]]) -> Text:
    if not findings:
        return Text("Bottlenecks: none; nothing is waiting and no node is hot.")
    text = Text("Bottlenecks", style="bold")
    for finding in findings:
        text.append(f"\n  {finding['kind']:<8} ", style="dim")
        text.append(finding["message"])
        text.append("\n           -> " + finding["recommendation"], style="cyan")
    return text


def render_status(snapshot: Snapshot, health: dict[str, Any]) -> RenderableType:
    """``anya-resource status``: health, nodes, pools, tenants, waits, bottlenecks."""
    parts: list[RenderableType] = [
        status_overview(snapshot, health),
        status_nodes(snapshot, health),
        status_capacity(snapshot),
    ]
    if snapshot.get("pools"):
        parts.append(status_pools(snapshot))
    if snapshot.get("tenants"):
        parts.append(status_tenants(snapshot))
    if snapshot.get("waits") or snapshot.get("queue", {}).get("by_priority"):
        parts.append(status_queue(snapshot))
    parts.append(bottlenecks_text(health.get("bottlenecks") or snapshot.get("bottlenecks", [])))
    return Group(*parts)


def _holder(holder: dict[str, Any]) -> str:
    where = f"pid {holder.get('pid')}" if holder.get("pid") is not None else "-"
    if holder.get("node_id"):
        where += f"@{_short(holder['node_id'])}"
    if holder.get("actor_id"):
        where += f"\nactor {holder['actor_id'][:12]}"
    elif holder.get("job_id"):
        where += f"\njob {holder['job_id']}"
    return where


def _expires(expires_at: float, now: float) -> str:
    left = expires_at - now
    return "expired" if left <= 0 else f"in {format_seconds(left)}"


WIDE = 110  # from this many columns on, the leases table also shows node and holder


def leases_table(
    leases: list[dict[str, Any]], now: float, title: str = "Leases", width: int = WIDE
) -> Table:
    """``anya-resource leases``: who holds what, where, until when.

    Below ``WIDE`` columns (an 80-column terminal) the node and holder columns are left
    out, so that every other one is shown whole (``--json`` has all of it).
    """
    wide = width >= WIDE
    table = _compact_table(title)
    table.add_column("lease", style="bold", no_wrap=True)
    table.add_column("tenant", no_wrap=True)
    table.add_column("priority", no_wrap=True)
    if wide:
        table.add_column("node", no_wrap=True)
    table.add_column("resources")
    if wide:
        table.add_column("holder")
    table.add_column("expires", justify="right", no_wrap=True)
    table.add_column("state", no_wrap=True)
    for lease in leases:
        state = lease.get("state", "")
        if lease.get("warm"):  # a warm lease: held by its process, idle or busy
            state += f", warm {lease['warm']}" if wide else f" ({lease['warm']})"
        if lease.get("preemptible"):
            state += ", preemptible" if wide else " (p)"
        cells: list[str] = [
            lease["lease_id"],
            lease.get("tenant", "-"),
            str(lease.get("priority", "-")),
        ]
        if wide:
            cells.append(_nodes_cell(lease))
        cells.append(_lease_amounts(lease))
        if wide:
            cells.append(_holder(lease.get("holder", {})))
        cells += [_expires(lease.get("expires_at", now), now), state]
        table.add_row(*cells)
    if not wide and any(lease.get("preemptible") for lease in leases):
        table.caption, table.caption_justify = "(p): preemptible", "left"
    return table


def render_what_if(
    result: Mapping[str, Any], request: str, now: float, width: int = WIDE
) -> RenderableType:
    """``anya-resource what-if``: how many would be granted now, where, preempting what."""
    requested = result["requested"]
    fits = result["granted_now"] + result["granted_after_preemption"]
    summary = Table(
        title=f"What if {requested} x ({request})", show_header=False, title_justify="left"
    )
    summary.add_column("what", style="bold")
    summary.add_column("value")
    if result.get("infeasible"):
        verdict = Text("none can ever be granted (infeasible)", style="red")
    elif result["granted_now"] == requested:
        verdict = Text("all fit now", style="green")
    elif fits == requested:
        verdict = Text(
            f"all fit, {result['granted_after_preemption']} only by preempting", style="yellow"
        )
    else:
        verdict = Text(f"{fits} of {requested} fit", style="yellow" if fits else "red")
    summary.add_row("verdict", verdict)
    if not result.get("infeasible"):  # else none is granted and none waits: it says why
        summary.add_row("granted at once", str(result["granted_now"]))
        summary.add_row("granted after preemption", str(result["granted_after_preemption"]))
        summary.add_row("would wait", str(result["would_wait"]))
    if result.get("nodes"):
        summary.add_row(
            "placed on",
            ", ".join(f"{_short(node)} x {n}" for node, n in result["nodes"].items()),
        )
    if result.get("infeasible"):
        summary.add_row("infeasible", Text(result["infeasible"], style="red"))
    if result.get("blocked_by"):
        summary.add_row("blocked by", result["blocked_by"])
    parts: list[RenderableType] = [summary]
    if result.get("preempted"):
        parts.append(
            leases_table(
                result["preempted"], now, title="Leases that would be preempted", width=width
            )
        )
    return Group(*parts)


def jobs_table(jobs: list[dict[str, Any]], now: float, width: int = WIDE) -> RenderableType:
    """``anya-resource jobs``: the queue, oldest first.

    A queued job shows its position, its effective priority (aging included) and what
    holds it back; a running one what its processes drew from its budget ("used/budget").
    Below ``WIDE`` columns the tenant and the notes leave the table and the notes follow
    it, one line per job, so that every cell is whole at 80 columns.
    """
    wide = width >= WIDE
    table = _compact_table(f"Jobs: {len(jobs)}")
    table.add_column("job", style="bold", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("priority", no_wrap=True)
    if wide:
        table.add_column("tenant", no_wrap=True)
    table.add_column("pos", justify="right", no_wrap=True)
    table.add_column("waited", justify="right", no_wrap=True)
    table.add_column("budget (used/budget)")
    if wide:
        table.add_column("note")
    notes: list[str] = []
    for job in jobs:
        short = str(job["job_id"]).removeprefix("anya-job-")
        priority = str(job.get("priority", "-"))
        if job.get("effective_priority") is not None:
            priority += f" ({job['effective_priority']:g})"
        position = f"{job['position']}/{job['waiting']}" if job.get("position") else "-"
        cells = [short, str(job.get("state", "-")), priority]
        if wide:
            cells.append(str(job.get("tenant") or "-"))
        cells += [position, format_seconds(job.get("waited_s")), _job_budget(job)]
        note = _job_note(job, now)
        if wide:
            cells.append(note)
        elif note:
            notes.append(f"{short}: {note}")
        table.add_row(*cells)
    if not notes:
        return table
    return Group(table, *(Text(line, overflow="fold") for line in notes))


def _job_budget(job: dict[str, Any]) -> str:
    """Its budget as asked for, with what is drawn from it when it runs ("1/2"); a job
    across nodes as "N x (its bundle)" and where the bundles went."""
    bundles = job.get("bundles")
    if bundles:
        first = bundles[0]
        alike = all(b == first for b in bundles)
        each = ", ".join(f"{name} {amount}" for name, amount in first.items())
        shown = f"{len(bundles)} x ({each})" if alike else f"{len(bundles)} bundles"
        shown += f" {job.get('strategy') or 'PACK'}"
        nodes = job.get("nodes")
        if nodes:
            shown += " on " + ",".join(node[:6] for node in dict.fromkeys(nodes))
        return shown
    asked = dict(job.get("resources", {}))
    asked.update(asked.pop("pools", None) or {})
    use = job.get("use")
    cells = []
    for name, amount in asked.items():
        if use is None:
            cells.append(f"{name} {amount}")
        else:
            drawn = use.get(name, 0)
            shown = format_bytes(drawn) if name in ("memory", "disk") else f"{drawn:g}"
            cells.append(f"{name} {shown}/{amount}")
    return ", ".join(cells) or "-"


def _job_note(job: dict[str, Any], now: float) -> str:
    """What holds a queued job back (and when it should start), else its message."""
    if job.get("state") != "queued":
        return str(job.get("message") or "")
    note = str(job.get("held_back_by") or job.get("message") or "")
    start_by = job.get("start_by")
    if start_by is not None:
        note += f"; starts in {format_seconds(max(0.0, start_by - now))} at the latest"
    return note
