"""Where some waiting requests stand in the queue, and what holds each back. A query.

For the job queue's listing (``anya-resource jobs``): a queued job is a request held for
it by its supervisor actor, so requests are picked by their holder's actor id. Each gets
its position in the order the scheduler serves (effective priority, aging included, then
first come), its effective priority, what holds it back in plain words, and, when one can
be given, the time by which it should start: for the head of the queue with leases being
taken back for it, the end of their grace period.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from anya_resource.core.admission import fits, why_not
from anya_resource.core.state import ClusterState
from anya_resource.core.waitqueue import Waiter


def positions(state: ClusterState, actor_ids: Collection[str], now: float) -> dict[str, Any]:
    """Per holder actor id among ``actor_ids`` that waits: where and why (see above)."""
    queue = state.queue
    ordered = sorted(queue.by_id.values(), key=lambda waiter: queue.rank(waiter, now))
    found: dict[str, Any] = {}
    for position, waiter in enumerate(ordered, start=1):
        actor_id = waiter.request.holder.actor_id
        if actor_id is None or actor_id not in actor_ids:
            continue
        found[actor_id] = {
            "request_id": waiter.request_id,
            "position": position,
            "waiting": len(ordered),
            "effective_priority": round(queue.effective(waiter, now), 3),
            "held_back_by": held_back_by(state, waiter, position),
            "start_by": start_by(state, waiter),
        }
    return found


def held_back_by(state: ClusterState, waiter: Waiter, position: int) -> str:
    """Why ``waiter`` is not granted now, in plain words."""
    request = waiter.request
    head = state.reservation
    if head is not None and head.request_id != waiter.request_id:
        if fits(state, request, None):
            return (
                f"{position - 1} request(s) come before it; the first, {head.request_id}, "
                "is held room for"
            )
        return str(why_not(state, request, head))
    reason = str(why_not(state, request, None))
    revoking = revoking_for(state, waiter.request_id)
    if revoking:
        reason += f"; {len(revoking)} preemptible lease(s) are being taken back for it"
    return reason


def revoking_for(state: ClusterState, request_id: str) -> set[str]:
    """The ids of the leases being taken back for the waiting ``request_id``."""
    return set(state.revoking_for.get(request_id, ())) & state.leases.active.keys()


def start_by(state: ClusterState, waiter: Waiter) -> float | None:
    """When it should start at the latest, if that can be known now; else None."""
    deadlines = [
        lease.revoke_deadline
        for lease_id in revoking_for(state, waiter.request_id)
        if (lease := state.leases.active.get(lease_id)) is not None
        and lease.revoke_deadline is not None
    ]
    return max(deadlines) if deadlines else None


__all__ = ["held_back_by", "positions", "revoking_for", "start_by"]
