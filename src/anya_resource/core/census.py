"""After a restart: what the journal kept is put back, then each manager's census.

``restore`` counts each lease the journal holds once, with a full TTL from now (its
holder could not renew while the coordinator was down); ``claim`` takes a manager's
whole account (its held leases with their tokens, the acquires it still waits on) and
reclaims the restored leases of that manager it no longer holds: their release, or
their caller's giving up, was lost with the old coordinator. docs/architecture.md,
"Recovery", walks the sequences.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

from anya_resource.core import settle
from anya_resource.core.journal import Ended, Recovered
from anya_resource.core.lifecycle import Lifecycle, tell_of
from anya_resource.core.model import Decision, LeaseState, Reclaim, ReclaimReason
from anya_resource.core.state import Freed
from anya_resource.errors import InvalidRequest, LeaseExpired, LeaseRevoked

MANAGER_PREFIX_MIN = 8  # a census names its manager by a prefix no shorter than this


def restore(life: Lifecycle, recovered: Recovered, now: float) -> list[Decision]:
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
    state = life.state
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
        # A gang is lost with any of its nodes: it runs whole or not at all.
        node = state.nodes.get(lease.node_id)
        lost = any(node_id not in state.nodes for node_id in lease.nodes())
        gone = (
            ReclaimReason.NODE_LOST
            if lost
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
            life.hints.preempt_dirty.update(lease.nodes())
        state.charge(lease)
        if lease.within is None:
            for node_id, amounts in lease.placed():
                state.nodes[node_id].mark_overcommit(amounts)
        leases.add(lease)
        if not lease.detached:
            leases.unconfirmed.add(lease.lease_id)
        if lease.idempotency_key is not None:
            life.keys.remember(lease.idempotency_key, "lease", lease.lease_id)
        if lease.state is LeaseState.REVOKING and lease.revoke_deadline is not None:
            heapq.heappush(life.revoke_deadlines, (lease.revoke_deadline, lease.lease_id))
    return out


def claim(
    life: Lifecycle,
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
    leases = life.state.leases
    pairs = list(held)
    for lease_id, token in pairs:
        leases.held_with(lease_id, token)  # all checked before any change
    results: dict[str, float | None] = {}
    for lease_id, token in pairs:
        try:
            results[lease_id] = life.renew(lease_id, token, now).expires_at
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
            life.reclaim(lease, ReclaimReason.UNCLAIMED, out, freed, by=lease.listener)
    out.extend(settle.settle(life, now, freed))
    return results, out
