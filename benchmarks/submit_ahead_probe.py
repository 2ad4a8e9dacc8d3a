"""What submitting ``@leased`` tasks ahead into their lease's bundle buys, and costs.

For each depth (the policy's ``lease.submit_ahead``) a private Ray on 127.0.0.1 (one node
of 8 logical CPUs, a custom resource ``pg4`` of 4 units), in a process of its own, with
the manager deployed with a pool ``pg4`` of 4 slots. Three ways to run no-op tasks at
most 4 at once, each asking Ray for 1 CPU:

* ``ray_cap``: Ray's own cap, ``.options(resources={"pg4": 1})``;
* ``ray_pg``: Ray alone, tasks round-robin into 4 placement groups of ``{"CPU": 1}``
  made for the run (what a lease's bundle is to Ray, with no lease at all);
* ``leased``: ``@leased(pools={"pg4": 1}, cpu=1)``, whose leases hold the task's CPU,
  are reserved in Ray and carry up to ``depth`` tasks each;
* ``leased_slots``: ``@leased(pools={"pg4": 1})``: leases of a slot only, nothing
  reserved in Ray, one task at a time, the task placed by Ray (1 CPU).

Two figures per way, tasks/s: *steady*, ``--n`` tasks submitted at once, three times
back to back (the median); *burst*, ``--burst`` tasks after ``--gap`` s idle (the
leases have gone back, a new group per lease), over ``--rounds`` rounds (the median).
For each burst it also counts the worker processes Ray started meanwhile (a task queued
behind another is backlog to the raylet, which starts a spare worker for it while the
node has CPUs free; on a machine with fewer cores than logical CPUs that start takes a
core from the tasks). Printed as a table; ``--json`` saves every figure.

    .venv/bin/python benchmarks/submit_ahead_probe.py --json benchmarks/results/submit_ahead_probe.json
    .venv/bin/python benchmarks/submit_ahead_probe.py --depths 1,2 --rounds 2   # quicker
"""

from __future__ import annotations

import os

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

import argparse
import json
import logging
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table

from benchtools import machine, on_loopback

WAYS = ("ray_cap", "ray_pg", "leased", "leased_slots")
LABELS = {
    "ray_cap": "Ray's cap",
    "ray_pg": "Ray, 4 groups",
    "leased": "@leased",
    "leased_slots": "@leased, slots",
}
CAP = 4


def noop() -> None:
    return None


def workers_now() -> set[int]:
    """The pids of this machine's Ray worker processes now."""
    found = set()
    for proc in psutil.process_iter(["cmdline", "name"]):
        try:
            line = " ".join(proc.info["cmdline"] or [])
            if "default_worker.py" in line or (proc.info["name"] or "").startswith("ray::"):
                found.add(proc.pid)
        except psutil.Error:
            continue
    return found


def rate(submit: Callable[[], Any], n: int) -> float:
    import ray

    began = time.perf_counter()
    ray.get([submit() for _ in range(n)])
    return n / (time.perf_counter() - began)


def run_depth(depth: int, settings: dict[str, Any]) -> dict[str, Any]:
    """One Ray instance, the manager deployed with ``submit_ahead=depth``: every figure."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from anya_resource import SyncResourceManager, leased

    ray.init(
        num_cpus=8,
        resources={"pg4": CAP},
        include_dashboard=False,
        logging_level=logging.ERROR,
        log_to_driver=False,
    )
    try:
        on_loopback()
        policy = {"pools": {"pg4": {"size": CAP}}, "lease": {"submit_ahead": depth}}
        manager = SyncResourceManager.connect(policy=policy)
        time.sleep(2.0)  # the agent's first heartbeat
        plain = ray.remote(num_cpus=1)(noop)
        capped = plain.options(resources={"pg4": 1})
        task = leased(pools={"pg4": 1}, cpu=1, max_retries=0)(noop)
        slots = leased(pools={"pg4": 1}, max_retries=0)(noop)

        def with_groups(run: Callable[[Callable[[], Any]], float]) -> float:
            groups = [placement_group([{"CPU": 1}]) for _ in range(CAP)]
            ray.get([g.ready() for g in groups])
            placed = [
                plain.options(
                    scheduling_strategy=PlacementGroupSchedulingStrategy(
                        placement_group=g, placement_group_bundle_index=0
                    )
                )
                for g in groups
            ]
            turn = iter(range(10**9))
            try:
                return run(lambda: placed[next(turn) % CAP].remote())
            finally:
                for g in groups:
                    remove_placement_group(g)

        submitters: dict[str, Callable[[Callable[[Callable[[], Any]], float]], float]] = {
            "ray_cap": lambda run: run(capped.remote),
            "ray_pg": with_groups,
            "leased": lambda run: run(task.remote),
            "leased_slots": lambda run: run(slots.remote),
        }
        out: dict[str, Any] = {}
        for way, make in submitters.items():
            make(lambda submit: rate(submit, 200))  # warm: this job's workers are up
            steady = [make(lambda submit: rate(submit, settings["n"])) for _ in range(3)]
            bursts, started = [], []
            for _ in range(settings["rounds"]):
                time.sleep(settings["gap"])
                before = workers_now()
                bursts.append(make(lambda submit: rate(submit, settings["burst"])))
                started.append(len(workers_now() - before))
            out[way] = {
                "steady_per_s": statistics.median(steady),
                "steady_runs": steady,
                "burst_per_s": statistics.median(bursts),
                "burst_runs": bursts,
                "workers_started_per_burst": statistics.median(started),
            }
        manager.close()
        return out
    finally:
        ray.shutdown()


def child(depth: int, settings: dict[str, Any]) -> dict[str, Any]:
    """``run_depth`` in a process of its own (its own Ray), its figures as JSON."""
    done = subprocess.run(
        [sys.executable, __file__, "--one", str(depth), "--settings", json.dumps(settings)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"error": (done.stderr or done.stdout)[-2000:]}
    figures: dict[str, Any] = json.loads(lines[-1])
    return figures


def render(result: dict[str, Any], console: Console) -> None:
    table = Table(title="No-op tasks, at most 4 at once: tasks/s (x Ray's cap, same run)")
    for column in ("depth", "way", "steady", "x", "burst", "x", "workers/burst"):
        table.add_column(column, justify="left" if column in ("depth", "way") else "right")
    for depth, figures in result["depths"].items():
        if "error" in figures:
            table.add_row(depth, "error", "-", "-", "-", "-", "-")
            continue
        base = figures["ray_cap"]
        for way in WAYS:
            row = figures[way]
            table.add_row(
                depth,
                LABELS[way],
                f"{row['steady_per_s']:,.0f}",
                f"{row['steady_per_s'] / base['steady_per_s']:.2f}",
                f"{row['burst_per_s']:,.0f}",
                f"{row['burst_per_s'] / base['burst_per_s']:.2f}",
                f"{row['workers_started_per_burst']:.0f}",
            )
    console.print(table)
    m = result["machine"]
    console.print(
        f"steady: {result['settings']['n']} tasks x3; burst: {result['settings']['burst']} "
        f"tasks after {result['settings']['gap']} s idle x{result['settings']['rounds']}; "
        f"nproc {m['nproc']}, load {m['loadavg_start'][0]:.1f} -> {m['loadavg_end'][0]:.1f}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--depths", default="1,2,4", help="submit_ahead depths, comma-separated")
    parser.add_argument("--n", type=int, default=1000, help="tasks per steady run")
    parser.add_argument("--burst", type=int, default=300, help="tasks per burst")
    parser.add_argument("--gap", type=float, default=3.0, help="s idle before each burst")
    parser.add_argument("--rounds", type=int, default=3, help="bursts per way")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one is not None:
        print(json.dumps(run_depth(args.one, json.loads(args.settings))))
        return 0
    settings = {"n": args.n, "burst": args.burst, "gap": args.gap, "rounds": args.rounds}
    console = Console(width=None if sys.stdout.isatty() else 100)
    info = machine()
    depths = [int(d) for d in args.depths.split(",") if d.strip()]
    figures: dict[str, Any] = {}
    for depth in depths:
        console.print(f" depth {depth} ...", style="dim")
        figures[str(depth)] = child(depth, settings)
    info["loadavg_end"] = list(os.getloadavg())
    result = {"machine": info, "settings": settings, "depths": figures}
    render(result, console)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        console.print(f"wrote {args.json}", style="dim")
    return 1 if any("error" in f for f in figures.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
