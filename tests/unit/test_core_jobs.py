"""Whole Ray jobs on leases: the record and its steps (core/jobs.py), pure."""

from __future__ import annotations

import itertools

import pytest

from anya_resource.core.jobs import (
    BUDGET_ENV,
    JOB_ID_ENV,
    JobRecord,
    JobState,
    after_preemption,
    after_ray_status,
    after_supervisor_lost,
    check_entrypoint,
    granted,
    job_runtime_env,
    listing_row,
    submitted,
)
from anya_resource.errors import InvalidRequest
from anya_resource.render import jobs_table
from tests.unit.test_cli_ops import _text

IDS = itertools.count()


def record(**fields: object) -> JobRecord:
    fields.setdefault("submitted_at", 0.0)
    fields.setdefault("resources", {"cpu": 1})
    return JobRecord(job_id=f"anya-job-{next(IDS)}", entrypoint="python run.py", **fields)  # type: ignore[arg-type]


def test_entrypoints_are_checked_and_words_stay_words() -> None:
    assert check_entrypoint("python run.py") == "python run.py"
    assert check_entrypoint(["python", "-c", "print(1)"]) == "python -c 'print(1)'"
    for bad in ("", "  ", None, 3, [], "a\x00b", "a\nb", "x" * 100_001):
        with pytest.raises(InvalidRequest, match="entrypoint"):
            check_entrypoint(bad)


def test_a_job_runs_ends_and_says_why() -> None:
    job = record()
    assert job.state is JobState.QUEUED and not job.ended
    granted(job, "lease-1", "node-a", now=10.0)
    assert job.state is JobState.STARTING and job.attempts == 1
    assert job.ray_submission_id == job.job_id
    submitted(job)
    assert not after_ray_status(job, "RUNNING", now=11.0)
    assert after_ray_status(job, "FAILED", now=12.0, why="exit code 1\nlast logs")
    assert job.state is JobState.FAILED and job.ended and job.ended_at == 12.0
    assert "\n" not in job.message and "exit code 1" in job.message


def test_preempted_jobs_requeue_as_a_new_attempt_or_end_stopped() -> None:
    again = record(requeue=True)
    granted(again, "lease-1", "n", now=1.0)
    assert after_preemption(again, now=2.0)
    assert again.state is JobState.QUEUED and again.lease_id is None
    granted(again, "lease-2", "n", now=3.0)
    assert again.attempts == 2 and again.ray_submission_id == f"{again.job_id}-2"
    assert again.started_at == 1.0  # when it first started
    once = record()
    granted(once, "lease-3", "n", now=1.0)
    assert not after_preemption(once, now=2.0)
    assert once.state is JobState.STOPPED and once.ended


def test_a_job_whose_supervisor_died_is_requeued_or_ends_failed() -> None:
    again = record(requeue=True)
    granted(again, "lease-1", "n", now=1.0)
    assert after_supervisor_lost(again, now=2.0)
    assert again.state is JobState.QUEUED and again.lease_id is None
    assert "supervisor died" in again.message
    once = record()
    granted(once, "lease-2", "n", now=1.0)
    assert not after_supervisor_lost(once, now=2.0)
    assert once.state is JobState.FAILED and once.ended_at == 2.0
    assert "supervisor died" in once.message


def test_records_round_trip_through_json() -> None:
    job = record(priority="high", tenant="ml", runtime_env={"pip": ["x"]})
    granted(job, "lease-1", "n", now=1.0)
    assert JobRecord.from_json(job.to_json()) == job


def test_the_jobs_table_fits_80_columns() -> None:
    queue = {
        "position": 2,
        "waiting": 7,
        "effective_priority": 112.5,
        "held_back_by": "cpu: the most free on any node is 0, 2 needed",
        "start_by": 30.0,
    }
    running = record(resources={"memory": "4GiB", "cpu": 2})
    granted(running, "lease-1", "n", now=1.0)
    submitted(running)
    view = {"total": {"cpu": 2000, "memory": 4 << 30}, "used": {"cpu": 1500}, "leases": 2}
    rows = [
        listing_row(record(priority="high"), 1.5, queue),
        listing_row(record(resources={"pools": {"gate": 1}, "cpu": 2}), 0.0),
        listing_row(running, 5.0, None, {**view, "waiting": 1}),
    ]
    narrow = _text(jobs_table(rows, 0.0, width=80), width=80)
    assert all(len(line) <= 80 for line in narrow.splitlines())
    assert "\u2026" not in narrow and "gate 1" in narrow and "queued" in narrow
    assert "2/7" in narrow and "high (112.5)" in narrow
    assert "cpu 1.5/2" in narrow and "memory 0 B/4GiB" in narrow
    assert "held back" not in narrow and "2 needed; starts in 30" in narrow
    assert "its supervisor is starting" in narrow
    wide = _text(jobs_table(rows, 0.0, width=160), width=160)
    assert "note" in wide and "tenant" in wide and "2 needed" in wide


def test_a_queued_job_is_given_its_budget_and_id_in_its_environment() -> None:
    job = record(runtime_env={"pip": ["x"], "env_vars": {"A": "1"}})
    env = job_runtime_env(job, "lease-1:key")
    assert env == {
        "pip": ["x"],
        "env_vars": {"A": "1", BUDGET_ENV: "lease-1:key", JOB_ID_ENV: job.job_id},
    }
    assert job.runtime_env == {"pip": ["x"], "env_vars": {"A": "1"}}  # its own is unchanged
