"""A scarce resource at scale: a GPU cycle where few nodes have GPUs, next to a cpu cycle.

On ``nodes`` nodes of which one in 200 has GPUs (at least one), it times
submit+grant+release cycles of ``{"gpu": 1}`` and of ``{"cpu": 1}`` in the pure core.
Placement walks only the nodes that have the scarcest resource asked for, so the GPU
cycle should cost about what the cpu cycle does, not grow with the nodes without GPUs.
CPU time of this process (``time.process_time``), best of 5 repeats.

    .venv/bin/python benchmarks/scarce_bench.py --json benchmarks/results/scarce_bench.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from anya_resource.config import Policy
from anya_resource.core import Grant, Scheduler, build_request

NODE_COUNTS = (10, 1_000)
GPU_EVERY = 200
CYCLES = 3_000
REPEATS = 5


def build(nodes: int, policy: Policy) -> Scheduler:
    scheduler = Scheduler(policy)
    for index in range(nodes):
        gpus = 8_000 if index % GPU_EVERY == 7 % min(GPU_EVERY, nodes) else 0
        capacity = {"memory": 64 * 2**30, "cpu": 32_000, "gpu": gpus, "disk": 0}
        scheduler.node_up(f"{index:056x}", capacity, 0.0)
    return scheduler


def us_per_cycle(scheduler: Scheduler, resources: dict[str, Any], policy: Policy) -> float:
    request = build_request(policy, resources, priority="normal", tenant="bench")
    best = float("inf")
    now = 1.0
    for _ in range(REPEATS):
        started = time.process_time()
        for _ in range(CYCLES):
            now += 1e-6
            _, decisions = scheduler.submit(request, now)
            grant = decisions[0]
            if not isinstance(grant, Grant):
                raise AssertionError(f"{resources} was not granted at once: {decisions}")
            scheduler.release(grant.lease.lease_id, grant.lease.token, now)
        best = min(best, (time.process_time() - started) / CYCLES * 1e6)
    return round(best, 1)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the figures here")
    args = parser.parse_args(argv)
    policy = Policy.from_dict({})
    rows = []
    for nodes in NODE_COUNTS:
        scheduler = build(nodes, policy)
        gpu_nodes = sum(1 for node in scheduler.nodes.values() if node.limit("gpu") > 0)
        rows.append(
            {
                "nodes": nodes,
                "gpu_nodes": gpu_nodes,
                "gpu_us_per_cycle": us_per_cycle(scheduler, {"gpu": 1}, policy),
                "cpu_us_per_cycle": us_per_cycle(scheduler, {"cpu": 1}, policy),
            }
        )
    table = Table(title="A scarce resource: µs per submit+grant+release cycle (best of 5)")
    for column in ("nodes", "GPU nodes", "gpu cycle µs", "cpu cycle µs"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*(f"{value:,}" for value in row.values()))
    Console().print(table)
    figures = {"benchmark": "scarce_bench", "cycles": CYCLES, "points": rows}
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
