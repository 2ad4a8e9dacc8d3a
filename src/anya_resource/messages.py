"""What crosses the actor boundary between the coordinator and a manager, typed.

Ray carries plain data (dicts, lists, bytes) between processes; these ``TypedDict``
declare its shape once, for the coordinator that builds it and the client that reads
it, so that mypy checks both ends against one definition. A watch reply carries
events, each with a ``kind`` that says which of them it is.

The lease records inside grants travel as bytes (``actors/wire.py``); snapshots and
what-if answers are the core's own (``core/views.py``, ``core/whatif.py``).
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict


class RequestMessage(TypedDict, total=False):
    """One request as a manager sends it: built in one place (``ResourceManager._spec``,
    checked there by ``core.requests.check_fields``), read in one place (the
    coordinator's ``_request``, checked again by ``core.requests.build_request``)."""

    resources: dict[str, Any]  # node resources and/or {"pools": {...}}; pools only for a gang
    priority: str | int
    tenant: str | None
    timeout: float | None
    ttl: float | None
    preemptible: bool
    node: str | None
    detached: bool
    holder: dict[str, Any]  # ``core.model.Holder``'s fields
    within: list[str] | None  # the budget drawn from: [lease id, budget key]
    bundles: list[dict[str, Any]] | None  # a gang: each bundle's node resources
    strategy: str | None  # PACK, SPREAD, STRICT_PACK or STRICT_SPREAD
    reserve: bool | None  # reserved in Ray before the grant is told (None: the default)
    idempotency_key: str | None  # added as it is sent: "<channel>/<n>"
    default_pool: bool  # a slot of the policy's default pool


class GrantedEvent(TypedDict):
    """A request that waited was granted; ``lease`` is the record (``wire.lease_to_wire``)."""

    kind: Literal["granted"]
    key: str  # the request's idempotency key
    lease: bytes


class RejectedEvent(TypedDict):
    """A request that waited was refused; nothing is held."""

    kind: Literal["rejected"]
    key: str
    error: str  # an error class of ``anya_resource.errors``
    message: str


class RevokedEvent(TypedDict):
    """A held lease must be let go by ``deadline``; it ends then at the latest."""

    kind: Literal["revoked"]
    lease_id: str
    node_id: str
    cause: str  # a ``core.model.RevokeCause`` value
    reason: str
    deadline: float


class EndedEvent(TypedDict):
    """A held lease has ended; ``reason`` is a ``core.model.ReclaimReason`` value."""

    kind: Literal["ended"]
    lease_id: str
    reason: str


class PoolWantedEvent(TypedDict):
    """Other managers wait for slots of ``pool``: give idle ones back."""

    kind: Literal["pool_wanted"]
    pool: str


class WantedEvent(TypedDict):
    """Waiting requests want these warm leases back (``core/warm.py``): idle
    ``leases`` at once, busy ones after their use; ``spare`` ones once idle a moment."""

    kind: Literal["wanted"]
    leases: list[str]
    spare: list[str]


Event = GrantedEvent | RejectedEvent | RevokedEvent | EndedEvent | PoolWantedEvent | WantedEvent


class WatchReply(TypedDict):
    """One long poll's answer: events after the cursor the manager sent, and the epoch."""

    epoch: int
    events: list[Event]
    cursor: int


class HeartbeatReply(TypedDict):
    """An agent's beat answered: whether the node is known, and the holders to watch
    (``[holder key, pid, process create time]`` each)."""

    known: bool
    epoch: int
    holders: list[list[str | int | float | None]]


class Ping(TypedDict):
    epoch: int
    ready: bool
    nodes: int
    recovering: int
    pid: int
    warm_idle_s: float
    submit_ahead: int  # the policy's lease.submit_ahead (tasks a warm lease carries)
    max_ttl: float  # the policy's lease.max_ttl: a client refuses a longer ttl itself


class WhatIfAnswer(TypedDict):
    """A dry run's answer (``core/whatif.py``): how many of ``requested`` would be
    granted now, after preemption, or would wait; on which nodes; what would be
    preempted (each a lease's public fields); why it can never fit, or what blocks it.
    An ``infeasible`` request is counted nowhere else: granted and waiting are all 0."""

    requested: int
    granted_now: int
    granted_after_preemption: int
    would_wait: int
    nodes: dict[str, int]
    preempted: list[dict[str, Any]]
    infeasible: str | None
    blocked_by: str | None


class _SnapshotCounts(TypedDict):
    demand: dict[str, Any]
    at: float
    epoch: int
    placement: str
    nodes: dict[str, dict[str, Any]]
    resources: dict[str, dict[str, Any]]
    pools: dict[str, dict[str, Any]]
    tenants: dict[str, dict[str, Any]]
    queue: dict[str, Any]
    leases: int
    counters: dict[str, Any]
    waits: dict[str, Any]


class Snapshot(_SnapshotCounts, total=False):
    """The cluster as counted now (``core/views.snapshot``): per node, resource, pool
    and tenant, capacity, granted, free and waiting; the queue; counters and waits.
    The scheduler adds ``bottlenecks`` (``core/bottleneck.py``), the coordinator the
    agents' ``health``, the ``warm`` leases' use and its ``recovery``."""

    bottlenecks: list[dict[str, Any]]
    health: dict[str, dict[str, Any]]
    warm: dict[str, int]
    recovery: dict[str, Any]


# An acquire's answer, per request: ``["granted", lease bytes]``, ``["queued"]`` or
# ``["error", error class name, message]`` (lists: the cheapest shape to pickle).
AcquireAnswer = list[str | bytes]

__all__ = [
    "AcquireAnswer",
    "EndedEvent",
    "Event",
    "GrantedEvent",
    "HeartbeatReply",
    "Ping",
    "PoolWantedEvent",
    "RejectedEvent",
    "RevokedEvent",
    "Snapshot",
    "WantedEvent",
    "WatchReply",
    "WhatIfAnswer",
]
