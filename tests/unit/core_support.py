"""Shared helpers of the core tests: a hermetic policy, a fake clock, small builders.

Not a test module (no ``test_`` prefix): the ``test_core_*`` files import it
as ``tests.unit.core_support``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from anya_resource.config import Policy
from anya_resource.core import Grant, Reclaim, Reject, Request, Revoke, Scheduler, build_request
from anya_resource.core.journal import Write
from anya_resource.core.model import Decision
from anya_resource.core.recovery import start

KIB, MIB, GIB = 1024, 1024**2, 1024**3
CORE = 1000  # cpu and gpu are counted in thousandths


def make_policy(**overrides: Any) -> Policy:
    """A policy built from the model's defaults only (no ANYA_RESOURCE_* overrides).

    ``reserve`` defaults to nothing so that figures in tests are the plain capacity.
    """
    data: dict[str, Any] = {"reserve": {}}
    data.update(overrides)
    return Policy.model_validate(data)


def caps(cpu: float = 0, memory: int = 0, gpu: float = 0, disk: int = 0) -> dict[str, int]:
    """A node capacity in core units: cores and devices in thousandths, bytes as they are."""
    return {
        "cpu": round(cpu * CORE),
        "memory": memory,
        "gpu": round(gpu * CORE),
        "disk": disk,
    }


SECRET = b"s" * 32  # the cluster secret of every scheduler made here


class Clock:
    """A fake clock: tests move it by hand, nothing ever sleeps."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


class Harness:
    """A scheduler, its policy and a fake clock, with one-line helpers."""

    def __init__(self, policy: Policy | None = None, *, epoch: int = 0) -> None:
        self.policy = policy if policy is not None else make_policy()
        self.clock = Clock()
        self.s = Scheduler(self.policy, epoch=epoch, secret=SECRET)

    @property
    def now(self) -> float:
        return self.clock.now

    def node(self, node_id: str, **capacity: Any) -> list[Decision]:
        return self.s.node_up(node_id, caps(**capacity), self.now)

    def request(self, resources: Mapping[str, Any], **kwargs: Any) -> Request:
        return build_request(self.policy, resources, **kwargs)

    def submit(self, resources: Mapping[str, Any], **kwargs: Any) -> tuple[str, list[Decision]]:
        return self.s.submit(self.request(resources, **kwargs), self.now)

    def acquire(self, resources: Mapping[str, Any], **kwargs: Any) -> Grant:
        """Submit and insist on an immediate grant."""
        request_id, decisions = self.submit(resources, **kwargs)
        grant = grant_for(decisions, request_id)
        assert grant is not None, f"{request_id} was not granted at once: {decisions}"
        return grant

    def wait(self, resources: Mapping[str, Any], **kwargs: Any) -> str:
        """Submit and insist that the request waits (no grant, no reject for it)."""
        request_id, decisions = self.submit(resources, **kwargs)
        assert grant_for(decisions, request_id) is None, decisions
        assert not [d for d in rejects(decisions) if d.request_id == request_id], decisions
        assert request_id in self.s.queue
        return request_id

    def tick(self, seconds: float = 0.0) -> list[Decision]:
        return self.s.tick(self.clock.advance(seconds))

    def release(self, grant: Grant) -> list[Decision]:
        return self.s.release(grant.lease.lease_id, grant.lease.token, self.now)

    def snap(self) -> dict[str, Any]:
        return self.s.snapshot(self.now)


def grants(decisions: list[Decision]) -> list[Grant]:
    return [d for d in decisions if isinstance(d, Grant)]


def grant_for(decisions: list[Decision], request_id: str) -> Grant | None:
    found = [d for d in grants(decisions) if d.request_id == request_id]
    assert len(found) <= 1, f"{request_id} granted twice in one step: {found}"
    return found[0] if found else None


def rejects(decisions: list[Decision]) -> list[Reject]:
    return [d for d in decisions if isinstance(d, Reject)]


def revokes(decisions: list[Decision]) -> list[Revoke]:
    return [d for d in decisions if isinstance(d, Revoke)]


def reclaims(decisions: list[Decision]) -> list[Reclaim]:
    return [d for d in decisions if isinstance(d, Reclaim)]


def granted(snap: Mapping[str, Any], node_id: str, resource: str) -> int:
    value: int = snap["nodes"][node_id]["resources"][resource]["granted"]
    return value


class Store:
    """Ray's GCS key-value store as the journal uses it: puts, and deletes after them.

    A garbage entry ending in ``/`` is a prefix (a generation's segments), as
    ``actors/store.py`` deletes it.
    """

    def __init__(self) -> None:
        self.kv: dict[str, bytes] = {}

    def write(self, write: Write) -> None:
        self.kv[write.key] = write.blob
        for garbage in write.garbage:
            if garbage.endswith("/"):
                for key in [k for k in self.kv if k.startswith(garbage)]:
                    del self.kv[key]
            else:
                self.kv.pop(garbage, None)


class Durable:
    """A coordinator's core as the shell runs it, writing every commit at once.

    ``start`` is the real startup protocol (``core/recovery.py``); ``commit`` writes
    what the scheduler staged since the last one, as the coordinator's committer does.
    """

    def __init__(
        self,
        policy: Policy,
        store: Store,
        nodes: Mapping[str, Mapping[str, int]],
        now: float,
        epoch: int = 0,
    ) -> None:
        self.store = store
        startup = start(policy, epoch, SECRET, dict(store.kv), nodes, now)
        self.s = startup.scheduler
        self.commits = startup.commits
        self.decisions = startup.decisions
        self.write(startup.first_write)

    def write(self, write: Write) -> None:
        self.store.write(write)
        self.commits.written(write.ticket)

    def commit(self) -> None:
        self.commits.stage(self.s.take_journal())
        write = self.commits.cut()
        if write is not None:
            self.write(write)
