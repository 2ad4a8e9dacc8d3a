"""What ends a waiter or a lease other than its holder's own release: the caller giving
up (by request id or idempotency key), the holder process dying, its Ray job ending.

Everything a dead process held or waited for goes back; a Ray job's leases and waiters
go with it, except detached ones. A cancel that arrives before its request is
remembered, durably, so that the request is refused when it comes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from anya_resource.core import settle
from anya_resource.core.idempotency import CANCELLED_EARLY
from anya_resource.core.journal import Refused
from anya_resource.core.lifecycle import Lifecycle
from anya_resource.core.model import Decision, ReclaimReason, RejectReason, Request
from anya_resource.core.state import Freed


def cancel(life: Lifecycle, request_id: str, now: float) -> list[Decision]:
    """The waiter gave up. If its grant crossed the cancel, the grant goes back."""
    state = life.state
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


def cancel_key(life: Lifecycle, key: str, now: float) -> list[Decision]:
    """Cancel by idempotency key, whatever became of the request.

    A key not seen yet is remembered as cancelled, so the request, if it is still
    on its way, is refused when it arrives instead of being granted to nobody.
    """
    known = life.keys.get(key)
    if known is None:
        life.keys.remember(key, "rejected", CANCELLED_EARLY)
        # Durable: the request may still arrive at the next coordinator (Ray holds
        # calls made while an actor restarts), and must be refused there too.
        life.journal.append(Refused(key, CANCELLED_EARLY))
        return []
    kind, ident = known
    if kind == "request":
        return cancel(life, ident, now)
    lease = life.state.leases.active.get(ident) if kind == "lease" else None
    return [] if lease is None else cancel(life, lease.request_id, now)


def holder_died(life: Lifecycle, holder_key: str, now: float) -> list[Decision]:
    """Everything a dead process held or waited for goes back."""
    return _end_all(
        life,
        life.state.leases.by_holder.get(holder_key, ()),
        ReclaimReason.HOLDER_DIED,
        lambda request: request.holder.key == holder_key,
        RejectReason.HOLDER_DIED,
        "the waiting process died",
        now,
    )


def job_ended(life: Lifecycle, job_id: str, now: float) -> list[Decision]:
    """A Ray job finished: its leases go back, except detached ones."""
    return _end_all(
        life,
        life.state.leases.by_job.get(job_id, ()),
        ReclaimReason.JOB_ENDED,
        lambda request: request.holder.job_id == job_id and not request.detached,
        RejectReason.JOB_ENDED,
        f"job {job_id} ended",
        now,
    )


def _end_all(
    life: Lifecycle,
    lease_ids: Iterable[str],
    reason: ReclaimReason,
    waits_for: Callable[[Request], bool],
    refusal: RejectReason,
    message: str,
    now: float,
) -> list[Decision]:
    """Reclaim ``lease_ids`` and reject the waiters ``waits_for`` picks out."""
    state = life.state
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
