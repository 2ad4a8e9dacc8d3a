"""Load balancing by priority: waits per class and spread over equal nodes, saturated.

Starts a private 1 head + 3 worker ``ray.cluster_utils.Cluster`` on loopback (equal
nodes: 2 logical CPUs and 4 GiB each), deploys the manager with the workload
policy (no CPU reserve: 8 grantable CPUs), and runs the demo's mixed workload
(``anya_resource_demo.mix``) through ``@leased`` tasks: closed-loop clients
of three classes, ``high`` (transaction checks, 0.5 CPU), ``normal`` (ML
inference, 1 CPU) and ``low`` (block re-verification, 1 CPU), together asking
for 1.5x the cluster's CPU, so ``low`` work always waits. After a warm-up it
measures, over ``--duration`` seconds:

* the wait to grant per class, p50/p95/p99: from calling ``.remote`` until the
  task's body started (the client's whole acquire, round trips included, and the
  time a task submitted ahead waited in Ray behind another of its lease);
* the spread of granted work: CPU-seconds granted per node (CPU x time held,
  clipped to the measured period) and their coefficient of variation;
* grants per class in each whole 10 s window (starvation: a window without one).

Targets (issue 5): ``high`` p99 wait at most a fifth of ``low``'s; CV at most
0.2; every class granted in every 10 s window.

    .venv/bin/python benchmarks/balance_bench.py --json benchmarks/results/balance_bench.json
    .venv/bin/python benchmarks/balance_bench.py --quick      # 20 s measured, ~1.5 min in all
    .venv/bin/python benchmarks/balance_bench.py --flat       # baseline: one priority for all
"""

from __future__ import annotations

import os

# Before Ray is imported: bind the private Ray to 127.0.0.1, send no usage stats.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

import argparse
import dataclasses
import json
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil
import ray
from rich.console import Console
from rich.table import Table

from anya_resource import SyncResourceManager
from anya_resource.quantities import MILLI
from anya_resource_demo.cluster import (
    NodeShape,
    embedded_cluster,
    node_labels,
    wait_for_agents,
)
from anya_resource_demo.mix import POLICY, JobKind, default_mix, prepare_while_warming
from anya_resource_demo.runner import Plan, Runner, plan_mix
from anya_resource_demo.stats import (
    GrantRecord,
    coefficient_of_variation,
    cpu_seconds_by_node,
    grants_per_window,
    starved,
    waits_by_class,
)
from benchtools import on_loopback

NODES = 4  # 1 head + 3 workers
WINDOW_S = 10.0
TARGET_P99_RATIO = 0.2  # high's p99 wait / low's
TARGET_CV = 0.2
DRAIN_TIMEOUT_S = 60.0


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds run before measuring")
    parser.add_argument("--quick", action="store_true", help="20 s measured after a 5 s warm-up")
    parser.add_argument("--json", type=Path, help="write the figures as JSON to this file")
    parser.add_argument(
        "--flat",
        action="store_true",
        help="baseline: every class's leases ask for the same priority (normal); "
        "what the classes buy is the difference from a normal run",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup = 20.0, 5.0
    if args.duration < WINDOW_S or args.warmup < 0:
        parser.error(f"--duration must be at least {WINDOW_S:g} s and --warmup at least 0")
    return args


def mix(flat: bool) -> list[JobKind]:
    kinds = default_mix()
    if flat:
        kinds = [dataclasses.replace(kind, lease_priority="normal") for kind in kinds]
    return kinds


def run(duration: float, warmup: float, flat: bool, console: Console) -> dict[str, Any]:
    """Start the cluster, run the mix, measure; everything is shut down on return."""
    with embedded_cluster(NODES, NodeShape(cpus=2, memory=4 * 1024**3)):
        addresses = on_loopback()
        manager = SyncResourceManager.connect(policy=POLICY)
        try:
            labels = node_labels()
            wait_for_agents(manager, len(labels))
            payload = prepare_while_warming(list(labels))
            cpus = manager.snapshot()["resources"]["cpu"]["grantable"] / MILLI
            plans = plan_mix(mix(flat), cpus)
            runner = Runner(plans, payload)
            console.print(
                f"[dim]{len(labels)} nodes on {addresses}, {cpus:g} CPUs; "
                f"warm-up {warmup:g} s, then {duration:g} s measured[/dim]"
            )
            runner.start()
            time.sleep(warmup)
            start = time.time()
            time.sleep(duration)
            end = time.time()
            runner.stop()
            drained = runner.join(DRAIN_TIMEOUT_S)
            snap = manager.snapshot()
        finally:
            manager.close()
    figures = measure(plans, runner.snapshot(), start, end, list(labels))
    figures["setup"] = {
        "nodes": len(labels),
        "addresses": addresses,
        "cpus": cpus,
        "clients": {p.kind.priority: p.clients for p in plans},
        "lease_cpu": {p.kind.priority: p.kind.cpu for p in plans},
        "flat": flat,
        "warmup_s": warmup,
        "duration_s": round(end - start, 3),
        "drained": drained,
        "errors": dict(runner.errors),
        "coordinator_waits": snap.get("waits", {}),
        "preemptions": snap["counters"]["revoked"].get("preemption", 0),
    }
    return figures


def measure(
    plans: Sequence[Plan],
    records: Sequence[GrantRecord],
    start: float,
    end: float,
    nodes: list[str],
) -> dict[str, Any]:
    classes = [plan.kind.priority for plan in plans]
    # A wait counts if it ended (was granted) within the measured period.
    measured = [r for r in records if start <= r.granted < end]
    waits = waits_by_class(measured, classes)
    cpu_seconds = cpu_seconds_by_node(records, nodes, start, end)
    windows = grants_per_window(records, classes, start, end, WINDOW_S)
    high, low = waits["high"]["p99"], waits["low"]["p99"]
    ratio = high / low if isinstance(high, float) and isinstance(low, float) and low else None
    cv = coefficient_of_variation(list(cpu_seconds.values()))
    hungry = starved(windows)
    return {
        "waits": waits,
        "cpu_seconds_by_node": cpu_seconds,
        "cpu_seconds_cv": cv,
        "grants_per_window": windows,
        "starved_windows": hungry,
        "targets": {
            "high_p99_over_low_p99": {
                "value": ratio,
                "max": TARGET_P99_RATIO,
                "met": ratio is not None and ratio <= TARGET_P99_RATIO,
            },
            "cpu_seconds_cv": {
                "value": cv,
                "max": TARGET_CV,
                "met": cv is not None and cv <= TARGET_CV,
            },
            "no_class_starved": {"value": hungry, "met": not hungry and all(windows.values())},
        },
    }


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value * 1000:,.0f}"


def render(figures: dict[str, Any], console: Console) -> None:
    waits = Table(title="Wait to grant per class (ms), measured period", title_justify="left")
    waits.add_column("class")
    for column in ("clients", "grants", "p50", "p95", "p99", "grants per 10 s window"):
        waits.add_column(column, justify="right")
    setup = figures["setup"]
    for name, row in figures["waits"].items():
        waits.add_row(
            name,
            str(setup["clients"][name]),
            str(row["count"]),
            _ms(row["p50"]),
            _ms(row["p95"]),
            _ms(row["p99"]),
            " ".join(str(n) for n in figures["grants_per_window"][name]),
        )
    console.print(waits)
    nodes = Table(title="CPU-seconds granted per node", title_justify="left")
    nodes.add_column("node")
    nodes.add_column("CPU-s", justify="right")
    for node_id, seconds in figures["cpu_seconds_by_node"].items():
        nodes.add_row(node_id[:12], f"{seconds:.1f}")
    console.print(nodes)
    targets = Table(title="Targets", title_justify="left")
    for column in ("target", "value", "bound", "met"):
        targets.add_column(column)
    for name, row in figures["targets"].items():
        value = row["value"]
        shown = f"{value:.3f}" if isinstance(value, float) else str(value or "none starved")
        targets.add_row(
            name,
            shown,
            str(row.get("max", "-")),
            "[green]yes[/green]" if row["met"] else "[red]no[/red]",
        )
    console.print(targets)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    console = Console()
    started = time.time()
    load_at_start = list(os.getloadavg())
    figures = run(args.duration, args.warmup, args.flat, console)
    figures["machine"] = {
        "cpus": psutil.cpu_count(),
        "python": platform.python_version(),
        "ray": ray.__version__,
        "load_average_at_start": load_at_start,
        "load_average": list(os.getloadavg()),
        "wall_s": round(time.time() - started, 1),
    }
    render(figures, console)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if all(t["met"] for t in figures["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
