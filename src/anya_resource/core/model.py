"""The core's data: requests, leases, node samples and the decisions it returns.

Amounts are integers in the core's units (see ``quantities``): bytes for memory and
disk, thousandths for cpu and gpu, slots for pools. Times are float seconds on
whatever clock the caller passes in; the core never reads one itself.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from operator import attrgetter
from typing import Any, TypeAlias

Amounts: TypeAlias = dict[str, int]

# A client manager's idempotency keys are "<channel>/<n>": the channel names the manager,
# which hears of its requests' grants and of its leases' ends (a process may have several
# managers; a lease belongs to the one that asked for it).
CHANNEL_SEPARATOR = "/"


def channel_of(key: str | None) -> str | None:
    """The manager channel of an idempotency key, or None if the key names none."""
    if key is None:
        return None
    channel, separator, _ = key.rpartition(CHANNEL_SEPARATOR)
    return channel if separator and channel else None


NODE_RESOURCES: tuple[str, ...] = ("memory", "cpu", "gpu", "disk")

# How a gang's bundles go on nodes: Ray's four placement-group strategies, same meaning.
# PACK: as few nodes as it can; SPREAD: as many as it can; STRICT_PACK: all on one node;
# STRICT_SPREAD: each bundle on a node of its own.
STRATEGIES: tuple[str, ...] = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
DISTINCT_NODES = "STRICT_SPREAD"

# Where one bundle of a gang lease was placed: the node id and the bundle's amounts.
Bundle: TypeAlias = tuple[str, Amounts]


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds a lease: enough to tell, from the holder's node, that it died."""

    pid: int | None = None
    create_time: float | None = None
    node_id: str | None = None
    job_id: str | None = None
    worker_id: str | None = None
    actor_id: str | None = None

    @property
    def key(self) -> str | None:
        """A process identity that survives pid reuse (pid + create time)."""
        if self.pid is None:
            return None
        return f"{self.node_id}:{self.pid}:{self.create_time}"


@dataclass(frozen=True, slots=True)
class Request:
    """A normalised request, as the core queues it."""

    resources: Amounts  # node resources in core units, zero amounts dropped
    pools: Amounts  # pool name -> slots
    priority: int  # base priority level
    priority_name: str
    tenant: str
    ttl: float
    timeout: float | None  # seconds from submission; None waits forever
    preemptible: bool = False
    node: str | None = None  # required node id (hex)
    idempotency_key: str | None = None
    holder: Holder = field(default_factory=Holder)
    detached: bool = False
    # Drawn from a budget: the id of a held lease (a job's) whose amounts cap this one
    # and everything else drawn from it, and the budget's key, the proof of membership
    # (core/budgets.py). Such a request never waits in the cluster's queue.
    within: str | None = None
    within_key: str | None = field(default=None, repr=False, compare=False)
    # A gang: two or more bundles of node resources, granted all at once or not at all,
    # each on a node the strategy allows; ``resources`` is their sum (what the tenant is
    # charged). Empty for a one-node request.
    bundles: tuple[Amounts, ...] = ()
    strategy: str = "PACK"
    # Reserved in Ray (a placement group) before the grant is told, rather than at its
    # holder's first use: gangs, queued jobs, ``reserve=True``, or the policy's choice.
    reserve: bool = False
    shape: tuple[Any, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        shape: tuple[Any, ...] = (
            tuple(sorted(self.resources.items())),
            tuple(sorted(self.pools.items())),
            self.tenant,
            self.node,
            self.within,
        )
        if self.bundles:
            # A gang fits where its bundles do, not where its sum does.
            shape += (tuple(tuple(sorted(b.items())) for b in self.bundles), self.strategy)
        object.__setattr__(self, "shape", shape)


def charged(resources: Amounts, pools: Amounts) -> Amounts:
    """What a request or lease charges its tenant: node resources and pool slots alike."""
    return {**resources, **pools} if pools else resources


def tenant_demand(request: Request) -> Amounts:
    return charged(request.resources, request.pools)


class LeaseState(str, enum.Enum):
    ACTIVE = "active"
    REVOKING = "revoking"  # revoked; the holder has until ``revoke_deadline`` to let go


@dataclass(slots=True)
class LeaseRecord:
    """A granted request. ``token`` is the holder's secret; never log it."""

    lease_id: str
    request_id: str
    token: str
    fencing_token: int
    node_id: str
    resources: Amounts
    pools: Amounts
    priority: int
    priority_name: str
    tenant: str
    ttl: float
    granted_at: float
    expires_at: float
    preemptible: bool
    holder: Holder
    detached: bool = False
    idempotency_key: str | None = None
    borrowed: bool = False
    state: LeaseState = LeaseState.ACTIVE
    revoke_reason: str | None = None
    revoke_deadline: float | None = None
    within: str | None = None  # the budget (a lease id) it is drawn from: core/budgets.py
    # A gang lease: where each bundle went, in the order asked (``node_id`` is the first
    # bundle's node, ``resources`` their sum). None for a one-node lease.
    bundles: list[Bundle] | None = None
    # Reserved in Ray before its grant was told (``Request.reserve``), and the id (hex)
    # of the Ray placement group that reserves it once one was made (the shell makes it,
    # the journal keeps it: ``core/journal.Reserved``).
    reserve: bool = False
    placement_group: str | None = None
    # Drawn from a budget that is a gang: the index of the budget's node it is on (among
    # the budget lease's ``nodes()``: the bundle of its placement group it runs in).
    # None: the budget's first, or drawn from none.
    within_bundle: int | None = None

    @property
    def listener(self) -> str | None:
        """Who hears of this lease's end: its manager's channel, else its holder process."""
        return channel_of(self.idempotency_key) or self.holder.key

    def fields(self) -> tuple[Any, ...]:
        """Every field as plain values, in declaration order (``from_fields`` inverts it).

        The one definition of a record's layout is the class itself: the wire
        (``actors/wire.py``) and the journal (``core/journal.py``) both carry records as
        this tuple of its fields, the holder as a tuple of its own and the state as text.
        """
        values = list(_record_values(self))
        values[_HOLDER] = _holder_values(self.holder)
        values[_STATE] = self.state.value
        return tuple(values)

    @classmethod
    def from_fields(cls, fields: tuple[Any, ...] | list[Any]) -> LeaseRecord:
        """The record ``fields()`` was taken from (lists accepted: JSON has no tuples)."""
        values = list(fields)
        if _OLDEST_LAYOUT <= len(values) < RECORD_FIELD_COUNT:
            # Written by an older version: the fields added since take their defaults
            # (drawn from no budget, a one-node lease).
            values.extend(_TRAILING_DEFAULTS[len(values) - RECORD_FIELD_COUNT :])
        if len(values) != RECORD_FIELD_COUNT:
            raise ValueError(f"a lease record has {RECORD_FIELD_COUNT} fields, got {len(fields)}")
        for index in _MAPPINGS:
            values[index] = dict(values[index])
        values[_HOLDER] = Holder(*values[_HOLDER])
        values[_STATE] = LeaseState(values[_STATE])
        if values[_BUNDLES] is not None:
            values[_BUNDLES] = [(str(node), dict(amounts)) for node, amounts in values[_BUNDLES]]
        return cls(*values)

    def placed(self) -> list[Bundle]:
        """Where it holds what: each bundle's node and amounts (one for a one-node lease)."""
        if self.bundles is None:
            return [(self.node_id, self.resources)]
        return self.bundles

    def nodes(self) -> list[str]:
        """The nodes it holds something on, each once, in bundle order."""
        if self.bundles is None:
            return [self.node_id]
        return list(dict.fromkeys(node_id for node_id, _ in self.bundles))

    def on_node(self, node_id: str) -> Amounts:
        """What it holds on ``node_id`` (nothing if none of its bundles is there)."""
        if self.bundles is None:
            return self.resources if node_id == self.node_id else {}
        held: Amounts = {}
        for where, amounts in self.bundles:
            if where == node_id:
                for resource, amount in amounts.items():
                    held[resource] = held.get(resource, 0) + amount
        return held

    def public(self) -> dict[str, Any]:
        """Everything but the secret token, for listings."""
        return {
            "lease_id": self.lease_id,
            "fencing_token": self.fencing_token,
            "node_id": self.node_id,
            "resources": dict(self.resources),
            "pools": dict(self.pools),
            "priority": self.priority_name,
            "tenant": self.tenant,
            "granted_at": self.granted_at,
            "expires_at": self.expires_at,
            "preemptible": self.preemptible,
            "state": self.state.value,
            "within": self.within,
            "placement_group": self.placement_group,
            "bundles": [
                {"node_id": node_id, "resources": dict(amounts)}
                for node_id, amounts in self.placed()
            ],
            "holder": {
                "pid": self.holder.pid,
                "node_id": self.holder.node_id,
                "job_id": self.holder.job_id,
                "actor_id": self.holder.actor_id,
            },
        }


RECORD_FIELDS = tuple(f.name for f in dataclass_fields(LeaseRecord))
RECORD_FIELD_COUNT = len(RECORD_FIELDS)
_record_values = attrgetter(*RECORD_FIELDS)  # one C-level call per record on the wire
_holder_values = attrgetter(*(f.name for f in dataclass_fields(Holder)))
_HOLDER = RECORD_FIELDS.index("holder")
_STATE = RECORD_FIELDS.index("state")
_MAPPINGS = (RECORD_FIELDS.index("resources"), RECORD_FIELDS.index("pools"))
_BUNDLES = RECORD_FIELDS.index("bundles")
# Fields added after the first layout, with their defaults, oldest first: a record
# written before them is read back with these (``from_fields``).
# within, bundles, reserve, placement_group, within_bundle
_TRAILING_DEFAULTS: tuple[Any, ...] = (None, None, False, None, None)
_OLDEST_LAYOUT = RECORD_FIELD_COUNT - len(_TRAILING_DEFAULTS)


@dataclass(frozen=True, slots=True)
class NodeSample:
    """What a node agent measured: the basis of pressure and health."""

    memory_percent: float
    cpu_percent: float
    memory_available: int | None = None
    disk_percent: float | None = None


# -- decisions -----------------------------------------------------------------
# Decisions are read, never changed, but not ``frozen``: a frozen dataclass costs three
# times as much to create, and two of them are created per grant and release.


class RejectReason(str, enum.Enum):
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    NODE_LOST = "node_lost"
    INFEASIBLE = "infeasible"
    HOLDER_DIED = "holder_died"  # the process that waited died
    JOB_ENDED = "job_ended"  # the Ray job of the process that waited ended
    BUDGET_ENDED = "budget_ended"  # the budget it was to be drawn from ended


class RevokeCause(str, enum.Enum):
    """Why a holder is asked to let go (``Revoke.reason`` says it in words)."""

    PREEMPTED = "preempted"  # a higher-priority request needs the capacity
    PRESSURE = "pressure"  # the node's measured use passed the policy's high mark
    BUDGET = "budget"  # the budget it was drawn from is being taken back


class ReclaimReason(str, enum.Enum):
    RELEASED = "released"
    EXPIRED = "expired"
    REVOKED = "revoked"  # the grace period of a revocation ran out
    HOLDER_DIED = "holder_died"
    JOB_ENDED = "job_ended"
    NODE_LOST = "node_lost"
    CANCELLED = "cancelled"  # granted to a waiter that had already given up
    UNCLAIMED = "unclaimed"  # restored after a restart; its manager said it does not hold it
    BUDGET_ENDED = "budget_ended"  # the budget it was drawn from ended (its job's lease)


@dataclass(slots=True)
class Grant:
    request_id: str
    lease: LeaseRecord
    waited: float


@dataclass(slots=True)
class Reject:
    request_id: str
    reason: RejectReason
    message: str


@dataclass(slots=True)
class Revoke:
    """The holder must let go by ``deadline``; the capacity is reclaimed then at the latest."""

    lease_id: str
    node_id: str
    reason: str
    deadline: float
    cause: RevokeCause
    tell: str | None = None  # who must hear it: the lease's listener (as ``Reclaim.tell``)


@dataclass(slots=True)
class Reclaim:
    """The lease is gone and its capacity is free again.

    ``tell`` names who must hear of it (``LeaseRecord.listener``: the manager channel
    that asked for the lease, else the holder process): set unless that one gave the
    lease back itself (its own release, a cancel), so that a lease released by anybody
    else with its token, expired, or taken back is never still believed held.
    """

    lease_id: str
    node_id: str
    reason: ReclaimReason
    tell: str | None = None


Decision: TypeAlias = Grant | Reject | Revoke | Reclaim
