"""Whole Ray jobs on leases: the record and its steps (core/jobs.py), pure."""

from __future__ import annotations

import itertools

import pytest

from anya_resource.core.jobs import (
    JobRecord,
    JobState,
    after_preemption,
    after_ray_status,
    check_entrypoint,
    granted,
    submitted,
)
from anya_resource.errors import InvalidRequest
from anya_resource.render import jobs_table
from tests.unit.test_cli_ops import _text

IDS = itertools.count()


def record(**fields: object) -> JobRecord:
    fields.setdefault("submitted_at", 0.0)
    return JobRecord(
        job_id=f"anya-job-{next(IDS)}", entrypoint="python run.py", resources={"cpu": 1}, **fields
    )  # type: ignore[arg-type]


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


def test_records_round_trip_through_json() -> None:
    job = record(priority="high", tenant="ml", runtime_env={"pip": ["x"]})
    granted(job, "lease-1", "n", now=1.0)
    assert JobRecord.from_json(job.to_json()) == job


def test_the_jobs_table_fits_80_columns() -> None:
    rows = [
        {**record(priority="high").to_json(), "waited_s": 1.5},
        {**record().to_json(), "waited_s": 0.0, "resources": {"pools": {"gate": 1}, "cpu": 2}},
    ]
    narrow = _text(jobs_table(rows, 0.0, width=80), width=80)
    assert all(len(line) <= 80 for line in narrow.splitlines())
    assert "\u2026" not in narrow and "gate 1" in narrow and "queued" in narrow
    wide = _text(jobs_table(rows, 0.0, width=160), width=160)
    assert "message" in wide and "tenant" in wide
