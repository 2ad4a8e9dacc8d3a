"""Gang leases: what a gang costs the core, against one-node requests in the same run.

**Core** (no Ray): the simulator (``anya_resource.simulate``) on one synthetic cluster
(1,000 nodes of 16 CPUs and 64 GiB by default), twice with the same seed, arrival rate
and hold times: once with one-node requests only, once with the same mix where a
share of the arrivals are gangs of 1 to 8 bundles (alike, as distributed training asks,
and mixed, under each of Ray's four strategies). The figure is the CPU time of this
process per decision the core returned (grants, refusals, revocations, ends), and the
ratio of the gang run's to the one-node run's. Rounds alternate the two and the median
of each is kept, so a noisy machine hits both alike.

**Ray** (``--ray``): on a private 1 head + 3 worker ``ray.cluster_utils.Cluster`` of 2
CPUs each, bound to 127.0.0.1: the time to grant a 4-bundle STRICT_SPREAD gang that fits
(reserved in Ray before it is told) against a one-node lease reserved the same way, and
``acquire`` + ``release`` of a plain one-node lease (reserved at first use, the default)
against a raw Ray actor round trip; interleaved rounds, medians.

    .venv/bin/python benchmarks/gang_bench.py --json benchmarks/results/gang_bench.json
    .venv/bin/python benchmarks/gang_bench.py --quick
    .venv/bin/python benchmarks/gang_bench.py --ray --json benchmarks/results/gang_ray.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rich.console import Console
from rich.table import Table

from anya_resource.simulate import SimConfig, Simulation, parse_size

ONE_NODE = ["50:cpu=0.5,memory=1GiB", "30:cpu=2,memory=4GiB", "15:cpu=4,memory=16GiB"]
# The same demand, a fifth of each kind asked as a gang of 2 to 8 bundles of equal total
# (so both runs load the cluster alike and only the shape of the requests differs).
GANGS = [
    "40:cpu=0.5,memory=1GiB",
    "10:cpu=0.25,memory=512MiB,bundles=2,strategy=SPREAD",
    "24:cpu=2,memory=4GiB",
    "3:cpu=1,memory=2GiB,bundles=2,strategy=STRICT_PACK",
    "3:cpu=0.5,memory=1GiB,bundles=4,strategy=PACK",
    "12:cpu=4,memory=16GiB",
    "1.5:cpu=1,memory=4GiB,bundles=4,strategy=STRICT_SPREAD",
    "1.5:cpu=0.5,memory=2GiB,bundles=8,strategy=SPREAD",
]
HOLD_S = 2.0  # mean hold: the cluster reaches its steady state within the run
CPUS_PER_REQUEST = 1.53  # what the one-node mix asks on average (the gang mix alike)
# Offered load, as a share of the cluster's CPUs: busy, and more than it holds.
LOADS = {"busy": 0.8, "saturated": 1.5}


def core_run(sizes: list[str], nodes: int, rate: float, duration: float) -> dict[str, Any]:
    """One simulated run; CPU seconds of this process per decision the core returned."""
    config = SimConfig(
        nodes=nodes,
        rate=rate,
        duration=duration,
        hold_mean=HOLD_S,
        sizes=[parse_size(text) for text in sizes],
        check_every=0,
        bottleneck_samples=1,
        seed=7,
    )
    simulation = Simulation(config)
    started = time.process_time()
    summary = simulation.run()
    cpu = time.process_time() - started
    decisions = (
        simulation.grants
        + sum(simulation.rejections.values())
        + sum(simulation.reclaims.values())
        + simulation.revocations
    )
    return {
        "cpu_s": cpu,
        "decisions": decisions,
        "us_per_decision": cpu / max(1, decisions) * 1e6,
        "grants": summary.grants,
        "preemptions": summary.preemptions,
        "peak_waiting": summary.peak_waiting,
    }


def core_bench(nodes: int, duration: float, rounds: int) -> dict[str, Any]:
    points = []
    for load, share in LOADS.items():
        rate = round(share * nodes * 16 / (HOLD_S * CPUS_PER_REQUEST))
        plain: list[dict[str, Any]] = []
        gangs: list[dict[str, Any]] = []
        for _ in range(rounds):
            plain.append(core_run(ONE_NODE, nodes, rate, duration))
            gangs.append(core_run(GANGS, nodes, rate, duration))
        plain_us = statistics.median(r["us_per_decision"] for r in plain)
        gang_us = statistics.median(r["us_per_decision"] for r in gangs)
        points.append(
            {
                "load": load,
                "rate": rate,
                "one_node": plain,
                "gangs": gangs,
                "one_node_us_per_decision": plain_us,
                "gang_us_per_decision": gang_us,
                "ratio": gang_us / plain_us,
            }
        )
    return {
        "nodes": nodes,
        "duration": duration,
        "rounds": rounds,
        "points": points,
        "target_ratio_at_most": 2.0,
    }


def show_core(result: dict[str, Any], console: Console) -> None:
    table = Table(title=f"The core at {result['nodes']:,} nodes (medians of {result['rounds']})")
    for column in ("load", "mix", "µs/decision", "decisions", "preempted", "peak wait"):
        table.add_column(column, justify="left" if column in ("load", "mix") else "right")
    for point in result["points"]:
        for name, key in (("one-node", "one_node"), ("with gangs", "gangs")):
            runs = point[key]
            middle = sorted(runs, key=lambda r: r["us_per_decision"])[len(runs) // 2]
            table.add_row(
                f"{point['load']} ({point['rate']:g}/s)" if key == "one_node" else "",
                name,
                f"{middle['us_per_decision']:.0f}",
                f"{middle['decisions']:,}",
                f"{middle['preemptions']:,}",
                f"{middle['peak_waiting']:,}",
            )
    console.print(table)
    for point in result["points"]:
        console.print(
            f"{point['load']}: gang mix / one-node = [bold]{point['ratio']:.2f}x[/bold] per "
            f"decision (target at most {result['target_ratio_at_most']:g}x)"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="100 nodes, 1 round")
    parser.add_argument("--ray", action="store_true", help="the Ray part (a private cluster)")
    parser.add_argument("--json", type=Path, help="save the figures here")
    args = parser.parse_args(argv)
    console = Console(width=80)
    figures: dict[str, Any] = {}
    if args.quick:
        args.nodes, args.rounds, args.duration = 100, 1, 2.0
    if args.ray:
        from gang_ray import ray_bench, show_ray

        figures["ray"] = ray_bench(quick=args.quick)
        show_ray(figures["ray"], console)
    else:
        figures["core"] = core_bench(args.nodes, args.duration, args.rounds)
        show_core(figures["core"], console)
    if args.json is not None:
        from benchtools import machine

        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine(), **figures}, indent=2) + "\n")
        console.print(f"saved {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
