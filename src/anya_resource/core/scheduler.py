"""The scheduler state machine: events in, decisions out.

Every method takes the time as an argument and returns the decisions its event
led to (``Grant``, ``Reject``, ``Revoke``, ``Reclaim``); the caller carries them
out. Bad input raises (``InvalidRequest``, ``Infeasible``, ``NotLeaseHolder``...)
before anything changes.

The queue is kept *settled*: after every event, no waiting request fits where
it may go. That is what lets a new request be granted at once when it fits
(nobody waiting could have used that room), and lets a release look only at the
node, pools and tenant it freed.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from anya_resource.config import Policy
from anya_resource.core import views
from anya_resource.core.bottleneck import find_bottlenecks
from anya_resource.core.budgets import Budget, Budgets, what_if_within
from anya_resource.core.journal import (
    Ended,
    Entry,
    Extended,
    Granted,
    Rebound,
    Recovered,
    Refused,
    Revoking,
    encode_snapshot,
)
from anya_resource.core.leases import (
    BUDGET_KEY_PREFIX,
    LeaseTable,
    TokenMinter,
    check_token,
    new_secret,
)
from anya_resource.core.ledger import NodeLedger, PoolLedger, reserve_for
from anya_resource.core.model import (
    NODE_RESOURCES,
    Amounts,
    Decision,
    Grant,
    Holder,
    LeaseRecord,
    LeaseState,
    NodeSample,
    Reclaim,
    ReclaimReason,
    Reject,
    RejectReason,
    Request,
    Revoke,
    charged,
    tenant_demand,
)
from anya_resource.core.placement import Placer
from anya_resource.core.positions import positions
from anya_resource.core.preemption import choose_victims
from anya_resource.core.quotas import TenantQuota
from anya_resource.core.waitqueue import Waiter, WaitQueue
from anya_resource.core.whatif import WhatIf, what_if
from anya_resource.errors import (
    Infeasible,
    InvalidRequest,
    LeaseExpired,
    LeaseRevoked,
    NotLeaseHolder,
    Overloaded,
)
from anya_resource.quantities import format_amount

WAIT_SAMPLES = 2048  # recent waits kept per priority class, for percentiles
KEY_MEMORY = 100_000  # idempotency keys remembered
NEVER_FITS_MEMORY = 4096
MAX_WAITING = 1_000_000  # requests waiting at once in the whole queue (~1 KB each here)
MANAGER_PREFIX_MIN = 8  # a census names its manager by a prefix no shorter than this  # shapes whose feasibility is remembered until the nodes change


@dataclass(slots=True)
class Reservation:
    """What the blocked head of the queue holds back from everyone else."""

    request_id: str
    node_id: str | None
    nodes: dict[str, Amounts]
    pools: Amounts
    tenant: str
    tenant_amounts: Amounts
    # The head's own tenant is at its hard limit: until that tenant gives something back
    # the head cannot run wherever capacity is, so it holds no node capacity or pool
    # slots (that would only keep other tenants waiting) and preempts nobody.
    tenant_limited: bool = False


@dataclass(slots=True)
class Freed:
    """Where capacity came back since the last pass (``everything`` for a full pass)."""

    nodes: set[str] = field(default_factory=set)
    pools: set[str] = field(default_factory=set)
    tenants: set[str] = field(default_factory=set)
    everything: bool = False
    # Budgets something drawn from them came back to (core/budgets.py): what they free
    # is for their own waiters only, so it is not part of the cluster's truth value.
    budgets: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return self.everything or bool(self.nodes or self.pools or self.tenants)


@dataclass(slots=True)
class Counters:
    submitted: int = 0
    granted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    reclaimed: dict[str, int] = field(default_factory=dict)
    revoked: dict[str, int] = field(default_factory=dict)


class Scheduler:
    def __init__(
        self,
        policy: Policy,
        *,
        epoch: int = 0,
        secret: bytes | None = None,
    ) -> None:
        self.policy = policy
        self.nodes: dict[str, NodeLedger] = {}
        self.placer = Placer(policy.placement)
        self.pools = {name: PoolLedger(name, p.size) for name, p in policy.pools.items()}
        self.tenants = {n: TenantQuota.from_policy(n, t) for n, t in policy.tenants.items()}
        self.queue = WaitQueue(policy.aging.per_second, policy.aging.max_boost)
        self.leases = LeaseTable(epoch, TokenMinter(secret if secret is not None else new_secret()))
        # What changed in the set of leases since the caller last took it: the journal's
        # entries, written before any decision they carry is told (core/journal.py).
        self.journal: list[Entry] = []
        self.reservation: Reservation | None = None
        self.budgets = Budgets()  # what jobs draw from their leases (core/budgets.py)
        self.counters = Counters()
        self.waits: dict[str, deque[float]] = {}
        self.waiting_demand: Amounts = {}
        self.samples: dict[str, NodeSample] = {}  # the last measured use of each node
        self._keys: dict[str, tuple[str, str]] = {}  # idempotency key -> (kind, id)
        self._revocations: list[tuple[float, str]] = []
        self._revoking_for: dict[str, set[str]] = {}  # head request -> leases revoked for it
        self._preempt_memo: tuple[str, int, int, bool] | None = None
        self._preempt_dirty: set[str] = set()
        self._sequence = 0
        self._maybe_idle: set[str] = set()  # tenants not in the policy that gave back
        self._never_fits: dict[tuple[Any, ...], str | None] = {}  # shape -> reason; see never_fits

    # -- nodes ------------------------------------------------------------------

    def node_up(self, node_id: str, capacity: Mapping[str, int], now: float) -> list[Decision]:
        """A node joined (or reported a new capacity)."""
        capacity = {r: int(capacity.get(r, 0)) for r in NODE_RESOURCES}
        if any(v < 0 for v in capacity.values()):
            raise InvalidRequest(f"node {node_id}: negative capacity {capacity}")
        self._never_fits.clear()
        node = self.nodes.get(node_id)
        if node is None:
            node = NodeLedger(node_id, capacity, reserve_for(capacity, self.policy.reserve))
            self.nodes[node_id] = node
            self.placer.add(node)
            return self._settle(now, Freed(nodes={node_id}))
        shrank = any(capacity[r] < node.capacity.get(r, 0) for r in NODE_RESOURCES)
        node.resize(capacity, reserve_for(capacity, self.policy.reserve))
        self.placer.resized(node)
        self._preempt_dirty.add(node.node_id)
        decisions: list[Decision] = []
        freed = Freed(nodes={node_id})
        if shrank:
            # As at node_down: what can never fit any more is rejected, not left waiting,
            # and the head's hold is placed again (this node may be too small for it now).
            for waiter in list(self.queue.by_id.values()):
                if (reason := self.never_fits(waiter.request)) is not None:
                    self._reject(waiter, RejectReason.INFEASIBLE, reason, decisions)
            self.reservation = None
            freed.everything = True
        decisions.extend(self._settle(now, freed))
        return decisions

    def sync_nodes(self, alive: Mapping[str, Mapping[str, int]], now: float) -> list[Decision]:
        """Ray's list of alive nodes (id -> capacity): joins, losses, and lost holders.

        A node that left goes as at ``node_down``. So do the leases of processes that
        lived on a node that is not alive, wherever those leases were granted: a request
        still in flight from such a process may have been granted after its node went
        (or while this coordinator did not know the node), and no agent is left there to
        report its holder's death.
        """
        decisions: list[Decision] = []
        for node_id in [n for n in self.nodes if n not in alive]:
            decisions.extend(self.node_down(node_id, now))
        for node_id in sorted(alive):
            if node_id not in self.nodes:
                decisions.extend(self.node_up(node_id, alive[node_id], now))
        orphaned = [n for n in self.leases.holders_by_node if n not in alive]
        if orphaned:
            freed = Freed(everything=True)
            for node_id in orphaned:
                self._reclaim_holders_on(node_id, decisions, freed)
            decisions.extend(self._settle(now, freed))
        return decisions

    def _reclaim_holders_on(self, node_id: str, decisions: list[Decision], freed: Freed) -> None:
        """The leases of every process that lived on ``node_id`` (gone with it)."""
        for key in list(self.leases.holders_by_node.get(node_id, {})):
            for lease_id in list(self.leases.by_holder.get(key, ())):
                self._reclaim_id(lease_id, ReclaimReason.NODE_LOST, decisions, freed)

    def node_down(self, node_id: str, now: float) -> list[Decision]:
        """A node is gone: its leases are reclaimed, its waiters placed again or rejected."""
        node = self.nodes.pop(node_id, None)
        if node is None:
            return []
        self._never_fits.clear()
        node.alive = False
        self.placer.remove(node_id)
        self.samples.pop(node_id, None)
        decisions: list[Decision] = []
        freed = Freed(everything=True)
        for lease in list(self.leases.by_node.get(node_id, {}).values()):
            self._reclaim(lease, ReclaimReason.NODE_LOST, decisions, freed)
        # Processes on the node are gone with it: so are the leases they held elsewhere
        # (nobody is left there to report their death).
        self._reclaim_holders_on(node_id, decisions, freed)
        if self.reservation is not None and self.reservation.node_id == node_id:
            self.reservation = None
        for waiter in list(self.queue.by_id.values()):
            request = waiter.request
            if request.node == node_id:
                self._reject(waiter, RejectReason.NODE_LOST, f"node {node_id} left", decisions)
            elif (reason := self.never_fits(request)) is not None:
                self._reject(waiter, RejectReason.INFEASIBLE, reason, decisions)
        decisions.extend(self._settle(now, freed))
        return decisions

    def health(self, node_id: str, sample: NodeSample, now: float) -> list[Decision]:
        """A node's measured use: pressure with hysteresis, and revocations under it."""
        node = self.nodes.get(node_id)
        if node is None:
            return []
        self.samples[node_id] = sample
        pressure = self.policy.pressure
        was = set(node.pressured)
        _hysteresis(
            node, "memory", sample.memory_percent, pressure.memory_high, pressure.memory_low
        )
        if pressure.cpu_high is not None and pressure.cpu_low is not None:
            _hysteresis(node, "cpu", sample.cpu_percent, pressure.cpu_high, pressure.cpu_low)
        busiest = max(sample.memory_percent, sample.cpu_percent)
        node.health_factor = max(0.05, 1.0 - busiest / 200.0)
        decisions: list[Decision] = []
        for resource in node.pressured:
            self._revoke_for_pressure(node, resource, now, decisions)
        if was - node.pressured:
            self.placer.note_freed(node)
            self._preempt_dirty.add(node.node_id)
            decisions.extend(self._settle(now, Freed(nodes={node_id})))
        return decisions

    # -- requests -----------------------------------------------------------------

    def submit(self, request: Request, now: float) -> tuple[str, list[Decision]]:
        """Queue ``request``; returns its id and what was decided at once.

        A retried request (same idempotency key) returns the first one's id and
        its grant, if it had one: never a second grant.
        """
        if request.idempotency_key is not None:
            known = self._keys.get(request.idempotency_key)
            if known is not None:
                return self._replay(request.idempotency_key, known)
        budget = self._budget_for(request) if request.within is not None else None
        if budget is None:
            self._check_node(request)
        reason = self.never_fits(request) if budget is None else budget.never_fits(request)
        if reason is not None:
            raise Infeasible(reason)
        if len(self.queue) + len(self.budgets.waiters) >= MAX_WAITING:
            raise Overloaded(
                f"{len(self.queue):,} requests wait already, the most the queue takes "
                f"({MAX_WAITING:,}); try again later, or with timeout=0"
            )
        self._sequence += 1
        request_id = f"req-{self.leases.epoch}-{self._sequence}"
        deadline = None if request.timeout is None else now + request.timeout
        waiter = Waiter(request_id, request, now, deadline, self._sequence)
        self.counters.submitted += 1
        if request.idempotency_key is not None:
            self._remember_key(request.idempotency_key, ("request", request_id))
        decisions: list[Decision] = []
        if budget is not None:
            self._submit_within(waiter, budget, now, decisions)
            return request_id, decisions
        outranks = self._outranks_head(waiter, now)
        held = None if outranks else self.reservation
        node = self.place(request, held, None)
        if node is not None:
            self._grant(waiter, node, now, decisions)
            return request_id, decisions
        if request.timeout == 0:
            self._reject(waiter, RejectReason.TIMEOUT, "no capacity now and timeout=0", decisions)
            return request_id, decisions
        self._enqueue(waiter)
        if outranks:
            decisions.extend(self._settle(now, Freed(everything=True)))
        return request_id, decisions

    def _budget_for(self, request: Request) -> Budget:
        """The budget ``request`` is to be drawn from; raises if it cannot be."""
        lease_id = str(request.within)
        minter = self.leases.minter
        if not minter.genuine(BUDGET_KEY_PREFIX + lease_id, request.within_key):
            raise NotLeaseHolder(
                f"within: not the key of budget {lease_id}; expected the key the budget's "
                "holder was given (ANYA_RESOURCE_BUDGET in a queued job's environment)"
            )
        lease = self.leases.active.get(lease_id)
        if lease is None:
            raise LeaseExpired(
                f"within: the budget lease {lease_id} has ended (its job ended or was "
                "preempted); nothing more can be drawn from it"
            )
        if lease.within is not None:
            raise InvalidRequest(
                f"within: lease {lease_id} is itself drawn from a budget; expected the "
                f"budget's own lease ({lease.within})"
            )
        if lease.state is LeaseState.REVOKING:
            raise LeaseRevoked(
                f"within: the budget lease {lease_id} is being taken back "
                f"({lease.revoke_reason}); nothing more can be drawn from it"
            )
        if request.node is not None and request.node != lease.node_id:
            raise InvalidRequest(
                f"node: {request.node!r}, but the budget lease {lease_id} holds its "
                f"capacity on node {lease.node_id}; expected that node or none"
            )
        return self.budgets.open(lease)

    def budget_key(self, lease_id: str, token: object) -> str:
        """The key that lets others draw from lease ``lease_id`` (core/budgets.py)."""
        lease = self._active_or_genuine(lease_id, token)
        if lease is None:
            raise LeaseExpired(f"lease {lease_id} has ended; it can be no budget")
        if lease.within is not None:
            raise InvalidRequest(
                f"lease {lease_id} is drawn from the budget {lease.within}; a budget is a "
                "lease of the cluster's own"
            )
        return self.leases.minter.budget_key(lease_id)

    def _submit_within(
        self, waiter: Waiter, budget: Budget, now: float, decisions: list[Decision]
    ) -> None:
        """Grant from the budget if it fits and nobody waiting there comes first."""
        if budget.fits(waiter.request) and budget.comes_first(waiter):
            self._grant_within(waiter, budget, now, decisions)
        elif waiter.request.timeout == 0:
            message = f"the job's budget ({budget.lease_id}) has no room now and timeout=0"
            self._reject(waiter, RejectReason.TIMEOUT, message, decisions)
        else:
            self.budgets.wait(budget, waiter)

    def cancel(self, request_id: str, now: float) -> list[Decision]:
        """The waiter gave up. If its grant crossed the cancel, the grant goes back."""
        decisions: list[Decision] = []
        drawing = self.budgets.waiters.get(request_id)
        if drawing is not None:
            self._reject(drawing[0], RejectReason.CANCELLED, "cancelled by the caller", decisions)
            # A first waiter holds back the ones behind it in its budget.
            decisions.extend(self._settle(now, Freed(budgets={drawing[1].lease_id})))
            return decisions
        waiter = self.queue.by_id.get(request_id)
        if waiter is not None:
            was_head = self.reservation is not None and self.reservation.request_id == request_id
            self._reject(waiter, RejectReason.CANCELLED, "cancelled by the caller", decisions)
            # Only the head holds anything back from the others.
            decisions.extend(self._settle(now, Freed(everything=was_head)))
            return decisions
        lease = self._lease_of_request(request_id)
        if lease is not None:
            freed = Freed()
            self._reclaim(lease, ReclaimReason.CANCELLED, decisions, freed)
            decisions.extend(self._settle(now, freed))
        return decisions

    def cancel_key(self, key: str, now: float) -> list[Decision]:
        """Cancel by idempotency key, whatever became of the request.

        A key not seen yet is remembered as cancelled, so the request, if it is still
        on its way, is refused when it arrives instead of being granted to nobody.
        """
        known = self._keys.get(key)
        if known is None:
            outcome = "cancelled:cancelled before it arrived"
            self._remember_key(key, ("rejected", outcome))
            # Durable: the request may still arrive at the next coordinator (Ray holds
            # calls made while an actor restarts), and must be refused there too.
            self.journal.append(Refused(key, outcome))
            return []
        kind, ident = known
        if kind == "request":
            return self.cancel(ident, now)
        lease = self.leases.active.get(ident) if kind == "lease" else None
        if lease is None:
            return []
        return self.cancel(lease.request_id, now)

    def release(
        self, lease_id: str, token: object, now: float, by: str | None = None
    ) -> list[Decision]:
        """The lease is given back (``by``: the releaser's channel). Idempotent.

        A lease that already ended, here or before a restart, is a no-op for whoever
        has its token: the token itself proves the cluster issued it. When ``by`` is
        not the lease's listener, the listener is told (``Reclaim.tell``): it must not
        go on believing it holds the lease.
        """
        lease = self._active_or_genuine(lease_id, token)
        if lease is None:
            return []
        decisions: list[Decision] = []
        freed = Freed()
        self._reclaim(lease, ReclaimReason.RELEASED, decisions, freed, by=by)
        decisions.extend(self._settle(now, freed))
        return decisions

    def _active_or_genuine(self, lease_id: object, token: object) -> LeaseRecord | None:
        """The active lease ``lease_id`` if ``token`` is its own; None if it ended.

        Raises ``NotLeaseHolder`` for a token this cluster never gave ``lease_id``.
        """
        if not isinstance(lease_id, str):
            raise InvalidRequest(f"lease_id: got {lease_id!r}, expected a lease id string")
        lease = self.leases.active.get(lease_id)
        if lease is not None:
            check_token(lease_id, lease.token, token)
            return lease
        if not self.leases.minter.genuine(lease_id, token):
            raise NotLeaseHolder(
                f"lease {lease_id}: not a lease this cluster issued with that token; "
                "expected the id and secret token returned with a grant"
            )
        return None

    def renew(
        self, lease_id: str, token: object, now: float, ttl: float | None = None
    ) -> LeaseRecord:
        """Push the lease's expiry to ``now + ttl``; says if it was revoked or expired.

        A renewal is also the holder's claim on a lease restored after a restart.
        """
        lease = self._active_or_genuine(lease_id, token)
        if lease is None:
            ended = self.leases.ended.get(lease_id)
            if ended is None:
                raise LeaseExpired(
                    f"lease {lease_id} is no longer active (it ended before the coordinator "
                    "restarted); acquire anew"
                )
            if ended.reason in (ReclaimReason.EXPIRED, ReclaimReason.RELEASED):
                raise LeaseExpired(f"lease {lease_id} ended ({ended.reason.value}); acquire anew")
            reason = ended.revoke_reason or ended.reason.value
            raise LeaseRevoked(f"lease {lease_id} was taken back: {reason}")
        self.leases.unconfirmed.discard(lease_id)
        if lease.state is LeaseState.REVOKING:
            raise LeaseRevoked(
                f"lease {lease_id} was revoked ({lease.revoke_reason}); release it by "
                f"{lease.revoke_deadline}"
            )
        if now >= lease.expires_at:
            # Not renewed within its TTL: the next tick reclaims it; it is never revived.
            raise LeaseExpired(f"lease {lease_id} expired at {lease.expires_at}; acquire anew")
        if ttl is None:
            ttl = lease.ttl
        elif (
            isinstance(ttl, bool)
            or not isinstance(ttl, int | float)
            or not 0 < ttl <= self.policy.lease.max_ttl
        ):
            raise InvalidRequest(f"ttl: got {ttl!r}, expected (0, {self.policy.lease.max_ttl}]")
        if ttl > lease.ttl:
            # Past what a restart would give it (a full TTL from then): kept, so that the
            # holder is never cut short of what it was promised.
            self.journal.append(Extended(lease_id, now + ttl))
        self.leases.extend(lease, now + ttl)
        return lease

    def tick(self, now: float) -> list[Decision]:
        """Time passed: expiries, timeouts, revocation deadlines, aging."""
        decisions: list[Decision] = []
        freed = Freed()
        self._forget_idle_tenants()
        for lease in self.leases.expired(now):
            self._reclaim(lease, ReclaimReason.EXPIRED, decisions, freed)
        while self._revocations and self._revocations[0][0] <= now:
            _, lease_id = heapq.heappop(self._revocations)
            revoked = self.leases.active.get(lease_id)
            if revoked is not None and revoked.state is LeaseState.REVOKING:
                self._reclaim(revoked, ReclaimReason.REVOKED, decisions, freed)
        for waiter in self.queue.overdue(now):
            self._reject(waiter, RejectReason.TIMEOUT, "timed out waiting", decisions)
            freed.everything = True  # its reservation, if it had one, is free again
        for waiter in self.budgets.overdue(now):
            self._reject(waiter, RejectReason.TIMEOUT, "timed out waiting", decisions)
            freed.budgets.add(str(waiter.request.within))  # it may have blocked others
        head = self.queue.best(now)
        if head is not None and (
            self.reservation is None or self.reservation.request_id != head.request_id
        ):
            freed.everything = True  # aging changed who is first
        decisions.extend(self._settle(now, freed))
        return decisions

    def rebind(self, lease_id: str, token: object, holder: Holder, now: float) -> LeaseRecord:
        """Hand ``lease`` over to another process (a ``@leased`` task's worker).

        The new holder's death reclaims it from now on; the old holder's does not.
        """
        lease = self.renew(lease_id, token, now)
        self.leases.rebind(lease, holder)
        self.journal.append(Rebound(lease_id, holder))
        return lease

    def confirm(self, lease_id: str, token: object, now: float) -> LeaseRecord:
        """The holder claims a lease after a restart (renewing it): proof by its token.

        Raises ``NotLeaseHolder`` for a lease this cluster never issued with that
        token, ``LeaseExpired`` / ``LeaseRevoked`` for one that has ended.
        """
        return self.renew(lease_id, token, now)

    def claim(
        self,
        manager: str,
        held: Iterable[tuple[str, object]],
        waiting: Iterable[str],
        now: float,
    ) -> tuple[dict[str, float | None], list[Decision]]:
        """A client manager's whole account after a restart (the census).

        ``manager`` is the prefix of every idempotency key the manager makes, ``held``
        the ``(lease_id, token)`` of every lease it holds, ``waiting`` the keys of the
        acquires it still waits on. Each held lease is confirmed (its new expiry, or
        None if it ended); every other restored lease of this manager that none of its
        waiting acquires will claim is reclaimed (``UNCLAIMED``): its release, or its
        caller's giving up, was lost with the old coordinator. A wrong token raises
        ``NotLeaseHolder`` before anything changes.
        """
        if not isinstance(manager, str) or len(manager) < MANAGER_PREFIX_MIN:
            raise InvalidRequest(
                f"manager: got {manager!r}, expected the manager's key prefix "
                f"(at least {MANAGER_PREFIX_MIN} characters)"
            )
        pairs = list(held)
        for lease_id, token in pairs:
            self._active_or_genuine(lease_id, token)  # all checked before any change
        results: dict[str, float | None] = {}
        for lease_id, token in pairs:
            try:
                results[lease_id] = self.confirm(lease_id, token, now).expires_at
            except (LeaseExpired, LeaseRevoked):
                results[lease_id] = None
        keep = set(waiting)
        decisions: list[Decision] = []
        freed = Freed()
        for lease_id in sorted(self.leases.unconfirmed):
            lease = self.leases.active.get(lease_id)
            if lease is None:
                continue  # it ended in this loop, with the budget it was drawn from
            key = lease.idempotency_key
            if key is not None and key.startswith(manager) and key not in keep:
                self._reclaim(lease, ReclaimReason.UNCLAIMED, decisions, freed, by=lease.listener)
        decisions.extend(self._settle(now, freed))
        return results, decisions

    def holders_on(self, node_id: str) -> list[Holder]:
        """The holder processes on ``node_id`` whose death its agent must report."""
        return list(self.leases.holders_by_node.get(node_id, {}).values())

    def holder_died(self, holder_key: str, now: float) -> list[Decision]:
        """Everything a dead process held or waited for goes back."""
        return self._end_all(
            self.leases.by_holder.get(holder_key, ()),
            ReclaimReason.HOLDER_DIED,
            lambda request: request.holder.key == holder_key,
            "the waiting process died",
            now,
        )

    def job_ended(self, job_id: str, now: float) -> list[Decision]:
        """A Ray job finished: its leases go back, except detached ones."""
        return self._end_all(
            self.leases.by_job.get(job_id, ()),
            ReclaimReason.JOB_ENDED,
            lambda request: request.holder.job_id == job_id and not request.detached,
            f"job {job_id} ended",
            now,
        )

    def _end_all(
        self,
        lease_ids: Iterable[str],
        reason: ReclaimReason,
        waits_for: Callable[[Request], bool],
        message: str,
        now: float,
    ) -> list[Decision]:
        """Reclaim ``lease_ids`` and reject the waiters ``waits_for`` picks out."""
        decisions: list[Decision] = []
        freed = Freed()
        for lease_id in list(lease_ids):
            self._reclaim_id(lease_id, reason, decisions, freed)
        for waiter in list(self.queue.by_id.values()):
            if waits_for(waiter.request):
                self._reject(waiter, RejectReason.HOLDER_DIED, message, decisions)
                freed.everything = True
        for waiter, budget in list(self.budgets.waiters.values()):
            if waits_for(waiter.request):
                self._reject(waiter, RejectReason.HOLDER_DIED, message, decisions)
                freed.budgets.add(budget.lease_id)
        decisions.extend(self._settle(now, freed))
        return decisions

    def restore(self, recovered: Recovered, now: float) -> list[Decision]:
        """Recovery: put back what the journal kept, before anything new is granted.

        Each lease is counted once (the journal holds each id once) and gets a full TTL
        from ``now``: its holder could not renew while the coordinator was down. Until
        its holder claims it (``confirm``, a renewal, a retried acquire), a restored
        lease is *unconfirmed*; its holder's death (reported by the agent of its node,
        which learns whom to watch from here), its job's end or its TTL reclaim it. A
        lease on a node that is not alive is reclaimed at once. A lease that no longer
        fits (its node came back smaller) is kept, and blocks new grants there until
        enough is released.
        """
        decisions: list[Decision] = []
        leases = self.leases
        leases.highest_fencing = max(leases.highest_fencing, recovered.highest_fencing)
        for key, outcome in recovered.refused.items():
            self._remember_key(key, ("rejected", outcome))
        # Budgets' own leases first: what is drawn from one is counted in it.
        ordered = sorted(recovered.leases.values(), key=lambda lease: lease.within is not None)
        for lease in ordered:
            if lease.lease_id in leases.active:
                continue
            lease.token = leases.minter.mint(lease.lease_id)
            lease.expires_at = max(lease.expires_at, now + lease.ttl)
            node = self.nodes.get(lease.node_id)
            gone = (
                ReclaimReason.NODE_LOST
                if node is None
                else ReclaimReason.BUDGET_ENDED
                if lease.within is not None and lease.within not in leases.active
                else None
            )
            if gone is not None:
                self.journal.append(Ended(lease.lease_id))
                decisions.append(Reclaim(lease.lease_id, lease.node_id, gone, self._tell(lease)))
                continue
            assert node is not None
            if lease.within is not None:
                self.budgets.open(leases.active[lease.within]).charge(lease)
            else:
                self._charge(lease, node)
                node.mark_overcommit(lease.resources)
            leases.add(lease)
            if not lease.detached:
                leases.unconfirmed.add(lease.lease_id)
            if lease.idempotency_key is not None:
                self._remember_key(lease.idempotency_key, ("lease", lease.lease_id))
            if lease.state is LeaseState.REVOKING and lease.revoke_deadline is not None:
                heapq.heappush(self._revocations, (lease.revoke_deadline, lease.lease_id))
        return decisions

    def take_journal(self) -> list[Entry]:
        """The entries made since the last call (the caller commits them)."""
        entries, self.journal = self.journal, []
        return entries

    def journal_snapshot(self) -> bytes:
        """Every lease and refusal as the journal's snapshot holds them."""
        return encode_snapshot(self.leases, self.refusals(), self.leases.highest_fencing)

    def refusals(self) -> dict[str, str]:
        """Idempotency keys refused before their request came: kept in the journal."""
        return {
            key: outcome
            for key, (kind, outcome) in self._keys.items()
            if kind == "rejected" and outcome.startswith("cancelled:cancelled before")
        }

    # -- queries -------------------------------------------------------------------------

    def snapshot(self, now: float) -> dict[str, Any]:
        """Capacity, granted, free and waiting per node, resource, pool and tenant."""
        snap = views.snapshot(self, now)
        snap["bottlenecks"] = find_bottlenecks(snap)
        return snap

    def what_if(self, request: Request, count: int, now: float) -> WhatIf:
        """How many of ``count`` such requests would be granted now; changes nothing."""
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 100_000:
            raise InvalidRequest(f"count: got {count!r}, expected a whole number in [1, 100000]")
        if request.within is not None:
            return what_if_within(self._budget_for(request), request, count)
        self._check_node(request)
        return what_if(self, request, count, now)

    def revoking_for(self, request_id: str) -> set[str]:
        """The ids of the leases being taken back for the waiting ``request_id``."""
        return set(self._revoking_for.get(request_id, ())) & self.leases.active.keys()

    def queue_positions(self, actor_ids: Iterable[str], now: float) -> dict[str, Any]:
        """Where the requests held by these actors wait, and why (core/positions.py)."""
        return positions(self, set(actor_ids), now)

    def budget_list(self) -> dict[str, dict[str, Any]]:
        """Per budget in use (by its lease id): its amounts, what is drawn, who waits."""
        return {lease_id: budget.view() for lease_id, budget in self.budgets.by_lease.items()}

    def lease_list(self) -> list[dict[str, Any]]:
        """Every active lease, without tokens."""
        return [lease.public() for lease in self.leases]

    # -- the pass -------------------------------------------------------------------

    def _settle(self, now: float, freed: Freed) -> list[Decision]:
        """Grant what fits now, in priority order; keep the head's reservation."""
        decisions = self._settle_budgets(freed.budgets, now) if freed.budgets else []
        if not self.queue:
            self.reservation = None
            return decisions
        if not freed:
            return decisions
        held = self.reservation
        if (
            held is not None
            and not freed.everything
            and held.request_id in self.queue
            and self.queue.none_can_use(self._free_on(freed.nodes), freed.pools, freed.tenants)
        ):
            # The head still cannot run and nothing waiting can use what came back: all
            # that may change is whom the head preempts, which may move its hold.
            held_nodes = dict(held.nodes)
            self._reserve_for(self.queue.by_id[held.request_id], now, decisions)
            if self.reservation is held and held.nodes == held_nodes:
                return decisions
            _widen(freed, held, held_nodes)  # where it held back is free for others now
            held = self.reservation
        held_nodes = dict(held.nodes) if held is not None else {}
        keep = held if not freed.everything else None
        while True:
            # After a release, the reserved head stays first; aging may change who is
            # first only with time, and tick() passes over everything.
            kept = self.queue.by_id.get(keep.request_id) if keep is not None else None
            head: Waiter | None = kept if kept is not None else self.queue.best(now)
            keep = None
            if head is None:
                self.reservation = None
                return decisions
            node = self.place(head.request, None, None if freed.everything else freed)
            if node is None:
                break
            self._grant(head, node, now, decisions)
            if held is not None and self.reservation is not held:
                # The head's hold went with its grant: what it held back is free again.
                _widen(freed, held, held_nodes)
        self._reserve_for(head, now, decisions)
        if held is not None and (self.reservation is not held or held.nodes != held_nodes):
            _widen(freed, held, held_nodes)  # the hold moved (preemption chose another node)
        scope = None if freed.everything else freed
        if scope is None:
            bests = self.queue.group_bests(now)
        else:
            head_shape = head.request.shape
            rank = self.queue.rank
            most_free = self._most_free(scope.nodes)
            bests = []
            for shape, group in self.queue.groups.items():
                if shape == head_shape:
                    continue
                request = next(iter(next(iter(group.classes.values())).values())).request
                if (
                    request.resources
                    and request.tenant not in scope.tenants
                    and not scope.pools & request.pools.keys()
                    and any(a > most_free.get(r, 0) for r, a in request.resources.items())
                ):
                    continue
                if self.place(request, self.reservation, scope) is not None:
                    bests.append(min(group.heads(), key=lambda w: rank(w, now)))
            bests.sort(key=lambda w: rank(w, now))
        for best in bests:
            if best.request.shape != head.request.shape:
                self._grant_shape(best, scope, now, decisions)
        return decisions

    def _settle_budgets(self, lease_ids: Iterable[str], now: float) -> list[Decision]:
        """Within each budget, grant its waiters in order while the first one fits."""
        decisions: list[Decision] = []
        for lease_id in lease_ids:
            budget = self.budgets.by_lease.get(lease_id)
            if budget is None:
                continue
            while (best := budget.best()) is not None and budget.fits(best.request):
                self._grant_within(best, budget, now, decisions)
        return decisions

    def _free_on(self, node_ids: Iterable[str]) -> Callable[[str], list[int]]:
        """What is free of a resource on each of ``node_ids``, asked one resource at a time."""
        nodes = [node for node_id in node_ids if (node := self.nodes.get(node_id)) is not None]
        return lambda resource: [node.free(resource) for node in nodes]

    def _most_free(self, node_ids: Iterable[str]) -> dict[str, int]:
        """The most of each node resource free on any of ``node_ids``."""
        free_on = self._free_on(node_ids)
        return {r: max(frees) for r in NODE_RESOURCES if (frees := free_on(r))}

    def _grant_shape(
        self, waiter: Waiter, scope: Freed | None, now: float, decisions: list[Decision]
    ) -> None:
        """Grant waiters of one shape, best first, until one does not fit.

        One shape fits in the same places, so the first that does not fit tells
        for all the rest of that shape.
        """
        group = self.queue.groups[waiter.request.shape]
        current: Waiter | None = waiter
        while current is not None:
            node = self.place(current.request, self.reservation, scope)
            if node is None:
                return
            self._grant(current, node, now, decisions)
            current = (
                min(group.heads(), key=lambda w: self.queue.rank(w, now)) if group.classes else None
            )

    def place(
        self, request: Request, held: Reservation | None, scope: Freed | None
    ) -> NodeLedger | None:
        """The node ``request`` may be granted on now, outside ``held``; None if none."""
        for pool, slots in request.pools.items():
            ledger = self.pools[pool]
            reserved = held.pools.get(pool, 0) if held is not None else 0
            if ledger.in_use + reserved + slots > ledger.size:
                return None
        quota = self.tenants.get(request.tenant)
        if quota is not None:
            tenant_held = held.tenant_amounts if held and held.tenant == request.tenant else None
            if not quota.within_limit(tenant_demand(request), tenant_held):
                return None
        held_nodes = held.nodes if held is not None else {}
        if request.node is not None:
            node = self.nodes.get(request.node)
            if node is None or not node.fits(request.resources, held_nodes.get(node.node_id)):
                return None
            return node
        if not request.resources:
            return self._home_node(request)
        if (
            scope is not None
            and not scope.pools & request.pools.keys()
            and request.tenant not in scope.tenants
        ):
            freed_nodes = (self.nodes[i] for i in scope.nodes if i in self.nodes)
            return self.placer.best_among(freed_nodes, request.resources, held_nodes)
        return self.placer.choose(request.resources, held_nodes)

    def _home_node(self, request: Request) -> NodeLedger | None:
        """A pools-only lease is recorded on its holder's node (where the sockets live)."""
        home = self.nodes.get(request.holder.node_id or "")
        if home is not None:
            return home
        return next(iter(self.nodes.values()), None)

    def _reserve_for(self, head: Waiter, now: float, decisions: list[Decision]) -> None:
        request = head.request
        current = self.reservation
        quota = self.tenants.get(request.tenant)
        limited = quota is not None and not quota.within_limit(tenant_demand(request))
        if (
            current is not None
            and current.request_id == head.request_id
            and current.tenant_limited == limited
            and (current.node_id is None or current.node_id in self.nodes)
        ):
            if not limited:
                self._maybe_preempt(head, now, decisions)
            return
        if limited:
            # Only the tenant's own quota is held (so its later, smaller requests do not
            # overtake the head); capacity stays with the others until the tenant frees
            # some, when this is placed again (``tenant_limited`` no longer matches).
            self.reservation = Reservation(
                request_id=head.request_id,
                node_id=None,
                nodes={},
                pools={},
                tenant=request.tenant,
                tenant_amounts=tenant_demand(request),
                tenant_limited=True,
            )
            return
        node_id = request.node
        if node_id is None and request.resources:
            node_id = self._soonest_node(request.resources)
        self.reservation = Reservation(
            request_id=head.request_id,
            node_id=node_id,
            nodes={node_id: request.resources} if node_id and request.resources else {},
            pools=dict(request.pools),
            tenant=request.tenant,
            tenant_amounts=tenant_demand(request),
        )
        self._maybe_preempt(head, now, decisions)

    def _soonest_node(self, demand: Amounts) -> str | None:
        """The node with the smallest shortfall: where the head will fit soonest."""
        best_id, best_gap = None, float("inf")
        for node in self.placer.candidates(demand):
            gap = 0.0
            for resource, amount in demand.items():
                limit = node.limit(resource)
                if amount > limit:
                    gap = float("inf")
                    break
                gap += max(0, amount - node.free(resource)) / max(1, limit)
            if gap < best_gap:
                best_id, best_gap = node.node_id, gap
        return best_id

    def _maybe_preempt(self, head: Waiter, now: float, decisions: list[Decision]) -> None:
        pending = self._revoking_for.get(head.request_id)
        if pending:
            pending &= self.leases.active.keys()
            if pending:
                return  # wait for the leases already revoked for it
        effective = self.queue.effective(head, now)
        if self.leases.preemptible_count == 0:
            return
        request = head.request
        quota = self.tenants.get(request.tenant)
        reclaims = quota is not None and quota.below_guarantee(
            {**request.resources, **request.pools}
        )
        memo = (head.request_id, int(effective), len(self.nodes), reclaims)
        only: set[str] | None = None
        if memo == self._preempt_memo and not request.pools:
            if not self._preempt_dirty:
                return
            only = self._preempt_dirty
        self._preempt_dirty = set()
        plan = choose_victims(self, head.request, effective, only, fits_nowhere=True)
        if plan is None:
            self._preempt_memo = memo  # nothing changed since: nothing to find
            return
        node_id, victims = plan
        if node_id is not None and self.reservation is not None and head.request.resources:
            self.reservation.node_id = node_id
            self.reservation.nodes = {node_id: head.request.resources}
        reason = f"preempted for {head.request_id} ({head.request.priority_name})"
        for lease in victims:
            self._revoke(lease, reason, now, decisions)
            self.counters.revoked["preemption"] = self.counters.revoked.get("preemption", 0) + 1
        self._revoking_for[head.request_id] = {lease.lease_id for lease in victims}

    def _revoke_for_pressure(
        self, node: NodeLedger, resource: str, now: float, decisions: list[Decision]
    ) -> None:
        leases = self.leases.by_node.get(node.node_id, {}).values()
        if any(lease.state is LeaseState.REVOKING for lease in leases):
            return  # one at a time: let the last revocation take effect first
        candidates = [
            lease for lease in leases if lease.preemptible and lease.resources.get(resource, 0) > 0
        ]
        if not candidates:
            return
        victim = min(candidates, key=lambda lease: (lease.priority, -lease.granted_at))
        self._revoke(victim, f"{resource} pressure on node {node.node_id}", now, decisions)
        self.counters.revoked["pressure"] = self.counters.revoked.get("pressure", 0) + 1

    def _revoke(
        self, lease: LeaseRecord, reason: str, now: float, decisions: list[Decision]
    ) -> None:
        deadline = now + self.policy.lease.preemption_grace_s
        lease.state = LeaseState.REVOKING
        lease.revoke_reason = reason
        lease.revoke_deadline = deadline
        heapq.heappush(self._revocations, (deadline, lease.lease_id))
        self.journal.append(Revoking(lease.lease_id, reason, deadline))
        decisions.append(Revoke(lease.lease_id, lease.node_id, reason, deadline))
        budget = self.budgets.by_lease.get(lease.lease_id)
        if budget is not None:
            # What the job drew from it goes with it: its holders hear so now, and have
            # the same grace to let go.
            for drawn_id in sorted(budget.drawn):
                drawn = self.leases.active[drawn_id]
                if drawn.state is LeaseState.ACTIVE:
                    self._revoke(drawn, f"its job's budget: {reason}", now, decisions)

    # -- bookkeeping ------------------------------------------------------------------

    def _grant(
        self, waiter: Waiter, node: NodeLedger, now: float, decisions: list[Decision]
    ) -> None:
        request = waiter.request
        if waiter.request_id in self.queue:
            self._dequeue(waiter)
        # A tenant the policy does not name has no guarantee: all it holds is borrowed,
        # its first lease too (granted before it has a quota record).
        quota = self._quota(request.tenant)
        borrowed = quota.would_borrow(tenant_demand(request))
        lease = self._new_lease(waiter, node.node_id, request.tenant, request.preemptible, now)
        lease.borrowed = borrowed
        self._charge(lease, node)
        if self.reservation is not None and self.reservation.request_id == waiter.request_id:
            self.reservation = None
        self._revoking_for.pop(waiter.request_id, None)
        self._granted(waiter, lease, now, decisions)

    def _grant_within(
        self, waiter: Waiter, budget: Budget, now: float, decisions: list[Decision]
    ) -> None:
        """Grant from a budget: on its node, in its tenant, preemptible only with it."""
        self.budgets.unwait(waiter.request_id)
        lease = self._new_lease(waiter, budget.node_id, budget.tenant, False, now)
        lease.within = budget.lease_id
        budget.charge(lease)
        self._granted(waiter, lease, now, decisions)

    def _new_lease(
        self, waiter: Waiter, node_id: str, tenant: str, preemptible: bool, now: float
    ) -> LeaseRecord:
        request = waiter.request
        lease_id, fencing, token = self.leases.next_ids()
        # Positional: the keyword form costs twice as much, and this runs per grant.
        return LeaseRecord(
            lease_id,
            waiter.request_id,
            token,
            fencing,
            node_id,
            request.resources,
            request.pools,
            request.priority,
            request.priority_name,
            tenant,
            request.ttl,
            now,
            now + request.ttl,
            preemptible,
            request.holder,
            request.detached,
            request.idempotency_key,
        )

    def _granted(
        self, waiter: Waiter, lease: LeaseRecord, now: float, decisions: list[Decision]
    ) -> None:
        """Record a grant: the table, the key, the wait, the journal, the decision."""
        request = waiter.request
        self.leases.add(lease)
        if request.idempotency_key is not None:
            self._remember_key(request.idempotency_key, ("lease", lease.lease_id))
        waited = now - waiter.submitted_at
        samples = self.waits.get(request.priority_name)
        if samples is None:
            samples = self.waits[request.priority_name] = deque(maxlen=WAIT_SAMPLES)
        samples.append(waited)
        self.counters.granted += 1
        self.journal.append(Granted(lease))
        decisions.append(Grant(waiter.request_id, lease, waited))

    def _charge(self, lease: LeaseRecord, node: NodeLedger) -> None:
        if lease.preemptible:
            self._preempt_dirty.add(node.node_id)
        self.count_in(node, lease.resources, lease.pools, self._quota(lease.tenant))

    def count_in(
        self, node: NodeLedger, resources: Amounts, pools: Amounts, quota: TenantQuota | None
    ) -> None:
        """Count ``resources`` on ``node``, ``pools`` slots and ``quota``'s usage as taken."""
        node.take(resources)
        for pool, slots in pools.items():
            self.pools[pool].in_use += slots
        if quota is not None:
            quota.charge(charged(resources, pools))

    def count_out(
        self,
        node: NodeLedger | None,
        resources: Amounts,
        pools: Amounts,
        quota: TenantQuota | None,
    ) -> None:
        """Undo ``count_in`` (``node`` None: the node is gone, only pools and quota count)."""
        if node is not None:
            node.give_back(resources)
            self.placer.note_freed(node, resources)
        for pool, slots in pools.items():
            self.pools[pool].in_use -= slots
        if quota is not None:
            quota.refund(charged(resources, pools))

    def _reclaim(
        self,
        lease: LeaseRecord,
        reason: ReclaimReason,
        decisions: list[Decision],
        freed: Freed,
        by: str | None = None,
    ) -> None:
        if lease.lease_id not in self.leases.active:
            return  # it ended already, with the budget it was drawn from
        self.leases.remove(lease.lease_id, reason)
        self.journal.append(Ended(lease.lease_id))
        if lease.within is not None:
            budget = self.budgets.by_lease.get(lease.within)
            if budget is not None:
                budget.refund(lease)
                freed.budgets.add(budget.lease_id)
        else:
            self._count_back(lease, freed)
            budget = self.budgets.close(lease.lease_id)
            if budget is not None:
                self._end_budget(budget, decisions, freed)
        self.counters.reclaimed[reason.value] = self.counters.reclaimed.get(reason.value, 0) + 1
        tell = None if reason is ReclaimReason.CANCELLED else self._tell(lease, by)
        decisions.append(Reclaim(lease.lease_id, lease.node_id, reason, tell))

    def _reclaim_id(
        self, lease_id: str, reason: ReclaimReason, decisions: list[Decision], freed: Freed
    ) -> None:
        """``_reclaim`` by id: none if it ended already (with the budget it was drawn from)."""
        lease = self.leases.active.get(lease_id)
        if lease is not None:
            self._reclaim(lease, reason, decisions, freed)

    def _count_back(self, lease: LeaseRecord, freed: Freed) -> None:
        """A lease of the cluster ended: its node, pools and tenant have it back."""
        node = self.nodes.get(lease.node_id)
        self.count_out(node, lease.resources, lease.pools, self._quota(lease.tenant))
        if node is not None:
            self._preempt_dirty.add(node.node_id)
            freed.nodes.add(node.node_id)
        freed.pools.update(lease.pools)
        if lease.tenant not in self.policy.tenants:
            self._maybe_idle.add(lease.tenant)
        freed.tenants.add(lease.tenant)

    def _end_budget(self, budget: Budget, decisions: list[Decision], freed: Freed) -> None:
        """A budget's lease ended: what was drawn from it ends, its waiters are refused."""
        for lease_id in sorted(budget.drawn):
            self._reclaim_id(lease_id, ReclaimReason.BUDGET_ENDED, decisions, freed)
        message = f"the job's budget {budget.lease_id} it was to be drawn from ended"
        for waiter in list(budget.waiting.values()):
            self._reject(waiter, RejectReason.BUDGET_ENDED, message, decisions)

    @staticmethod
    def _tell(lease: LeaseRecord, by: str | None = None) -> str | None:
        """Who to tell that ``lease`` is gone: nobody if its listener let go itself."""
        listener = lease.listener
        return None if listener is not None and listener == by else listener

    def _quota(self, tenant: str) -> TenantQuota:
        quota = self.tenants.get(tenant)
        if quota is None:
            quota = self.tenants[tenant] = TenantQuota(tenant)
        return quota

    def _forget_idle_tenants(self) -> None:
        # Tenants named after Ray jobs come and go; don't keep them forever. Done at
        # the tick rather than at each release, so that a tenant that takes and gives
        # back all the time keeps one record instead of a new one per grant.
        for tenant in self._maybe_idle:
            quota = self.tenants.get(tenant)
            if quota is not None and not any(quota.usage.values()):
                del self.tenants[tenant]
        self._maybe_idle.clear()

    def _enqueue(self, waiter: Waiter) -> None:
        self.queue.push(waiter)
        for resource, amount in tenant_demand(waiter.request).items():
            self.waiting_demand[resource] = self.waiting_demand.get(resource, 0) + amount

    def _dequeue(self, waiter: Waiter) -> None:
        self.queue.remove(waiter.request_id)
        for resource, amount in tenant_demand(waiter.request).items():
            self.waiting_demand[resource] -= amount
        if self.reservation is not None and self.reservation.request_id == waiter.request_id:
            self.reservation = None
        self._revoking_for.pop(waiter.request_id, None)

    def _reject(
        self, waiter: Waiter, reason: RejectReason, message: str, decisions: list[Decision]
    ) -> None:
        if waiter.request_id in self.queue:
            self._dequeue(waiter)
        else:
            self.budgets.unwait(waiter.request_id)
        key = waiter.request.idempotency_key
        if key is not None:
            self._remember_key(key, ("rejected", f"{reason.value}:{message}"))
        self.counters.rejected[reason.value] = self.counters.rejected.get(reason.value, 0) + 1
        decisions.append(Reject(waiter.request_id, reason, f"{waiter.request_id}: {message}"))

    def _remember_key(self, key: str, value: tuple[str, str]) -> None:
        self._keys.pop(key, None)
        self._keys[key] = value
        if len(self._keys) > KEY_MEMORY:
            del self._keys[next(iter(self._keys))]

    def _replay(self, key: str, known: tuple[str, str]) -> tuple[str, list[Decision]]:
        kind, ident = known
        if kind == "request":
            return ident, []
        if kind == "lease":
            lease = self.leases.active.get(ident)
            if lease is not None:
                self.leases.unconfirmed.discard(lease.lease_id)  # its caller has it now
                return lease.request_id, [Grant(lease.request_id, lease, 0.0)]
            raise LeaseExpired(f"idempotency_key {key!r}: its lease {ident} has already ended")
        reason, _, message = ident.partition(":")
        return f"replay-{key}", [Reject(f"replay-{key}", RejectReason(reason), message)]

    def _check_node(self, request: Request) -> None:
        if request.node is not None and request.node not in self.nodes:
            raise InvalidRequest(
                f"node: {request.node!r} is not an alive node; expected one of {sorted(self.nodes)}"
            )

    def _lease_of_request(self, request_id: str) -> LeaseRecord | None:
        lease_id = self.leases.by_request.get(request_id)
        return None if lease_id is None else self.leases.active.get(lease_id)

    def _outranks_head(self, waiter: Waiter, now: float) -> bool:
        """Whether ``waiter`` comes before the blocked head (then the head's hold is not for it)."""
        if self.reservation is None:
            return True
        head = self.queue.by_id.get(self.reservation.request_id)
        return head is None or self.queue.rank(waiter, now) < self.queue.rank(head, now)

    def outranks_head(self, request: Request, now: float) -> bool:
        """Whether a request submitted now would come before the blocked head."""
        return self._outranks_head(Waiter("", request, now, None, self._sequence + 1), now)

    def explain_block(self, request: Request, held: Reservation | None) -> str:
        """In plain words, why ``request`` does not fit now."""
        for pool, slots in request.pools.items():
            ledger = self.pools[pool]
            reserved = held.pools.get(pool, 0) if held is not None else 0
            if ledger.in_use + reserved + slots > ledger.size:
                return f"pool {pool!r}: {ledger.in_use}/{ledger.size} slots in use" + (
                    f", {reserved} held for the head of the queue" if reserved else ""
                )
        quota = self.tenants.get(request.tenant)
        if quota is not None and not quota.within_limit(tenant_demand(request)):
            return f"tenant {request.tenant!r} is at its hard limit {quota.limit}"
        shortest = ""
        for resource, amount in request.resources.items():
            most = max((n.free(resource) for n in self.nodes.values()), default=0)
            if most < amount:
                shortest = (
                    f"{resource}: the most free on any node is "
                    f"{format_amount(resource, most)}, {format_amount(resource, amount)} needed"
                )
                break
        return shortest or "no single node has all of it free at once (or the head holds it)"

    def never_fits(self, request: Request) -> str | None:
        """Why ``request`` can never be granted, or None.

        Remembered per shape until the nodes change: pool sizes and tenant limits
        come from the policy and never change under a running scheduler.
        """
        if request.shape in self._never_fits:
            return self._never_fits[request.shape]
        if len(self._never_fits) >= NEVER_FITS_MEMORY:
            self._never_fits.clear()
        reason = self._never_fits[request.shape] = self._never_fits_now(request)
        return reason

    def _never_fits_now(self, request: Request) -> str | None:
        for pool, slots in request.pools.items():
            if slots > self.pools[pool].size:
                return f"pool {pool!r} has {self.pools[pool].size} slots; {slots} were asked for"
        quota = self.tenants.get(request.tenant)
        if quota is not None:
            over = quota.exceeds_limit_alone(tenant_demand(request))
            if over is not None:
                return (
                    f"tenant {request.tenant!r} has a hard limit of {quota.hard_limit(over)} "
                    f"{over}; {tenant_demand(request)[over]} were asked for"
                )
        if not request.resources:
            return None if self.nodes else "no node is alive"
        candidates = (
            [self.nodes[request.node]]
            if request.node
            else self.placer.candidates(request.resources)
        )
        for node in candidates:
            if all(node.limit(r) >= a for r, a in request.resources.items()):
                return None
        where = f"node {request.node}" if request.node else "any node"
        return f"{dict(request.resources)} is larger than {where} can ever grant (capacity minus reserve)"


def _widen(freed: Freed, held: Reservation, held_nodes: Mapping[str, Amounts]) -> None:
    """Add to ``freed`` where a reservation that is gone or moved held capacity back."""
    freed.nodes.update(held_nodes)
    freed.pools.update(held.pools)
    freed.tenants.add(held.tenant)


def _hysteresis(node: NodeLedger, resource: str, percent: float, high: float, low: float) -> None:
    if percent >= high:
        node.pressured.add(resource)
    elif percent <= low:
        node.pressured.discard(resource)
