"""Whole Ray jobs on leases: the queue's shell. What happens to a job is decided in
``core/jobs.py``; this module carries it out.

``submit_job`` checks the job (its command line, and that its budget can ever fit),
keeps its record in Ray's GCS store, and starts its *supervisor*: a small detached
actor (``job:<id>``, no CPU) that asks the coordinator for the job's budget as an
ordinary lease (so the job waits in the same queue as every lease: priorities, aging,
quotas, preemption), submits the job to Ray's job server once granted, follows it, and
gives the lease back when the job ends in any way. The supervisor is the lease's
holder: if it dies, its node's agent reports it and the lease is reclaimed. A
coordinator restart is one more restart to its client (the census claims the lease).

*Ready supervisors*: a supervisor's start is a new worker process (~0.7 s), which a
job that fits at once would pay on top of Ray's own submit. So one supervisor is kept
ready (``SPARE_SUPERVISORS``): started ahead, connected to the coordinator and to Ray's
job server, named ``job-spare:<id>`` and listed in the GCS store. ``submit_job`` claims
one there (the GCS deletes its key once: no two jobs get the same one) and hands it the
job; that supervisor starts the next ready one once its job is past Ray's start (not
beside it: a process start takes a core). With none ready, ``submit_job`` starts one for
the job as before, and a ready one for the next. The job's record names its
supervisor, so ``cancel`` and ``jobs`` find it either way; a ready supervisor restarted
by Ray after it took a job finds the job by its own name and goes on as that job's.

A preemptible job whose lease is revoked is stopped through Ray (``stop_job``) within
the policy's grace period, and goes back to the queue if it was submitted with
``requeue``, as a new attempt with a new submission id (``<id>-<attempt>``): Ray never
starts the same attempt twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import threading
import time
import uuid
from typing import Any

import ray

from anya_resource.actors import boundary, store
from anya_resource.actors.naming import NAMESPACE
from anya_resource.core.jobs import (
    JobRecord,
    JobState,
    after_preemption,
    after_ray_status,
    after_supervisor_lost,
    ended,
    granted,
    job_runtime_env,
    submitted,
)
from anya_resource.errors import ManagerUnavailable, ResourceError

log = logging.getLogger(__name__)

POLL_S = 0.5  # how often a supervisor asks Ray's job server how its job is doing
STOP_WAIT_S = 30.0  # how long a stopped job may take to end before it is let go
START_WAIT_S = 120.0  # how long a new supervisor may take to start (a worker process)
SUPERVISOR_PREFIX = "job:"
SPARE_PREFIX = "job-spare:"
SPARE_SUPERVISORS = 1  # ready supervisors kept for the next job (each a ~100 MB process)


def new_job_id() -> str:
    return f"anya-job-{uuid.uuid4().hex[:12]}"


def supervisor_name(job_id: str) -> str:
    return SUPERVISOR_PREFIX + job_id


def save(record: JobRecord) -> None:
    blob = json.dumps(record.to_json()).encode()
    boundary.send(lambda: store.keep_job(record.job_id, blob), boundary.STORE)


def load(job_id: str) -> JobRecord | None:
    blob = boundary.send(lambda: store.job(job_id), boundary.STORE)
    return JobRecord.from_json(json.loads(blob)) if blob is not None else None


def load_all() -> list[JobRecord]:
    blobs = boundary.send(store.jobs, boundary.STORE)
    return [JobRecord.from_json(json.loads(blob)) for blob in blobs]


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[-400:] if len(text) > 400 else text


def _ray_status(status: Any) -> str:
    return str(getattr(status, "value", status))


class JobSupervisorImpl:
    """Holds one job's lease for the job's whole life (see the module's doc).

    Its work runs on an event loop of its own, in a thread started by ``__init__``: so it
    starts without anybody's call (the process that submitted the job may be gone), and
    starts again when Ray restarts the actor (its process or its node died). A restarted
    supervisor reads the job's record back; if the job was running, its lease went with
    the dead process, so the job is stopped, and queued again if it was submitted with
    ``requeue`` (``core/jobs.after_supervisor_lost``).
    """

    def __init__(
        self,
        record: dict[str, Any] | None,
        dashboard: str,
        manager_class: Any,
        spare: str | None = None,
    ) -> None:
        # ``record`` None: a ready supervisor named ``spare``, given its job by ``take``.
        self.spare = spare
        self.taken = threading.Event()
        self.record: JobRecord | None = None
        if record is not None:
            given = JobRecord.from_json(record)
            self.record = load(given.job_id) or given  # a restart finds it where it was
        elif spare is not None and ray.get_runtime_context().was_current_actor_reconstructed:
            self.record = _job_taken_by(spare)  # restarted after it took a job: that one
        if self.record is not None:
            self.taken.set()
        self.dashboard = dashboard
        # The client's manager class, given by the submitter (Ray ships it by reference):
        # so this module, which the client imports, does not import the client back.
        self.manager_class = manager_class
        self.cancel_asked = False
        self.revoked = False
        self.replaced = False  # a ready one that took a job: the next one was started
        self.acquiring: asyncio.Future[Any] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        threading.Thread(target=self._main, name="job-supervisor", daemon=True).start()

    def _main(self) -> None:
        asyncio.run(self.run())
        # Done: the actor goes, and is not restarted (its record says how the job ended).
        boundary.end_this_actor()

    async def run(self) -> None:
        self.loop = asyncio.get_running_loop()
        manager: Any = None
        client: Any = None
        failed: Exception | None = None
        try:
            manager, client = await self._connect()
        except Exception as exc:  # said in the job's record, once it has one
            failed = exc
        if self.record is None:  # a ready one: listed, then it waits for its job
            assert self.spare is not None  # made with no record only as a ready one
            if failed is not None:  # never listed, so no job is handed to it
                log.warning("a ready job supervisor could not start: %s", failed)
                return
            await asyncio.to_thread(store.keep_spare, self.spare)
            await asyncio.to_thread(self.taken.wait)
        await self._supervise(manager, client, failed)

    async def _connect(self) -> tuple[Any, Any]:
        """Its manager and Ray's job server client. The manager's leases are the
        cluster's (no budget of any job it was started from), and outlive the process
        that submitted the job (that one may exit)."""
        from ray.job_submission import JobSubmissionClient

        manager = await self.manager_class.new(budget=False, outlives_job=True)
        try:
            client = await asyncio.to_thread(JobSubmissionClient, "http://" + self.dashboard)
        except BaseException:
            await manager.close()
            raise
        return manager, client

    async def _supervise(self, manager: Any, client: Any, failed: Exception | None) -> None:
        """The job's whole life, from its record as it is now."""
        assert self.record is not None
        self.record.supervisor_id = ray.get_runtime_context().get_actor_id()
        try:
            if failed is not None:
                raise failed
            if self.record.state in (JobState.STARTING, JobState.RUNNING):
                await self._stop(client, self.record.ray_submission_id)
                if not after_supervisor_lost(self.record, time.time()):
                    return
            while not self.record.ended and await self._attempt(manager, client):
                pass
        except Exception as exc:  # Ray's job server unreachable, ...: the job ends, said why
            message = f"its supervisor could not go on: {_one_line(exc)}"
            ended(self.record, JobState.FAILED, message, time.time())
        finally:
            await asyncio.to_thread(save, self.record)
            if manager is not None:
                await manager.close()

    async def _attempt(self, manager: Any, client: Any) -> bool:
        """One attempt: wait for the lease, submit, follow; True to queue it again."""
        record = self.record
        assert record is not None
        await asyncio.to_thread(save, record)
        self.revoked = False
        queued_at = time.time() if record.attempts else record.submitted_at
        if self.cancel_asked:  # before its supervisor had even asked for the lease
            ended(record, JobState.CANCELLED, "cancelled while queued", time.time())
            return False
        self.acquiring = asyncio.ensure_future(
            manager.acquire(
                record.resources,
                priority=record.priority,
                tenant=record.tenant,
                preemptible=record.preemptible,
                on_revoked=self._on_revoked,
                bundles=record.bundles,
                strategy=record.strategy,
                # Reserved in Ray before the job starts: its processes run in what its
                # budget holds (its draws in their bundles), and nothing else takes it.
                reserve=True,
            )
        )
        try:
            lease = await self.acquiring
        except asyncio.CancelledError:
            ended(record, JobState.CANCELLED, "cancelled while queued", time.time())
            return False
        except ResourceError as exc:
            ended(record, JobState.FAILED, f"{type(exc).__name__}: {exc}", time.time())
            return False
        nodes = [bundle["node_id"] for bundle in lease.bundles] if record.bundles else None
        granted(record, lease.lease_id, lease.node_id, time.time(), nodes)
        await asyncio.to_thread(save, record)
        _count_start(lease.priority, lease.tenant, time.time() - queued_at)
        try:
            if self.cancel_asked:
                ended(record, JobState.CANCELLED, "cancelled before it started", time.time())
                return False
            budget = await manager.budget_key(lease)  # all the job leases is drawn from it
            await _submit_to_ray(
                client,
                entrypoint=record.entrypoint,
                submission_id=record.ray_submission_id,
                runtime_env=job_runtime_env(record, budget),
                metadata={"anya_job": record.job_id},
            )
            submitted(record)
            await asyncio.to_thread(save, record)
            return await self._follow(client)
        except Exception as exc:  # refused by Ray's job server (bad runtime env, ...)
            ended(record, JobState.FAILED, f"Ray's job server: {_one_line(exc)}", time.time())
            return False
        finally:
            with contextlib.suppress(ResourceError):
                await manager.release(lease)

    async def _follow(self, client: Any) -> bool:
        """Until the job ends: True if it was preempted and goes back to the queue."""
        record = self.record
        assert record is not None
        submission = record.ray_submission_id
        while True:
            if self.cancel_asked or self.revoked:
                await self._stop(client, submission)
                if self.cancel_asked:
                    ended(record, JobState.CANCELLED, "cancelled while running", time.time())
                    return False
                return after_preemption(record, time.time())
            info = await asyncio.to_thread(client.get_job_info, submission)
            if _ray_status(info.status) != "PENDING":
                await self._replace_self()
            why = info.message or "" if _ray_status(info.status) != "SUCCEEDED" else ""
            if after_ray_status(record, _ray_status(info.status), time.time(), why):
                return False
            await asyncio.sleep(POLL_S)

    async def _stop(self, client: Any, submission: str) -> None:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(client.stop_job, submission)
        deadline = time.monotonic() + STOP_WAIT_S
        while time.monotonic() < deadline:
            try:
                answer = await asyncio.to_thread(client.get_job_status, submission)
            except Exception:  # never submitted (its supervisor died before): nothing runs
                return
            status = _ray_status(answer)
            if status in ("SUCCEEDED", "FAILED", "STOPPED"):
                return
            await asyncio.sleep(POLL_S)

    async def _replace_self(self) -> None:
        """A ready supervisor that took a job has the next one started, once its own job
        is past Ray's start: never beside the job's start, which it would slow (a new
        worker process takes a core for ~0.4 s)."""
        if self.spare is None or self.replaced:
            return
        self.replaced = True
        with contextlib.suppress(ResourceError):
            await asyncio.to_thread(_start_spare, self.dashboard, self.manager_class)

    def _on_revoked(self, lease: Any) -> None:
        self.revoked = True

    def take(self, record: dict[str, Any]) -> bool:
        """A ready supervisor is given its job (claimed in the GCS store first): the
        record, naming it, is saved before the answer, so that a restart of this actor
        finds the job. False if it has one already."""
        if self.record is not None or self.spare is None:
            return False
        job = JobRecord.from_json(record)
        job.supervisor_name = self.spare
        save(job)
        self.record = job
        self.taken.set()
        return True

    def cancel(self) -> str:
        """Take it out of the queue, or stop it: its state then."""
        self.cancel_asked = True
        acquiring, loop = self.acquiring, self.loop
        if acquiring is not None and loop is not None:
            loop.call_soon_threadsafe(acquiring.cancel)  # a no-op once it is done
        return self.record.state.value if self.record is not None else "ready"

    def state(self) -> dict[str, Any]:
        return self.record.to_json() if self.record is not None else {}


JobSupervisor = ray.remote(JobSupervisorImpl)


# Ray's job server answers 500 "No available agent to submit job, please try again later"
# while the head's dashboard agent is starting (a cluster that just came up): a job
# granted then is submitted again for this long, not failed.
SUBMIT_PATIENCE_S = 60.0
TRY_AGAIN = "try again later"


async def _submit_to_ray(client: Any, **submission: Any) -> None:
    """``client.submit_job(**submission)``, tried again while Ray asks to try again later."""
    deadline = time.monotonic() + SUBMIT_PATIENCE_S
    while True:
        try:
            await asyncio.to_thread(client.submit_job, **submission)
            return
        except Exception as exc:
            if TRY_AGAIN not in str(exc) or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.5)


def _count_start(priority: str, tenant: str, waited: float) -> None:
    """The coordinator's metrics count job starts and waits (fire and forget)."""
    from anya_resource.actors import deploy

    with contextlib.suppress(ResourceError):  # a metric is never worth failing a job for
        coordinator = deploy.coordinator()
        boundary.send(lambda: coordinator.job_started.remote(priority, tenant, waited))


def _job_taken_by(spare: str) -> JobRecord | None:
    """The job a ready supervisor named ``spare`` took, if it took one."""
    for record in load_all():
        if record.supervisor_name == spare and not record.ended:
            return record
    return None


# A process starts at most one ready supervisor this often: one that is starting is not
# listed yet, so a burst of submits would each start one.
SPARE_START_EVERY_S = 1.0
_spare_started_at = -SPARE_START_EVERY_S  # when this process last started one


def _start_spare(dashboard: str, manager_class: Any) -> None:
    """One more ready supervisor, not waited for, if fewer than ``SPARE_SUPERVISORS`` are
    listed and this process started none a moment ago."""
    global _spare_started_at
    if time.monotonic() - _spare_started_at < SPARE_START_EVERY_S:
        return
    if len(boundary.send(store.spares, boundary.STORE)) >= SPARE_SUPERVISORS:
        return
    _spare_started_at = time.monotonic()
    name = SPARE_PREFIX + uuid.uuid4().hex[:12]
    with contextlib.suppress(ResourceError):  # the next job then starts its own
        boundary.send(
            lambda: JobSupervisor.options(  # type: ignore[attr-defined]
                name=name,
                namespace=NAMESPACE,
                lifetime="detached",
                num_cpus=0,
                max_restarts=-1,
            ).remote(None, dashboard, manager_class, name),
            "a ready job supervisor",
        )


def _hand_to_spare(record: JobRecord) -> bool:
    """Give the job to a ready supervisor, if one is listed and can be claimed."""
    for name in boundary.send(store.spares, boundary.STORE):
        if _took(name, record):
            record.supervisor_name = name
            return True
    return False


def _took(name: str, record: JobRecord) -> bool:
    """Whether the ready supervisor ``name`` was claimed by this caller and took the job."""
    if not boundary.send(functools.partial(store.claim_spare, name), boundary.STORE):
        return False  # another submitter claimed it first
    handle = boundary.find(name, NAMESPACE)
    if handle is None:
        return False
    try:
        answer = boundary.get(
            lambda: handle.take.remote(record.to_json()), f"the ready supervisor {name}", 30.0
        )
    except ResourceError:  # it died meanwhile: the next one, or one started for the job
        return False
    return bool(answer)


def start_supervisor(record: JobRecord, dashboard: str, manager_class: Any) -> None:
    """The job's supervisor, detached (it outlives the process that submitted the job):
    a ready one if one is listed (which starts the next one once the job runs), else
    one started for it (and a ready one for the next job, not waited for); ``manager_class``: the client's ``ResourceManager``, which it holds
    the lease with."""
    if _hand_to_spare(record):
        return  # it starts the next ready one once the job runs
    _start_spare(dashboard, manager_class)  # none was ready: one for the next job
    callee = f"the supervisor of job {record.job_id}"
    try:
        handle: Any = boundary.send(
            lambda: JobSupervisor.options(  # type: ignore[attr-defined]
                name=supervisor_name(record.job_id),
                namespace=NAMESPACE,
                lifetime="detached",
                num_cpus=0,
                max_restarts=-1,  # its process or node dies: it starts again (see the class)
            ).remote(record.to_json(), dashboard, manager_class),
            callee,
        )
        # Answered once the actor is up, its work started by its ``__init__``: the
        # submitting process may exit at once (the CLI's submit does).
        boundary.get(lambda: handle.state.remote(), callee, timeout=START_WAIT_S)
    except ResourceError as exc:  # translated at the boundary: a timeout, a dead worker
        why = f"its supervisor did not start: {exc}"
        save(ended(record, JobState.FAILED, why, time.time()))
        raise ManagerUnavailable(f"job {record.job_id}: {why}") from None


def supervisor(job_id: str) -> Any | None:
    """The supervisor actor of ``job_id``: the one its record names, or ``job:<id>``."""
    record = load(job_id)
    name = record.supervisor_name if record is not None else None
    return boundary.find(name or supervisor_name(job_id), NAMESPACE)


def dashboard_address() -> str:
    """Where Ray's job server answers (the dashboard), as Ray's own CLI finds it."""
    from ray._private.worker import get_dashboard_url

    url = get_dashboard_url()  # type: ignore[no-untyped-call]
    if not url:
        raise ManagerUnavailable(
            "Ray's job server is not running on this cluster: start the head with the "
            "dashboard (ray start --head --include-dashboard=true)"
        )
    return str(url).removeprefix("http://")


__all__ = [
    "JobSupervisor",
    "dashboard_address",
    "load",
    "load_all",
    "new_job_id",
    "save",
    "start_supervisor",
    "supervisor",
]
