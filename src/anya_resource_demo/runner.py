"""Closed-loop clients that keep the mixed workload's leases in demand.

Each client is a thread in the driver: it calls its kind's ``@leased`` task
(``.remote`` blocks until the lease is granted, by priority), waits for the
result, records what happened and asks again at once. Threads, because
``LeasedFunction.remote`` blocks like a Ray call and the waiting is the point:
at any time each client is either waiting for a lease or holding one.

Stopping is cooperative: ``stop()`` lets every client finish the lease it waits
for or holds (a task is never abandoned halfway) and start no new one, so after
``join()`` every lease the workload was granted has been given back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import ray

from anya_resource.errors import ManagerUnavailable, ResourceError
from anya_resource_demo.mix import JobKind, Outcome, Payload
from anya_resource_demo.stats import GrantRecord

log = logging.getLogger(__name__)

ERROR_BACKOFF_S = 0.5


@dataclass(frozen=True)
class Plan:
    """A kind of job and how many clients run it."""

    kind: JobKind
    clients: int


def plan_mix(kinds: Sequence[JobKind], cluster_cpu: float) -> list[Plan]:
    return [Plan(kind, kind.clients(cluster_cpu)) for kind in kinds]


class Runner:
    """Runs a plan's clients until stopped; keeps every grant's record."""

    def __init__(self, plans: Sequence[Plan], payload: Payload) -> None:
        self.plans = list(plans)
        self.payload = payload
        self.records: list[GrantRecord] = []
        self.errors: Counter[str] = Counter()  # by kind: acquire or task failures
        self.waiting: Counter[str] = Counter()  # by kind: clients waiting for a lease now
        self.running: Counter[str] = Counter()  # by kind: clients holding one now
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sequence = 0
        self._threads: list[threading.Thread] = []

    # -- life cycle -------------------------------------------------------------------

    def start(self) -> None:
        for plan in self.plans:
            for index in range(plan.clients):
                thread = threading.Thread(
                    target=self._client,
                    args=(plan.kind,),
                    name=f"client-{plan.kind.name}-{index}",
                    daemon=True,  # never keeps the process alive past a second Ctrl-C
                )
                self._threads.append(thread)
                thread.start()

    def stop(self) -> None:
        """Start no new lease; what is waiting or running finishes."""
        self._stop.set()

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for every client to finish; True if they all did."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def snapshot(self) -> list[GrantRecord]:
        with self._lock:
            return list(self.records)

    # -- one client -----------------------------------------------------------------

    def _next(self) -> int:
        with self._lock:
            self._sequence += 1
            return self._sequence

    def _client(self, kind: JobKind) -> None:
        while not self._stop.is_set():
            try:
                self._one(kind)
            except ManagerUnavailable as exc:  # the cluster is going away: stop quietly
                log.info("client of %s stops: %s", kind.name, exc)
                return
            except Exception as exc:  # recorded and retried: the run goes on
                with self._lock:
                    self.errors[kind.name] += 1
                log.warning("%s failed: %s", kind.name, exc)
                self._stop.wait(ERROR_BACKOFF_S)

    def _one(self, kind: JobKind) -> None:
        args = kind.args_for(self.payload, self._next())
        requested = time.time()
        self._count(self.waiting, kind, +1)
        try:
            ref = kind.task.remote(*args)  # blocks until the lease is granted
        finally:
            self._count(self.waiting, kind, -1)
        granted = time.time()
        self._count(self.running, kind, +1)
        try:
            outcome: Outcome | None = ray.get(ref)
        except (ray.exceptions.RayError, ResourceError) as exc:
            log.warning("%s task failed: %s", kind.name, exc)
            outcome = None
        finally:
            self._count(self.running, kind, -1)
        self._record(kind, requested, granted, outcome)

    def _count(self, counter: Counter[str], kind: JobKind, delta: int) -> None:
        with self._lock:
            counter[kind.name] += delta

    def _record(
        self, kind: JobKind, requested: float, granted: float, outcome: Outcome | None
    ) -> None:
        record = GrantRecord(
            kind=kind.name,
            priority=kind.priority,
            requested=requested,
            # From its start: queued ahead in Ray it held nothing of its own yet.
            granted=max(granted, outcome.started) if outcome else granted,
            ended=time.time(),
            node_id=outcome.node_id if outcome else "",
            cpu=kind.cpu,
            ok=outcome is not None,
            items=outcome.items if outcome else 0,
            good=outcome.good if outcome else 0,
            missed=outcome.missed if outcome else 0,
        )
        with self._lock:
            self.records.append(record)
            if outcome is None:
                self.errors[kind.name] += 1
