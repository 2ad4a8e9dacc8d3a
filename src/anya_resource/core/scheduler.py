"""The scheduler: events in, decisions out. A facade over the state and its steps.

Every method takes the time as an argument and returns the decisions its event led to
(``Grant``, ``Reject``, ``Revoke``, ``Reclaim``); the caller carries them out. Bad input
raises (``InvalidRequest``, ``Infeasible``, ``NotLeaseHolder``...) before anything
changes. Where the work is:

* ``core/state.py``: the cluster (nodes, pools, tenants, leases, queue, reservation,
  budgets), whose ``charge`` / ``refund`` are the only accounting writers;
* ``core/admission.py``: the one rule of what fits, and why not;
* ``core/lifecycle.py``: grant, reject, revoke, reclaim (journal, counters, keys);
* ``core/settle.py``: the pass that keeps the queue settled after each event;
* ``core/membership.py``: nodes that come, go, change size or come under pressure;
* ``core/census.py``: after a restart, the journal put back and each manager's census;
* ``core/endings.py``: cancels, dead holders, ended jobs;
* ``core/idempotency.py``, ``waitstats.py``, ``nodehealth.py``, ``hints.py``.

The queue is kept *settled*: after every event, no waiting request fits where it may
go. That is what lets a new request be granted at once when it fits (nobody waiting
could have used that room), and lets a release look only at what it freed.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from typing import Any

from anya_resource.config import Policy
from anya_resource.core import admission, census, endings, membership, settle, views
from anya_resource.core.bottleneck import find_bottlenecks
from anya_resource.core.budgets import Budget, budget_lease
from anya_resource.core.journal import (
    Entry,
    Rebound,
    Recovered,
    Reserved,
    encode_snapshot,
)
from anya_resource.core.leases import LeaseTable, TokenMinter, new_secret
from anya_resource.core.lifecycle import Lifecycle
from anya_resource.core.model import (
    Decision,
    Holder,
    LeaseRecord,
    LeaseState,
    NodeSample,
    ReclaimReason,
    RejectReason,
    Request,
)
from anya_resource.core.positions import positions, revoking_for
from anya_resource.core.state import ClusterState, Freed, Reservation
from anya_resource.core.waitqueue import Waiter
from anya_resource.core.whatif import WhatIf, what_if, what_if_within
from anya_resource.errors import Infeasible, InvalidRequest, LeaseExpired, Overloaded
from anya_resource.messages import Snapshot

MAX_WAITING = 1_000_000  # requests waiting at once in the whole queue (~1 KB each here)


class Scheduler:
    def __init__(self, policy: Policy, *, epoch: int = 0, secret: bytes | None = None) -> None:
        minter = TokenMinter(secret if secret is not None else new_secret())
        self.state = ClusterState(policy, LeaseTable(epoch, minter))
        self.life = Lifecycle(self.state)
        self._sequence = 0
        # What the shell reads (actors/coordinator.py, metrics.py, simulate.py, tests):
        # the state's own objects, which are never rebound (the reservation and the
        # journal are, hence their properties below).
        self.policy = policy
        self.nodes = self.state.nodes
        self.pools = self.state.pools
        self.tenants = self.state.tenants
        self.leases = self.state.leases
        self.queue = self.state.queue
        self.budgets = self.state.budgets
        self.samples = self.state.samples
        self.waiting_demand = self.state.waiting_demand
        self.counters = self.life.counters
        self.waits = self.life.waits.by_class

    @property
    def reservation(self) -> Reservation | None:
        return self.state.reservation

    @property
    def journal(self) -> list[Entry]:
        return self.life.journal

    # -- nodes ------------------------------------------------------------------

    # -- nodes (core/membership.py) ----------------------------------------------------

    def node_up(self, node_id: str, capacity: Mapping[str, int], now: float) -> list[Decision]:
        """A node joined (or reported a new capacity)."""
        return membership.node_up(self.life, node_id, capacity, now)

    def sync_nodes(self, alive: Mapping[str, Mapping[str, int]], now: float) -> list[Decision]:
        """Ray's list of alive nodes (id -> capacity): joins, losses, and lost holders."""
        return membership.sync_nodes(self.life, alive, now)

    def node_down(self, node_id: str, now: float) -> list[Decision]:
        """A node is gone: its leases are reclaimed, its waiters placed again or rejected."""
        return membership.node_down(self.life, node_id, now)

    def health(self, node_id: str, sample: NodeSample, now: float) -> list[Decision]:
        """A node's measured use: pressure with hysteresis, and revocations under it."""
        return membership.health(self.life, node_id, sample, now)

    def outside_use(
        self,
        node_id: str,
        available: Mapping[str, int],
        ours: Mapping[str, int],
        now: float,
    ) -> list[Decision]:
        """What Ray has available on the node, and what our placement groups hold there:
        what plain Ray work takes of it is not granted (``membership.outside_use``)."""
        return membership.outside_use(self.life, node_id, available, ours, now)

    # -- requests -----------------------------------------------------------------

    def submit(self, request: Request, now: float) -> tuple[str, list[Decision]]:
        """Queue ``request``; returns its id and what was decided at once.

        A retried request (same idempotency key) returns the first one's id and
        its grant, if it had one: never a second grant.
        """
        state, life = self.state, self.life
        key = request.idempotency_key
        if key is not None and (known := life.keys.get(key)) is not None:
            return life.keys.replay(key, known, state.leases)
        budget = (
            None if request.within is None else state.budgets.for_request(request, state.leases)
        )
        if budget is None:
            self._check_node(request)
            block = admission.never_fits(state, request, life.hints.never_fits)
            reason = None if block is None else str(block)
        else:
            reason = budget.never_fits(request)
        if reason is not None:
            raise Infeasible(reason)
        if len(state.queue) + len(state.budgets.waiters) >= MAX_WAITING:
            raise Overloaded(
                f"{len(state.queue):,} requests wait already, the most the queue takes "
                f"({MAX_WAITING:,}); try again later, or with timeout=0"
            )
        self._sequence += 1
        request_id = f"req-{state.leases.epoch}-{self._sequence}"
        deadline = None if request.timeout is None else now + request.timeout
        waiter = Waiter(request_id, request, now, deadline, self._sequence)
        life.counters.submitted += 1
        if key is not None:
            life.keys.remember(key, "request", request_id)
        out: list[Decision] = []
        if budget is not None:
            self._submit_within(waiter, budget, now, out)
            return request_id, out
        held = state.holds_back(waiter, now)
        node = admission.place(state, request, held, None)
        if node is not None:
            life.grant(waiter, node, now, out)
        elif request.timeout == 0:
            life.reject(waiter, RejectReason.TIMEOUT, "no capacity now and timeout=0", out)
        else:
            state.enqueue(waiter)
            if held is None:  # it comes first: the head's hold is for it now
                out.extend(settle.settle(life, now, Freed(everything=True)))
        return request_id, out

    def _submit_within(
        self, waiter: Waiter, budget: Budget, now: float, out: list[Decision]
    ) -> None:
        """Grant from the budget if it fits and nobody waiting there comes first."""
        if budget.fits(waiter.request) and budget.comes_first(waiter):
            self.life.grant_within(waiter, budget, now, out)
        elif waiter.request.timeout == 0:
            message = f"the job's budget ({budget.lease_id}) has no room now and timeout=0"
            self.life.reject(waiter, RejectReason.TIMEOUT, message, out)
        else:
            self.state.budgets.wait(budget, waiter)

    def budget_key(self, lease_id: str, token: object) -> str:
        """The key that lets others draw from lease ``lease_id`` (core/budgets.py)."""
        lease = self.state.leases.held_with(lease_id, token)
        if lease is None:
            raise LeaseExpired(f"lease {lease_id} has ended; it can be no budget")
        if lease.within is not None:
            raise InvalidRequest(
                f"lease {lease_id} is drawn from the budget {lease.within}; a budget is a "
                "lease of the cluster's own"
            )
        return self.state.leases.minter.budget_key(lease_id)

    def budget_owner(self, lease_id: str, key: object) -> LeaseRecord:
        """The lease of the budget ``lease_id`` whose budget key is ``key`` (a job's own
        lease: where its processes run their plain Ray work)."""
        return budget_lease(self.state.leases, lease_id, key)

    def cancel(self, request_id: str, now: float) -> list[Decision]:
        """The waiter gave up. If its grant crossed the cancel, the grant goes back."""
        return endings.cancel(self.life, request_id, now)

    def cancel_key(self, key: str, now: float) -> list[Decision]:
        """Cancel by idempotency key, whatever became of the request (core/endings.py)."""
        return endings.cancel_key(self.life, key, now)

    def release(
        self, lease_id: str, token: object, now: float, by: str | None = None
    ) -> list[Decision]:
        """The lease is given back (``by``: the releaser's channel). Idempotent.

        A lease that already ended, here or before a restart, is a no-op for whoever
        has its token: the token itself proves the cluster issued it. When ``by`` is
        not the lease's listener, the listener is told (``Reclaim.tell``): it must not
        go on believing it holds the lease.
        """
        lease = self.state.leases.held_with(lease_id, token)
        if lease is None:
            return []
        out: list[Decision] = []
        freed = Freed()
        self.life.reclaim(lease, ReclaimReason.RELEASED, out, freed, by=by)
        out.extend(settle.settle(self.life, now, freed))
        return out

    def renew(
        self, lease_id: str, token: object, now: float, ttl: float | None = None
    ) -> LeaseRecord:
        """Push the lease's expiry to ``now + ttl``; says if it was revoked or expired."""
        return self.life.renew(lease_id, token, now, ttl)

    def tick(self, now: float) -> list[Decision]:
        """Time passed: expiries, timeouts, revocation deadlines, aging."""
        state, life = self.state, self.life
        out: list[Decision] = []
        freed = Freed()
        state.forget_idle_tenants()
        for lease in state.leases.expired(now):
            life.reclaim(lease, ReclaimReason.EXPIRED, out, freed)
        deadlines = life.revoke_deadlines
        while deadlines and deadlines[0][0] <= now:
            _, lease_id = heapq.heappop(deadlines)
            revoked = state.leases.active.get(lease_id)
            if revoked is not None and revoked.state is LeaseState.REVOKING:
                life.reclaim(revoked, ReclaimReason.REVOKED, out, freed)
        for waiter in state.queue.overdue(now):
            life.reject(waiter, RejectReason.TIMEOUT, "timed out waiting", out)
            freed.everything = True  # its reservation, if it had one, is free again
        for waiter in state.budgets.overdue(now):
            life.reject(waiter, RejectReason.TIMEOUT, "timed out waiting", out)
            freed.budgets.add(str(waiter.request.within))  # it may have blocked others
        head = state.queue.best(now)
        if head is not None and (
            state.reservation is None or state.reservation.request_id != head.request_id
        ):
            freed.everything = True  # aging changed who is first
        out.extend(settle.settle(life, now, freed))
        return out

    def placement_group(self, lease_id: str, token: object, group: str) -> LeaseRecord:
        """The Ray placement group ``group`` (its id, hex) now reserves the lease: kept
        in the journal, so that a restart knows it and removes no other."""
        if not isinstance(group, str) or not 0 < len(group) <= 64 or not group.isalnum():
            raise InvalidRequest(f"placement_group: got {group!r}, expected a hex id")
        leases = self.state.leases
        lease = leases.held_with(lease_id, token)
        if lease is None:
            leases.raise_ended(lease_id)
        if lease.placement_group != group:
            lease.placement_group = group
            self.life.journal.append(Reserved(lease_id, group))
        return lease

    def rebind(self, lease_id: str, token: object, holder: Holder, now: float) -> LeaseRecord:
        """Hand ``lease`` over to another process (a ``@leased`` task's worker).

        The new holder's death reclaims it from now on; the old holder's does not.
        """
        lease = self.renew(lease_id, token, now)
        self.state.leases.rebind(lease, holder)
        self.life.journal.append(Rebound(lease_id, holder))
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
        """A client manager's whole account after a restart (core/census.py)."""
        return census.claim(self.life, manager, held, waiting, now)

    def free_on(self, node_id: str) -> dict[str, int]:
        """What the node has free to grant now (nothing for a node not known)."""
        node = self.state.nodes.get(node_id)
        return {} if node is None else {r: node.free(r) for r in node.limits}

    def capacity_of(self, node_id: str) -> dict[str, int] | None:
        """The node's capacity as counted now, or None for a node not (or no longer) known."""
        node = self.state.nodes.get(node_id)
        return None if node is None else dict(node.capacity)

    def watches_jobs(self) -> bool:
        """Whether the end of some Ray job could end a lease or a waiter now."""
        return bool(self.state.leases.by_job or self.state.queue)

    def holders_on(self, node_id: str) -> list[Holder]:
        """The holder processes on ``node_id`` whose death its agent must report."""
        return list(self.state.leases.holders_by_node.get(node_id, {}).values())

    def holder_died(self, holder_key: str, now: float) -> list[Decision]:
        """Everything a dead process held or waited for goes back."""
        return endings.holder_died(self.life, holder_key, now)

    def job_ended(self, job_id: str, now: float) -> list[Decision]:
        """A Ray job finished: its leases and waiters go, except detached ones."""
        return endings.job_ended(self.life, job_id, now)

    def restore(self, recovered: Recovered, now: float) -> list[Decision]:
        """Recovery: put back what the journal kept, before anything new is granted."""
        return census.restore(self.life, recovered, now)

    def take_journal(self) -> list[Entry]:
        """The entries made since the last call (the caller commits them)."""
        entries, self.life.journal = self.life.journal, []
        return entries

    def journal_snapshot(self) -> bytes:
        """Every lease and refusal as the journal's snapshot holds them."""
        leases = self.state.leases
        return encode_snapshot(leases, self.life.keys.refusals(), leases.highest_fencing)

    def _check_node(self, request: Request) -> None:
        if request.node is not None and request.node not in self.state.nodes:
            raise InvalidRequest(
                f"node: {request.node!r} is not an alive node; "
                f"expected one of {sorted(self.state.nodes)}"
            )

    # -- queries (each a function of the state; see their modules) ----------------------

    def snapshot(self, now: float) -> Snapshot:
        """Capacity, granted, free and waiting per node, resource, pool and tenant."""
        snap = views.snapshot(self.state, now, self.life.counters, self.life.waits)
        snap["bottlenecks"] = find_bottlenecks(snap)
        return snap

    def what_if(self, request: Request, count: int, now: float) -> WhatIf:
        """How many of ``count`` such requests would be granted now; changes nothing."""
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 100_000:
            raise InvalidRequest(f"count: got {count!r}, expected a whole number in [1, 100000]")
        if request.within is not None:
            budget = self.state.budgets.for_request(request, self.state.leases)
            return what_if_within(budget, request, count)
        self._check_node(request)
        return what_if(self.state, request, count, now, self.life.hints.never_fits)

    def revoking_for(self, request_id: str) -> set[str]:
        """The ids of the leases being taken back for the waiting ``request_id``."""
        return revoking_for(self.state, request_id)

    def queue_positions(self, actor_ids: Iterable[str], now: float) -> dict[str, Any]:
        """Where the requests held by these actors wait, and why (core/positions.py)."""
        return positions(self.state, set(actor_ids), now)

    def budget_list(self) -> dict[str, dict[str, Any]]:
        """Per budget in use (by its lease id): its amounts, what is drawn, who waits."""
        return {lease_id: b.view() for lease_id, b in self.state.budgets.by_lease.items()}

    def lease_list(self) -> list[dict[str, Any]]:
        """Every active lease, without tokens."""
        return [lease.public() for lease in self.state.leases]
