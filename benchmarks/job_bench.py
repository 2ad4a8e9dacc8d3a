"""What the job queue costs a job that fits at once: submit to running, against Ray's own.

One private Ray on 127.0.0.1 with its job server (the dashboard), 4 logical CPUs, the
coordinator deployed with the default policy. In interleaved rounds (so each figure
and its baseline see the same machine load), one job at a time, each ``python -c
'print(1)'``:

* ``ray``: ``JobSubmissionClient.submit_job`` directly (what ``ray job submit`` does);
* ``ray_env``: the same, with the runtime_env the queue gives every job (two env_vars:
  its budget and id), which Ray sets up for the job's own supervisor and driver;
* ``queue``: ``manager.submit_job(..., {"cpu": 0.1})`` through the queue (a ready
  supervisor actor takes the job and its lease, then submits it the ``ray_env`` way).

For each: seconds from the submit call until Ray's job server reports the job
RUNNING (its driver started), and until it SUCCEEDED. Medians over the jobs, and the
queue's extra seconds (median of per-round differences).

    .venv/bin/python benchmarks/job_bench.py --json benchmarks/results/job_bench.json
    .venv/bin/python benchmarks/job_bench.py --jobs 2        # smoke
"""

from __future__ import annotations

import os

# Before Ray is imported: bind the private Ray to 127.0.0.1, send no usage stats.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

import argparse
import json
import logging
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ray
from ray.job_submission import JobSubmissionClient
from rich.console import Console
from rich.table import Table

from anya_resource import SyncResourceManager
from anya_resource.core.jobs import BUDGET_ENV, JOB_ID_ENV
from anya_resource.jobs import dashboard_address
from benchtools import machine, on_loopback

ENTRYPOINT = f"{sys.executable} -c 'print(1)'"
ENDED = ("SUCCEEDED", "FAILED", "STOPPED")
POLL_S = 0.02


def follow(client: JobSubmissionClient, submission: str, sent: float) -> dict[str, float]:
    """Seconds from ``sent`` until the job was RUNNING and until it ended."""
    running = None
    while True:
        status = str(getattr(client.get_job_status(submission), "value", ""))
        now = time.perf_counter()
        if running is None and status in ("RUNNING", *ENDED):
            running = now - sent
        if status in ENDED:
            if status != "SUCCEEDED":
                raise RuntimeError(f"{submission} ended {status}")
            return {"running_s": running or now - sent, "ended_s": now - sent}
        time.sleep(POLL_S)


def through_ray(client: JobSubmissionClient, _: SyncResourceManager) -> dict[str, float]:
    sent = time.perf_counter()
    submission = client.submit_job(
        entrypoint=ENTRYPOINT, submission_id=f"plain-{uuid.uuid4().hex[:8]}"
    )
    return follow(client, submission, sent)


def through_ray_env(client: JobSubmissionClient, _: SyncResourceManager) -> dict[str, float]:
    """As the queue submits: with the budget's env_vars in the runtime_env."""
    sent = time.perf_counter()
    submission = client.submit_job(
        entrypoint=ENTRYPOINT,
        submission_id=f"env-{uuid.uuid4().hex[:8]}",
        runtime_env={"env_vars": {BUDGET_ENV: "none:none", JOB_ID_ENV: "none"}},
    )
    return follow(client, submission, sent)


def through_queue(client: JobSubmissionClient, manager: SyncResourceManager) -> dict[str, float]:
    sent = time.perf_counter()
    job_id = manager.submit_job(ENTRYPOINT, {"cpu": 0.1})
    while True:  # Ray's job server knows it once its supervisor has submitted it
        try:
            client.get_job_status(job_id)
            break
        except RuntimeError:
            time.sleep(POLL_S)
    figures = follow(client, job_id, sent)
    manager.wait_job(job_id, timeout=60)  # its supervisor has given the lease back (untimed)
    return figures


Way = Callable[[JobSubmissionClient, SyncResourceManager], dict[str, float]]
WAYS: dict[str, Way] = {"ray": through_ray, "ray_env": through_ray_env, "queue": through_queue}


def bench(jobs: int) -> dict[str, Any]:
    info = machine()
    ray.init(
        address="local",
        num_cpus=4,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        logging_level=logging.ERROR,
        log_to_driver=False,
    )
    try:
        on_loopback()
        manager = SyncResourceManager.connect()
        client = JobSubmissionClient("http://" + dashboard_address())
        for way in WAYS.values():  # warm-up: the job server's first job is slow
            way(client, manager)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in WAYS}
        for index in range(jobs):
            order = list(WAYS) if index % 2 == 0 else list(reversed(WAYS))
            for name in order:
                runs[name].append(WAYS[name](client, manager))
        leases_left = manager.snapshot()["leases"]
        manager.close()
    finally:
        ray.shutdown()
    info["loadavg_end"] = list(os.getloadavg())
    figures = {
        name: {
            "running_s_median": statistics.median(r["running_s"] for r in rows),
            "ended_s_median": statistics.median(r["ended_s"] for r in rows),
            "runs": rows,
        }
        for name, rows in runs.items()
    }
    extra = [
        q["running_s"] - r["running_s"] for q, r in zip(runs["queue"], runs["ray"], strict=True)
    ]
    extra_env = [
        q["running_s"] - r["running_s"] for q, r in zip(runs["queue"], runs["ray_env"], strict=True)
    ]
    return {
        "machine": info,
        "config": {"jobs": jobs, "entrypoint": ENTRYPOINT, "budget": {"cpu": 0.1}},
        "ways": figures,
        "queue_extra_to_running_s_median": statistics.median(extra),
        "queue_extra_over_ray_env_s_median": statistics.median(extra_env),
        "leases_left": leases_left,
    }


def render(result: dict[str, Any], console: Console) -> None:
    table = Table(title="A job that fits at once: submit to running (median)")
    for column in ("way", "to RUNNING s", "to SUCCEEDED s"):
        table.add_column(column, justify="left" if column == "way" else "right")
    labels = {
        "ray": "JobSubmissionClient (ray job submit)",
        "ray_env": "the same, with the queue's env_vars",
        "queue": "anya-resource submit",
    }
    for name, row in result["ways"].items():
        table.add_row(
            labels[name], f"{row['running_s_median']:.2f}", f"{row['ended_s_median']:.2f}"
        )
    console.print(table)
    m = result["machine"]
    console.print(
        f"the queue adds {result['queue_extra_to_running_s_median']:.2f} s before the job "
        f"runs ({result['queue_extra_over_ray_env_s_median']:.2f} s over Ray's with the same "
        f"runtime_env); leases left {result['leases_left']}; {result['config']['jobs']} jobs each; "
        f"nproc {m['nproc']}, ray {m['ray']}, load {m['loadavg_start'][0]:.1f} -> "
        f"{m['loadavg_end'][0]:.1f}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10, help="jobs per way")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)
    console = Console()
    result = bench(args.jobs)
    render(result, console)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
        console.print(f"wrote {args.json}", style="dim")
    return 0


if __name__ == "__main__":
    sys.exit(main())
