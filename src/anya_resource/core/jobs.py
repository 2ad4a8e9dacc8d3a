"""Whole Ray jobs on leases: a job's record and what happens to it. Pure, no Ray.

A job waits in the coordinator's queue as an ordinary request (its budget: resources
and pool slots, priority, tenant, preemptible), held for it by a supervisor
(``jobs.py``). Once granted it is submitted to Ray's job server; it holds the lease
for its whole life, and gives it back when it ends in any way. These functions say
what each step does to the record; the supervisor carries them out.
"""

from __future__ import annotations

import enum
import shlex
from dataclasses import asdict, dataclass
from typing import Any

from anya_resource.errors import InvalidRequest
from anya_resource.inputs import shown
from anya_resource.quantities import from_units

MAX_ENTRYPOINT = 100_000  # characters: a command line, not a payload
# What a job finds in its environment: the budget it draws every lease from
# ("<lease id>:<key>", core/budgets.py; the client reads it), and its id in the queue.
BUDGET_ENV = "ANYA_RESOURCE_BUDGET"
JOB_ID_ENV = "ANYA_RESOURCE_JOB_ID"


class JobState(str, enum.Enum):
    QUEUED = "queued"  # waiting for its lease
    STARTING = "starting"  # granted, being submitted to Ray's job server
    RUNNING = "running"  # Ray runs it; its lease is held
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # Ray's job failed, or could not be submitted
    STOPPED = "stopped"  # stopped through Ray (by hand, or preempted without requeue)
    CANCELLED = "cancelled"  # cancelled here, before or while it ran


ENDED = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.STOPPED, JobState.CANCELLED})
RAY_ENDED = {
    "SUCCEEDED": JobState.SUCCEEDED,
    "FAILED": JobState.FAILED,
    "STOPPED": JobState.STOPPED,
}


@dataclass
class JobRecord:
    """A job as the queue knows it (kept in Ray's GCS store, one key per job)."""

    job_id: str
    entrypoint: str
    resources: dict[str, Any]
    submitted_at: float  # when submit_job was called (the shell reads the clock)
    priority: str | int = "normal"
    tenant: str | None = None
    preemptible: bool = False
    requeue: bool = False
    runtime_env: dict[str, Any] | None = None
    state: JobState = JobState.QUEUED
    started_at: float | None = None
    ended_at: float | None = None
    lease_id: str | None = None
    node_id: str | None = None
    attempts: int = 0  # submissions to Ray so far (a requeued job is submitted again)
    message: str = ""  # why it ended, or what it waits for
    supervisor_id: str | None = None  # its supervisor's actor id: who holds its request
    # Its supervisor's actor name, when it is a ready one that took the job (``job-spare:``
    # ...); None: ``job:<job id>``, one started for it.
    supervisor_name: str | None = None
    # A job across nodes: its budget is a gang of these bundles (``resources`` then holds
    # only its pools), placed by ``strategy``; ``nodes`` are where they went, in order.
    bundles: list[dict[str, Any]] | None = None
    strategy: str | None = None
    nodes: list[str] | None = None

    @property
    def ray_submission_id(self) -> str:
        """The id Ray's job server knows this attempt by (never reused: no double start)."""
        return self.job_id if self.attempts <= 1 else f"{self.job_id}-{self.attempts}"

    @property
    def ended(self) -> bool:
        return self.state in ENDED

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = self.state.value
        data["ray_submission_id"] = self.ray_submission_id
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobRecord:
        fields = {k: v for k, v in data.items() if k != "ray_submission_id"}
        fields["state"] = JobState(fields["state"])
        return cls(**fields)


def check_entrypoint(entrypoint: object) -> str:
    """A command line: a non-empty string (or list of words) without control characters."""
    if isinstance(entrypoint, (list, tuple)):
        if not entrypoint:
            raise InvalidRequest("entrypoint: got no words, expected the job's command line")
        words = [check_entrypoint(word) for word in entrypoint]
        return shlex.join(words)  # each word stays one word in the job's shell
    if not isinstance(entrypoint, str) or not entrypoint.strip():
        raise InvalidRequest(
            f"entrypoint: got {shown(entrypoint)}, expected the job's command line "
            "(for example 'python train.py')"
        )
    if len(entrypoint) > MAX_ENTRYPOINT:
        raise InvalidRequest(
            f"entrypoint: got {len(entrypoint):,} characters, expected at most {MAX_ENTRYPOINT:,}"
        )
    bad = [c for c in entrypoint if (ord(c) < 32 and c not in "\t") or ord(c) == 127]
    if bad:
        raise InvalidRequest(
            f"entrypoint: contains the control character {bad[0]!r}; expected one command "
            "line of printable characters"
        )
    return entrypoint


def job_runtime_env(record: JobRecord, budget: str) -> dict[str, Any]:
    """The runtime_env a granted job is submitted with: its own, plus its budget and id.

    Ray gives a job's runtime_env to its driver and, by inheritance, to its tasks and
    actors: so every lease the job takes is drawn from its budget, wherever it runs.
    """
    env = dict(record.runtime_env or {})
    env_vars = dict(env.get("env_vars") or {})
    env_vars[BUDGET_ENV] = budget
    env_vars[JOB_ID_ENV] = record.job_id
    env["env_vars"] = env_vars
    return env


def listing_row(
    record: JobRecord,
    now: float,
    queue: dict[str, Any] | None = None,
    budget: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A job as ``anya-resource jobs`` lists it.

    ``queue``: where its request waits (core/positions.py), for a queued job;
    ``budget``: its budget's view (core/budgets.py), for a running job whose processes
    drew from it.
    """
    row = record.to_json()
    started = record.started_at if record.started_at is not None else now
    row["waited_s"] = max(0.0, started - record.submitted_at)
    if record.state is JobState.QUEUED:
        row.update(queue or {"held_back_by": "its supervisor is starting"})
    if record.state in (JobState.STARTING, JobState.RUNNING) and budget is None:
        row["use"] = {}  # nothing drawn from its budget yet (none opened)
    if budget is not None and not record.ended:
        used = budget["used"]
        row["use"] = {name: from_units(name, used.get(name, 0)) for name in budget["total"]}
        row["drawn_leases"] = budget["leases"]
        row["drawn_waiting"] = budget["waiting"]
    return row


def granted(
    record: JobRecord, lease_id: str, node_id: str, now: float, nodes: list[str] | None = None
) -> JobRecord:
    """Its lease was granted: it is to be submitted (a new attempt). ``nodes``: where
    each bundle of a job across nodes went."""
    record.state = JobState.STARTING
    record.lease_id = lease_id
    record.node_id = node_id
    record.nodes = nodes
    record.attempts += 1
    record.message = ""
    if record.started_at is None:
        record.started_at = now
    return record


def submitted(record: JobRecord) -> JobRecord:
    record.state = JobState.RUNNING
    return record


def ended(record: JobRecord, state: JobState, message: str, now: float) -> JobRecord:
    """It ended (Ray said so, or it could not be submitted, or it was cancelled)."""
    record.state = state
    record.message = " ".join(message.split())[:500]
    record.ended_at = now
    return record


def after_ray_status(record: JobRecord, status: str, now: float, why: str = "") -> bool:
    """Ray's job server reports ``status`` (and ``why``, its message): True once the job
    has ended (its lease to go back)."""
    state = RAY_ENDED.get(status)
    if state is None:
        return False
    ended(record, state, f"Ray's job server: {status}" + (f": {why}" if why else ""), now)
    return True


def after_supervisor_lost(record: JobRecord, now: float) -> bool:
    """Its supervisor died while it ran (a restarted one found it so, and stopped it):
    its lease went with the dead process, so it cannot go on within its budget. True if
    it goes back to the queue (``requeue``), else it has ended as failed."""
    if record.requeue:
        record.state = JobState.QUEUED
        record.lease_id = None
        record.node_id = None
        record.nodes = None
        record.message = "its supervisor died: stopped, back in the queue"
        return True
    why = "its supervisor died (its process or node was lost): the job was stopped"
    ended(record, JobState.FAILED, why, now)
    return False


def after_preemption(record: JobRecord, now: float) -> bool:
    """Its lease was revoked (a higher-priority job needs it) and it was stopped: True if
    it goes back to the queue (``requeue``), else it has ended as stopped."""
    if record.requeue:
        record.state = JobState.QUEUED
        record.lease_id = None
        record.node_id = None
        record.nodes = None
        record.message = "preempted: back in the queue"
        return True
    ended(record, JobState.STOPPED, "preempted by a higher-priority job", now)
    return False


__all__ = [
    "BUDGET_ENV",
    "ENDED",
    "JOB_ID_ENV",
    "JobRecord",
    "JobState",
    "after_preemption",
    "after_ray_status",
    "after_supervisor_lost",
    "check_entrypoint",
    "ended",
    "granted",
    "job_runtime_env",
    "listing_row",
    "submitted",
]
