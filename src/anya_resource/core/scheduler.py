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
* ``core/idempotency.py``, ``waitstats.py``, ``nodehealth.py``, ``hints.py``.

The queue is kept *settled*: after every event, no waiting request fits where it may
go. That is what lets a new request be granted at once when it fits (nobody waiting
could have used that room), and lets a release look only at what it freed.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from anya_resource.config import Policy
from anya_resource.core import admission, settle, views
from anya_resource.core.bottleneck import find_bottlenecks
from anya_resource.core.budgets import Budget
from anya_resource.core.idempotency import CANCELLED_EARLY
from anya_resource.core.journal import (
    Ended,
    Entry,
    Extended,
    Rebound,
    Recovered,
    Refused,
    encode_snapshot,
)
from anya_resource.core.leases import LeaseTable, TokenMinter, new_secret
from anya_resource.core.ledger import NodeLedger, reserve_for
from anya_resource.core.lifecycle import Lifecycle, tell_of
from anya_resource.core.model import (
    NODE_RESOURCES,
    Decision,
    Holder,
    LeaseRecord,
    LeaseState,
    NodeSample,
    Reclaim,
    ReclaimReason,
    RejectReason,
    Request,
    RevokeCause,
)
from anya_resource.core.nodehealth import observe, pressure_victim
from anya_resource.core.positions import positions, revoking_for
from anya_resource.core.state import ClusterState, Freed, Reservation
from anya_resource.core.waitqueue import Waiter
from anya_resource.core.whatif import WhatIf, what_if, what_if_within
from anya_resource.errors import Infeasible, InvalidRequest, LeaseExpired, LeaseRevoked, Overloaded

MAX_WAITING = 1_000_000  # requests waiting at once in the whole queue (~1 KB each here)
MANAGER_PREFIX_MIN = 8  # a census names its manager by a prefix no shorter than this


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

    def node_up(self, node_id: str, capacity: Mapping[str, int], now: float) -> list[Decision]:
        """A node joined (or reported a new capacity)."""
        state, life = self.state, self.life
        capacity = {r: int(capacity.get(r, 0)) for r in NODE_RESOURCES}
        if any(v < 0 for v in capacity.values()):
            raise InvalidRequest(f"node {node_id}: negative capacity {capacity}")
        life.hints.nodes_changed()
        node = state.nodes.get(node_id)
        if node is None:
            node = NodeLedger(node_id, capacity, reserve_for(capacity, state.policy.reserve))
            state.nodes[node_id] = node
            state.placer.add(node)
            return settle.settle(life, now, Freed(nodes={node_id}))
        shrank = any(capacity[r] < node.capacity.get(r, 0) for r in NODE_RESOURCES)
        node.resize(capacity, reserve_for(capacity, state.policy.reserve))
        state.placer.resized(node)
        life.hints.preempt_dirty.add(node.node_id)
        out: list[Decision] = []
        freed = Freed(nodes={node_id})
        if shrank:
            # As at node_down: what can never fit any more is rejected, not left waiting,
            # and the head's hold is placed again (this node may be too small for it now).
            self._reject_infeasible(lambda request: False, "", out)
            state.reservation = None
            freed.everything = True
        out.extend(settle.settle(life, now, freed))
        return out

    def sync_nodes(self, alive: Mapping[str, Mapping[str, int]], now: float) -> list[Decision]:
        """Ray's list of alive nodes (id -> capacity): joins, losses, and lost holders.

        A node that left goes as at ``node_down``. So do the leases of processes that
        lived on a node that is not alive, wherever those leases were granted: a request
        still in flight from such a process may have been granted after its node went
        (or while this coordinator did not know the node), and no agent is left there to
        report its holder's death.
        """
        out: list[Decision] = []
        for node_id in [n for n in self.state.nodes if n not in alive]:
            out.extend(self.node_down(node_id, now))
        for node_id in sorted(alive):
            if node_id not in self.state.nodes:
                out.extend(self.node_up(node_id, alive[node_id], now))
        orphaned = [n for n in self.state.leases.holders_by_node if n not in alive]
        if orphaned:
            freed = Freed(everything=True)
            for node_id in orphaned:
                self.life.reclaim_holders_on(node_id, out, freed)
            out.extend(settle.settle(self.life, now, freed))
        return out

    def node_down(self, node_id: str, now: float) -> list[Decision]:
        """A node is gone: its leases are reclaimed, its waiters placed again or rejected."""
        state, life = self.state, self.life
        node = state.nodes.pop(node_id, None)
        if node is None:
            return []
        life.hints.nodes_changed()
        node.alive = False
        state.placer.remove(node_id)
        state.samples.pop(node_id, None)
        out: list[Decision] = []
        freed = Freed(everything=True)
        for lease in list(state.leases.by_node.get(node_id, {}).values()):
            life.reclaim(lease, ReclaimReason.NODE_LOST, out, freed)
        # Processes on the node are gone with it: so are the leases they held elsewhere
        # (nobody is left there to report their death).
        life.reclaim_holders_on(node_id, out, freed)
        if state.reservation is not None and state.reservation.node_id == node_id:
            state.reservation = None
        self._reject_infeasible(lambda request: request.node == node_id, node_id, out)
        out.extend(settle.settle(life, now, freed))
        return out

    def _reject_infeasible(
        self, pinned: Callable[[Request], bool], node_id: str, out: list[Decision]
    ) -> None:
        """After the nodes changed: waiters ``pinned`` to a lost node, and those that can
        never fit any more, are rejected rather than left waiting."""
        for waiter in list(self.state.queue.by_id.values()):
            request = waiter.request
            if pinned(request):
                self.life.reject(waiter, RejectReason.NODE_LOST, f"node {node_id} left", out)
            elif (
                block := admission.never_fits(self.state, request, self.life.hints.never_fits)
            ) is not None:
                self.life.reject(waiter, RejectReason.INFEASIBLE, str(block), out)

    def health(self, node_id: str, sample: NodeSample, now: float) -> list[Decision]:
        """A node's measured use: pressure with hysteresis, and revocations under it."""
        state, life = self.state, self.life
        node = state.nodes.get(node_id)
        if node is None:
            return []
        state.samples[node_id] = sample
        relieved = observe(node, sample, state.policy.pressure)
        out: list[Decision] = []
        for resource in sorted(node.pressured):
            victim = pressure_victim(state.leases.by_node.get(node_id, {}).values(), resource)
            if victim is not None:
                life.revoke(
                    victim, RevokeCause.PRESSURE, f"{resource} pressure on node {node_id}", now, out
                )
                life.counters.revoked["pressure"] = life.counters.revoked.get("pressure", 0) + 1
        if relieved:
            state.placer.note_freed(node)
            life.hints.preempt_dirty.add(node_id)
            out.extend(settle.settle(life, now, Freed(nodes={node_id})))
        return out

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

    def cancel(self, request_id: str, now: float) -> list[Decision]:
        """The waiter gave up. If its grant crossed the cancel, the grant goes back."""
        state, life = self.state, self.life
        out: list[Decision] = []
        drawing = state.budgets.waiters.get(request_id)
        if drawing is not None:
            life.reject(drawing[0], RejectReason.CANCELLED, "cancelled by the caller", out)
            # A first waiter holds back the ones behind it in its budget.
            out.extend(settle.settle(life, now, Freed(budgets={drawing[1].lease_id})))
            return out
        waiter = state.queue.by_id.get(request_id)
        if waiter is not None:
            was_head = state.reservation is not None and state.reservation.request_id == request_id
            life.reject(waiter, RejectReason.CANCELLED, "cancelled by the caller", out)
            # Only the head holds anything back from the others.
            out.extend(settle.settle(life, now, Freed(everything=was_head)))
            return out
        lease_id = state.leases.by_request.get(request_id)
        lease = None if lease_id is None else state.leases.active.get(lease_id)
        if lease is not None:
            freed = Freed()
            life.reclaim(lease, ReclaimReason.CANCELLED, out, freed)
            out.extend(settle.settle(life, now, freed))
        return out

    def cancel_key(self, key: str, now: float) -> list[Decision]:
        """Cancel by idempotency key, whatever became of the request.

        A key not seen yet is remembered as cancelled, so the request, if it is still
        on its way, is refused when it arrives instead of being granted to nobody.
        """
        known = self.life.keys.get(key)
        if known is None:
            self.life.keys.remember(key, "rejected", CANCELLED_EARLY)
            # Durable: the request may still arrive at the next coordinator (Ray holds
            # calls made while an actor restarts), and must be refused there too.
            self.life.journal.append(Refused(key, CANCELLED_EARLY))
            return []
        kind, ident = known
        if kind == "request":
            return self.cancel(ident, now)
        lease = self.state.leases.active.get(ident) if kind == "lease" else None
        return [] if lease is None else self.cancel(lease.request_id, now)

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
        """Push the lease's expiry to ``now + ttl``; says if it was revoked or expired.

        A renewal is also the holder's claim on a lease restored after a restart.
        """
        leases = self.state.leases
        lease = leases.held_with(lease_id, token)
        if lease is None:
            leases.raise_ended(lease_id)
        leases.unconfirmed.discard(lease_id)
        if lease.state is LeaseState.REVOKING:
            raise LeaseRevoked(
                f"lease {lease_id} was revoked ({lease.revoke_reason}); release it by "
                f"{lease.revoke_deadline}"
            )
        if now >= lease.expires_at:
            # Not renewed within its TTL: the next tick reclaims it; it is never revived.
            raise LeaseExpired(f"lease {lease_id} expired at {lease.expires_at}; acquire anew")
        max_ttl = self.state.policy.lease.max_ttl
        if ttl is None:
            ttl = lease.ttl
        elif isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl <= max_ttl:
            raise InvalidRequest(f"ttl: got {ttl!r}, expected (0, {max_ttl}]")
        if ttl > lease.ttl:
            # Past what a restart would give it (a full TTL from then): kept, so that the
            # holder is never cut short of what it was promised.
            self.life.journal.append(Extended(lease_id, now + ttl))
        leases.extend(lease, now + ttl)
        return lease

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
        leases = self.state.leases
        pairs = list(held)
        for lease_id, token in pairs:
            leases.held_with(lease_id, token)  # all checked before any change
        results: dict[str, float | None] = {}
        for lease_id, token in pairs:
            try:
                results[lease_id] = self.confirm(lease_id, token, now).expires_at
            except (LeaseExpired, LeaseRevoked):
                results[lease_id] = None
        keep = set(waiting)
        out: list[Decision] = []
        freed = Freed()
        for lease_id in sorted(leases.unconfirmed):
            lease = leases.active.get(lease_id)
            if lease is None:
                continue  # it ended in this loop, with the budget it was drawn from
            key = lease.idempotency_key
            if key is not None and key.startswith(manager) and key not in keep:
                self.life.reclaim(lease, ReclaimReason.UNCLAIMED, out, freed, by=lease.listener)
        out.extend(settle.settle(self.life, now, freed))
        return results, out

    def holders_on(self, node_id: str) -> list[Holder]:
        """The holder processes on ``node_id`` whose death its agent must report."""
        return list(self.state.leases.holders_by_node.get(node_id, {}).values())

    def holder_died(self, holder_key: str, now: float) -> list[Decision]:
        """Everything a dead process held or waited for goes back."""
        return self._end_all(
            self.state.leases.by_holder.get(holder_key, ()),
            ReclaimReason.HOLDER_DIED,
            lambda request: request.holder.key == holder_key,
            RejectReason.HOLDER_DIED,
            "the waiting process died",
            now,
        )

    def job_ended(self, job_id: str, now: float) -> list[Decision]:
        """A Ray job finished: its leases go back, except detached ones."""
        return self._end_all(
            self.state.leases.by_job.get(job_id, ()),
            ReclaimReason.JOB_ENDED,
            lambda request: request.holder.job_id == job_id and not request.detached,
            RejectReason.JOB_ENDED,
            f"job {job_id} ended",
            now,
        )

    def _end_all(
        self,
        lease_ids: Iterable[str],
        reason: ReclaimReason,
        waits_for: Callable[[Request], bool],
        refusal: RejectReason,
        message: str,
        now: float,
    ) -> list[Decision]:
        """Reclaim ``lease_ids`` and reject the waiters ``waits_for`` picks out."""
        state, life = self.state, self.life
        out: list[Decision] = []
        freed = Freed()
        for lease_id in list(lease_ids):
            life.reclaim_id(lease_id, reason, out, freed)
        for waiter in list(state.queue.by_id.values()):
            if waits_for(waiter.request):
                life.reject(waiter, refusal, message, out)
                freed.everything = True
        for waiter, budget in list(state.budgets.waiters.values()):
            if waits_for(waiter.request):
                life.reject(waiter, refusal, message, out)
                freed.budgets.add(budget.lease_id)
        out.extend(settle.settle(life, now, freed))
        return out

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
        state, life = self.state, self.life
        out: list[Decision] = []
        leases = state.leases
        leases.highest_fencing = max(leases.highest_fencing, recovered.highest_fencing)
        for key, outcome in recovered.refused.items():
            life.keys.remember(key, "rejected", outcome)
        # Budgets' own leases first: what is drawn from one is counted in it.
        for lease in sorted(recovered.leases.values(), key=lambda lease: lease.within is not None):
            if lease.lease_id in leases.active:
                continue
            lease.token = leases.minter.mint(lease.lease_id)
            lease.expires_at = max(lease.expires_at, now + lease.ttl)
            node = state.nodes.get(lease.node_id)
            gone = (
                ReclaimReason.NODE_LOST
                if node is None
                else ReclaimReason.BUDGET_ENDED
                if lease.within is not None and lease.within not in leases.active
                else None
            )
            if gone is not None:
                life.journal.append(Ended(lease.lease_id))
                out.append(Reclaim(lease.lease_id, lease.node_id, gone, tell_of(lease)))
                continue
            assert node is not None
            if lease.within is not None:
                state.budgets.open(leases.active[lease.within])
            elif lease.preemptible:
                life.hints.preempt_dirty.add(node.node_id)
            state.charge(lease)
            if lease.within is None:
                node.mark_overcommit(lease.resources)
            leases.add(lease)
            if not lease.detached:
                leases.unconfirmed.add(lease.lease_id)
            if lease.idempotency_key is not None:
                life.keys.remember(lease.idempotency_key, "lease", lease.lease_id)
            if lease.state is LeaseState.REVOKING and lease.revoke_deadline is not None:
                heapq.heappush(life.revoke_deadlines, (lease.revoke_deadline, lease.lease_id))
        return out

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

    def snapshot(self, now: float) -> dict[str, Any]:
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
