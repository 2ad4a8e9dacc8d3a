"""Rich renderings of results for the command line (tables only; no I/O here)."""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from anya_resource.quantities import format_amount
from anya_resource.simulate import SimSummary


def _seconds(value: float | int | None) -> str:
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
            _seconds(row["mean"]),
            _seconds(row["p50"]),
            _seconds(row["p95"]),
            _seconds(row["p99"]),
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
