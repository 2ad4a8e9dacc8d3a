"""Whole Ray jobs in the demo: three jobs queued by priority beside the task workload.

| job              | priority | budget | what it runs                                      |
|------------------|----------|--------|---------------------------------------------------|
| `nightly-report` | low      | 1 CPU  | 6 tasks of half a CPU, 0.5 s of hashing each      |
| `backfill`       | normal   | 1 CPU  | the same                                          |
| `hotfix-replay`  | high     | 1 CPU  | the same                                          |

They are submitted through the queue (``submit_job``) in that order, lowest first, while
the task workload keeps the cluster's CPU busy: so they wait, and start in priority
order as capacity comes free. Each job's driver runs this module: its ``@leased`` tasks
draw from the job's budget (``ANYA_RESOURCE_BUDGET``), at most two at once on one CPU.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from anya_resource.client import SyncResourceManager

TASKS = 6
TASK_SECONDS = 0.5
TASK_CPU = 0.5


@dataclass(frozen=True)
class DemoJob:
    name: str
    priority: str
    budget_cpu: float = 1.0

    def entrypoint(self) -> list[str]:
        return [sys.executable, "-m", __name__, str(TASKS), str(TASK_SECONDS)]


JOBS = (
    DemoJob("nightly-report", "low"),
    DemoJob("backfill", "normal"),
    DemoJob("hotfix-replay", "high"),
)


def submit_all(manager: SyncResourceManager) -> dict[str, str]:
    """Queue the demo's jobs, lowest priority first; job id -> its name."""
    submitted = {}
    for job in JOBS:
        job_id = manager.submit_job(
            job.entrypoint(), {"cpu": job.budget_cpu}, priority=job.priority, tenant="jobs"
        )
        submitted[job_id] = job.name
    return submitted


def report(rows: list[dict[str, Any]], names: dict[str, str]) -> list[dict[str, Any]]:
    """The demo's jobs as the final report shows them, in the order they started."""
    mine = [row for row in rows if row["job_id"] in names]
    mine.sort(key=lambda row: row["started_at"] or float("inf"))
    return [
        {
            "name": names[row["job_id"]],
            "job_id": row["job_id"],
            "priority": row["priority"],
            "state": row["state"],
            "attempts": row["attempts"],
            "waited_s": row["waited_s"],
            "ran_s": (
                None
                if row["started_at"] is None or row["ended_at"] is None
                else row["ended_at"] - row["started_at"]
            ),
            "tasks": TASKS if row["state"] == "succeeded" else 0,
        }
        for row in mine
    ]


def _hash_for(seconds: float) -> int:
    """CPU work: SHA-256 rounds for ``seconds`` (the kind a replay of blocks does)."""
    digest, rounds = b"anya", 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for _ in range(1000):
            digest = hashlib.sha256(digest).digest()
        rounds += 1000
    return rounds


def main(argv: list[str]) -> None:
    """A demo job's driver: ``TASKS`` leased tasks drawn from the job's budget."""
    import logging

    import ray

    from anya_resource.integrations import leased

    tasks, seconds = int(argv[0]), float(argv[1])
    # Joins the job's own cluster (Ray's job server sets RAY_ADDRESS): it starts no Ray.
    ray.init(address="auto", logging_level=logging.ERROR)

    def work(seconds: float) -> tuple[float, float, int]:
        start = time.time()
        rounds = _hash_for(seconds)
        return start, time.time(), rounds

    task = leased(cpu=TASK_CPU)(work)  # drawn from the job's budget (see the module)
    spans = ray.get([task.remote(seconds) for _ in range(tasks)])
    edges = sorted([(s, 1) for s, _, _ in spans] + [(e, -1) for _, e, _ in spans])
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    summary = {"tasks": len(spans), "most_at_once": most, "rounds": sum(r for *_, r in spans)}
    print(json.dumps(summary))


if __name__ == "__main__":
    main(sys.argv[1:])


__all__ = ["JOBS", "DemoJob", "report", "submit_all"]
