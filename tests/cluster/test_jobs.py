"""Whole Ray jobs on leases, on a 1 head + 3 worker ``ray.cluster_utils.Cluster`` with
Ray's job server (the dashboard, on 127.0.0.1): the queue's order, a job's lease given
back however it ends, cancel, preemption with requeue, a coordinator restart, the CLI.

A pool ``gate`` of one slot makes the order plain: every job asks for it, so one runs
at a time. The jobs' command lines are this interpreter with ``-c``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray

from anya_resource import Infeasible, InvalidRequest, SyncResourceManager
from anya_resource.actors import deploy
from tests.raytools import GiB, local_cluster

pytestmark = [pytest.mark.ray, pytest.mark.cluster]

POLICY = {
    "heartbeat_s": 0.3,
    "reserve": {"memory": 0, "cpu": 0},
    "lease": {"preemption_grace_s": 1.0},
    "pools": {"gate": {"size": 1, "kind": "slot"}, "rpc": {"size": 8, "kind": "slot"}},
}
GATE = {"pools": {"gate": 1}}
PY = sys.executable


def command(code: str) -> str:
    return f"{PY} -c {json.dumps(code)}"


@pytest.fixture(scope="module")
def manager() -> Iterator[SyncResourceManager]:
    with local_cluster(workers=3, cpus=1, memory=2 * GiB, dashboard=True) as cluster:
        os.environ["RAY_ADDRESS"] = cluster.address  # for the CLI's processes
        try:
            sync = SyncResourceManager.connect(policy=POLICY)
            yield sync
            sync.close()
        finally:
            os.environ.pop("RAY_ADDRESS", None)


def long_first_attempt(marker: Path) -> str:
    """A job whose first attempt runs a minute (it leaves ``marker``); later ones end at once."""
    code = (
        "import os, time; p = " + repr(str(marker)) + "; first = not os.path.exists(p); "
        "open(p, 'w').close(); time.sleep(60 if first else 0)"
    )
    return command(code)


def gate_free(manager: SyncResourceManager, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if manager.snapshot()["pools"]["gate"]["in_use"] == 0:
            return
        time.sleep(0.1)
    raise AssertionError(f"the gate is still held: {manager.leases()}")


def wait_running(manager: SyncResourceManager, job: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if {r["job_id"]: r for r in manager.jobs()}[job]["state"] == "running":
            return
        time.sleep(0.1)
    raise AssertionError(f"{job} is not running: {manager.jobs()}")


def test_jobs_start_in_priority_order_and_give_their_lease_back(
    manager: SyncResourceManager,
) -> None:
    blocker = manager.submit_job(command("import time; time.sleep(3)"), GATE, priority="low")
    deadline = time.monotonic() + 60
    while manager.snapshot()["pools"]["gate"]["in_use"] == 0 and time.monotonic() < deadline:
        time.sleep(0.1)  # the blocker holds the gate
    ids = {
        priority: manager.submit_job(command("print('hello')"), GATE, priority=priority)
        for priority in ("low", "normal", "high")
    }
    queued = {row["job_id"]: row for row in manager.jobs()}
    assert all(queued[job]["state"] == "queued" for job in ids.values())
    results = {p: manager.wait_job(job, timeout=120) for p, job in ids.items()}
    assert manager.wait_job(blocker, timeout=60)["state"] == "succeeded"
    assert all(r["state"] == "succeeded" and r["attempts"] == 1 for r in results.values())
    starts = [results[p]["started_at"] for p in ("high", "normal", "low")]
    assert starts == sorted(starts), results
    # Each started (got its lease) within a heartbeat of the gate coming free: the one
    # before it ended (and gave the gate back at once); generous for a loaded machine.
    ended = [manager.wait_job(blocker)["ended_at"]] + [
        results[p]["ended_at"] for p in ("high", "normal")
    ]
    gaps = [start - end for start, end in zip(starts, ended, strict=True)]
    assert all(0 <= gap <= 3 * POLICY["heartbeat_s"] for gap in gaps), gaps
    gate_free(manager)


def test_a_ready_supervisor_takes_the_next_job_and_one_more_is_made_ready(
    manager: SyncResourceManager,
) -> None:
    """A job that fits at once starts no supervisor process: a ready one takes it (its
    record names it), and the next one is started, ready for the job after."""
    from anya_resource.actors import store
    from anya_resource.jobs import SPARE_PREFIX, load, supervisor

    def ready() -> list[str]:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            listed = store.spares()
            if listed:
                return listed
            time.sleep(0.1)
        raise AssertionError("no ready supervisor was listed")

    manager.submit_job(command("print(1)"), GATE)  # makes one ready if none was
    listed = ready()
    job = manager.submit_job(command("print(2)"), GATE)
    record = load(job)
    assert record is not None and record.supervisor_name in listed
    assert record.supervisor_name.startswith(SPARE_PREFIX)
    assert supervisor(job) is not None  # found by the name its record gives
    assert manager.wait_job(job, timeout=120)["state"] == "succeeded"
    again = ready()
    assert record.supervisor_name not in again  # claimed once, never listed again
    assert len(again) <= 2
    gate_free(manager)


def test_bad_jobs_are_refused_or_fail_with_rays_reason(manager: SyncResourceManager) -> None:
    with pytest.raises(Infeasible, match="gate"):
        manager.submit_job(command("print(1)"), {"pools": {"gate": 2}})
    with pytest.raises(InvalidRequest, match="entrypoint"):
        manager.submit_job("python -c 'print(1)'\x00", GATE)
    with pytest.raises(InvalidRequest, match="entrypoint"):
        manager.submit_job("   ", GATE)
    with pytest.raises(InvalidRequest, match="no such job"):
        manager.cancel_job("anya-job-nonexistent")
    bad_dir = manager.submit_job(command("print(1)"), GATE, working_dir="/nonexistent/dir")
    failed = manager.wait_job(bad_dir, timeout=60)
    assert failed["state"] == "failed" and "/nonexistent/dir" in failed["message"]
    assert "\n" not in failed["message"]
    crash = manager.submit_job(command("raise SystemExit(3)"), GATE)
    assert manager.wait_job(crash, timeout=60)["state"] == "failed"
    gate_free(manager)


def test_cancel_a_queued_and_a_running_job(manager: SyncResourceManager) -> None:
    running = manager.submit_job(command("import time; time.sleep(60)"), GATE)
    wait_running(manager, running)
    queued = manager.submit_job(command("print(1)"), GATE)
    assert manager.cancel_job(queued) == "queued"
    done = manager.wait_job(queued, timeout=30)
    assert done["state"] == "cancelled" and done["started_at"] is None
    assert manager.cancel_job(running) == "running"
    assert manager.wait_job(running, timeout=60)["state"] == "cancelled"
    gate_free(manager)


def test_a_preemptible_job_is_stopped_for_a_higher_one_and_requeued(
    manager: SyncResourceManager, tmp_path: Path
) -> None:
    marker = tmp_path / "ran-once"
    low = manager.submit_job(
        long_first_attempt(marker), GATE, priority="low", preemptible=True, requeue=True
    )
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    high = manager.submit_job(command("print('urgent')"), GATE, priority="critical")
    urgent = manager.wait_job(high, timeout=120)
    assert urgent["state"] == "succeeded"
    again = manager.wait_job(low, timeout=120)
    assert again["state"] == "succeeded" and again["attempts"] == 2
    assert urgent["started_at"] < again["ended_at"]
    gate_free(manager)


def test_a_job_whose_supervisor_dies_is_stopped_and_requeued_or_failed(
    manager: SyncResourceManager, tmp_path: Path
) -> None:
    """Its lease goes with the supervisor's process: the job cannot go on unbudgeted."""
    from anya_resource.jobs import supervisor

    again = manager.submit_job(long_first_attempt(tmp_path / "ran-once"), GATE, requeue=True)
    wait_running(manager, again)
    ray.kill(supervisor(again), no_restart=False)
    result = manager.wait_job(again, timeout=120)
    assert result["state"] == "succeeded" and result["attempts"] == 2, result
    once = manager.submit_job(command("import time; time.sleep(60)"), GATE)
    wait_running(manager, once)
    ray.kill(supervisor(once), no_restart=False)
    result = manager.wait_job(once, timeout=120)
    assert result["state"] == "failed" and "supervisor died" in result["message"], result
    gate_free(manager)


def test_a_coordinator_restart_loses_no_job_and_starts_none_twice(
    manager: SyncResourceManager,
) -> None:
    running = manager.submit_job(command("import time; time.sleep(4)"), GATE)
    wait_running(manager, running)
    queued = manager.submit_job(command("print(1)"), GATE, priority="high")
    for _ in range(3):  # killed again while it is still recovering, and once more
        ray.kill(deploy.coordinator(), no_restart=False)
        time.sleep(1.0)
    for job in (running, queued):
        result = manager.wait_job(job, timeout=120)
        assert result["state"] == "succeeded" and result["attempts"] == 1, result
    from ray.job_submission import JobSubmissionClient

    from anya_resource.jobs import dashboard_address

    client = JobSubmissionClient("http://" + dashboard_address())
    submitted = [j.submission_id for j in client.list_jobs()]
    assert submitted.count(running) == 1 and submitted.count(queued) == 1
    gate_free(manager)


# A job that leases from inside: six @leased tasks of half a core each, on a budget of
# one core, and acquires past its budget. It writes what it saw to the file it is given.
CAPPED_JOB = """
import json, os, sys, time
import ray
from anya_resource import AcquireTimeout, Infeasible, SyncResourceManager, leased

ray.init()

@leased(cpu=0.5)
def work(i):
    start = time.time()
    time.sleep(1.0)
    return start, time.time()

spans = ray.get([work.remote(i) for i in range(6)])
edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
running = most = 0
for _, step in edges:
    running += step
    most = max(most, running)
seen = {"most_at_once": most, "tasks": len(spans)}
manager = SyncResourceManager.connect()
try:
    manager.acquire({"cpu": 2})
    seen["past_budget"] = "granted"
except Infeasible as exc:
    seen["past_budget"] = str(exc)
with manager.acquire({"cpu": 1, "pools": {"rpc": 2}}) as lease:
    seen["within"] = lease.within
    try:
        manager.acquire({"cpu": 0.5}, timeout=0.5)
        seen["when_full"] = "granted"
    except AcquireTimeout:
        seen["when_full"] = "waited"
    views = manager.budgets()
    seen["used"] = views[lease.within]["used"]
seen["job_id"] = os.environ.get("ANYA_RESOURCE_JOB_ID")
with open(sys.argv[1], "w") as out:
    json.dump(seen, out)
"""


def test_a_jobs_leases_are_drawn_from_its_budget_and_never_exceed_it(
    manager: SyncResourceManager, tmp_path: Path
) -> None:
    script = tmp_path / "capped.py"
    script.write_text(CAPPED_JOB)
    out = tmp_path / "seen.json"
    job = manager.submit_job([PY, str(script), str(out)], {"cpu": 1, "pools": {"rpc": 2}})
    result = manager.wait_job(job, timeout=180)
    assert result["state"] == "succeeded", result
    seen = json.loads(out.read_text())
    assert seen["tasks"] == 6 and seen["most_at_once"] <= 2, seen  # 1 core / 0.5 each
    assert "holds 1 CPU; 2 CPUs were asked for" in seen["past_budget"]
    assert seen["within"] == result["lease_id"] and seen["when_full"] == "waited"
    assert seen["used"] == {"cpu": 1000, "rpc": 2} and seen["job_id"] == job
    assert manager.budgets() == {}  # the job's lease went back, and its budget with it
    assert not [lease for lease in manager.leases() if lease.get("within")]


ACROSS_NODES_JOB = """
import json, os, sys, time
import ray
from anya_resource import SyncResourceManager, leased

ray.init()

@leased(cpu=0.5)
def work(i):
    start = time.time()
    time.sleep(1.0)
    group = ray.util.get_current_placement_group()
    return ray.get_runtime_context().get_node_id(), start, time.time(), group.id.hex()

@ray.remote(num_cpus=1)
def plain():
    return ray.util.get_current_placement_group().id.hex()

spans = ray.get([work.remote(i) for i in range(12)])
manager = SyncResourceManager.connect()
strategy = manager.budget_scheduling_strategy()
seen = {
    "spans": spans,
    "plain_group": ray.get(plain.options(scheduling_strategy=strategy).remote()),
    "budget_group": manager.budget_placement_group().id.hex(),
}
with open(sys.argv[1], "w") as out:
    json.dump(seen, out)
"""


def most_at_once(spans: list[list[Any]]) -> int:
    edges = sorted([(s[1], 1) for s in spans] + [(s[2], -1) for s in spans])
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


def test_a_job_across_nodes_runs_its_leased_tasks_in_every_bundle_within_each(
    manager: SyncResourceManager, tmp_path: Path
) -> None:
    script = tmp_path / "across.py"
    script.write_text(ACROSS_NODES_JOB)
    out = tmp_path / "seen.json"
    job = manager.submit_job(
        [PY, str(script), str(out)], bundles=[{"cpu": 1}] * 2, strategy="STRICT_SPREAD"
    )
    result = manager.wait_job(job, timeout=240)
    assert result["state"] == "succeeded", result["message"]
    nodes = result["nodes"]
    assert len(nodes) == 2 and len(set(nodes)) == 2
    seen = json.loads(out.read_text())
    spans = seen["spans"]
    assert {span[0] for span in spans} == set(nodes)  # its tasks ran on both of its nodes
    assert {span[3] for span in spans} == {seen["budget_group"]}  # in its budget's group
    assert most_at_once(spans) <= 4  # 2 bundles of 1 CPU, 0.5 a task: never past it
    for node in nodes:  # and never past any one bundle
        assert most_at_once([span for span in spans if span[0] == node]) <= 2
    assert seen["plain_group"] == seen["budget_group"]  # its own plain work runs in it
    listed = {row["job_id"]: row for row in manager.jobs()}[job]
    assert listed["bundles"] == [{"cpu": 1}] * 2 and listed["strategy"] == "STRICT_SPREAD"
    assert manager.budgets() == {}
    assert not [lease for lease in manager.leases() if lease.get("within")]


def test_the_listing_shows_position_and_what_holds_a_job_back(
    manager: SyncResourceManager,
) -> None:
    running = manager.submit_job(command("import time; time.sleep(30)"), GATE)
    wait_running(manager, running)
    first = manager.submit_job(command("print(1)"), GATE, priority="high")
    second = manager.submit_job(command("print(2)"), GATE, priority="low")

    def listed() -> dict[str, dict[str, Any]]:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            rows = {r["job_id"]: r for r in manager.jobs()}
            if all(rows[j].get("position") for j in (first, second)):
                return rows
            time.sleep(0.2)
        raise AssertionError(f"no positions: {manager.jobs()}")

    rows = listed()
    assert (rows[first]["position"], rows[second]["position"]) == (1, 2)
    assert rows[first]["effective_priority"] > rows[second]["effective_priority"]
    assert "gate" in rows[first]["held_back_by"]
    assert rows[running]["use"] == {}  # it drew nothing from its budget
    table = cli("jobs")
    assert table.returncode == 0 and "1/2" in table.stdout and "gate" in table.stdout
    for job in (running, first, second):
        manager.cancel_job(job)
    gate_free(manager)


def test_what_if_for_a_job_names_the_jobs_it_would_stop(manager: SyncResourceManager) -> None:
    low = manager.submit_job(
        command("import time; time.sleep(60)"), GATE, priority="low", preemptible=True
    )
    wait_running(manager, low)
    dry = ["submit", "--pool", "gate=1", "--what-if", "--json"]
    urgent = cli(*dry, "--priority", "critical", "--", PY, "-c", "print(1)")
    assert urgent.returncode == 0, urgent.stderr
    answer = json.loads(urgent.stdout)
    assert answer["granted_after_preemption"] == 1 and answer["jobs_stopped"] == [low]
    polite = json.loads(cli(*dry, "--priority", "low", "--", PY, "-c", "print(1)").stdout)
    assert polite["would_wait"] == 1 and polite["jobs_stopped"] == []
    shown = cli("submit", "--pool", "gate=1", "--what-if", "--priority", "critical", "--", PY)
    assert shown.returncode == 0 and f"jobs it would stop: {low}" in shown.stdout
    assert {r["job_id"]: r for r in manager.jobs()}[low]["state"] == "running"  # nothing done
    manager.cancel_job(low)
    gate_free(manager)


def test_a_job_submitted_by_a_process_that_exits_keeps_its_lease(
    manager: SyncResourceManager,
) -> None:
    """The supervisor's lease is not the submitting process's job's: that job ends first."""
    submitted = cli("submit", "--pool", "gate=1", "--", PY, "-c", "import time; time.sleep(6)")
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip()
    wait_running(manager, job)
    time.sleep(3)  # the coordinator sees the CLI's Ray job end within a heartbeat or two
    row = {r["job_id"]: r for r in manager.jobs()}[job]
    assert row["state"] == "running"
    assert manager.snapshot()["pools"]["gate"]["in_use"] == 1, manager.leases()
    assert manager.wait_job(job, timeout=60)["state"] == "succeeded"
    gate_free(manager)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from anya_resource.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_the_command_line(manager: SyncResourceManager) -> None:
    done = cli(
        "submit", "--pool", "gate=1", "--priority", "high", "--wait", "--", PY, "-c", "print(7)"
    )
    assert done.returncode == 0, done.stderr
    assert "succeeded" in done.stdout
    failed = cli("submit", "--pool", "gate=1", "--wait", "--", PY, "-c", "raise SystemExit(1)")
    assert failed.returncode == 1 and "failed" in failed.stdout
    listed = cli("jobs", "--json")
    assert listed.returncode == 0, listed.stderr
    rows: list[dict[str, Any]] = json.loads(listed.stdout)
    assert {"job_id", "state", "priority", "waited_s", "resources"} <= set(rows[-1])
    table = cli("jobs")
    assert table.returncode == 0 and "Jobs:" in table.stdout
    unknown = cli("cancel", "anya-job-nonexistent")
    assert unknown.returncode == 2 and unknown.stderr.count("\n") == 1
    no_budget = cli("submit", "--", PY, "-c", "print(1)")
    assert no_budget.returncode == 2 and "budget" in no_budget.stderr
    across = cli(
        "submit", "--cpu", "1", "--bundles", "3", "--strategy", "STRICT_SPREAD", "--wait",
        "--", PY, "-c", "print(3)",
    )  # fmt: skip
    assert across.returncode == 0 and "succeeded" in across.stdout, across.stderr
    too_wide = cli("submit", "--cpu", "1", "--bundles", "5", "--strategy", "STRICT_SPREAD",
                   "--", PY, "-c", "print(5)")  # fmt: skip
    assert too_wide.returncode == 1 and "STRICT_SPREAD needs 5 nodes" in too_wide.stderr
    both = cli("submit", "--cpu", "1", "--bundle", "cpu=1", "--", PY, "-c", "print(1)")
    assert both.returncode == 2 and "--bundle" in both.stderr and both.stderr.count("\n") == 1
    jobs_table = cli("jobs")
    assert "3 x (cpu 1) STRICT_SPREAD" in jobs_table.stdout.replace("\n", " ") or (
        "3 x" in jobs_table.stdout
    )
    gate_free(manager)
