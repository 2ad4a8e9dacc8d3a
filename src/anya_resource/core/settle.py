"""The settle pass: after an event, grant what fits now, in priority order.

The queue is kept *settled*: after every event no waiting request fits where it may
go. So a pass only has to look at what the event freed (``Freed``), and reads as a
pipeline of named steps, each of which may end it:

1. ``skip_unusable_release``: the head still cannot run and no waiting shape could use
   what came back; only whom the head preempts may change.
2. ``grant_heads``: grant the best waiter while it fits; the first that does not is
   the blocked head.
3. ``reserve_for_head``: the head holds the node where it will fit soonest, its pool
   slots and its tenant's quota, and preempts for them if it may.
4. ``backfill_shapes``: one waiter per shape (if the best of a shape does not fit,
   none of that shape does) is granted outside the head's hold.

Within a job's budget its waiters are granted in order while the first one fits
(``settle_budgets``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from anya_resource.core import admission, gangs
from anya_resource.core.admission import place, tenant_blocks
from anya_resource.core.lifecycle import Lifecycle
from anya_resource.core.model import Amounts, Decision, RevokeCause, tenant_demand
from anya_resource.core.preemption import choose_gang_victims, choose_victims
from anya_resource.core.state import ClusterState, Freed, Reservation
from anya_resource.core.waitqueue import Waiter


def settle(life: Lifecycle, now: float, freed: Freed) -> list[Decision]:
    """Grant what fits now, in priority order; keep the head's reservation."""
    out = settle_budgets(life, freed.budgets, now) if freed.budgets else []
    state = life.state
    if not state.queue:
        state.reservation = None
        return out
    if not freed or skip_unusable_release(life, freed, now, out):
        return out
    held = state.reservation
    held_nodes = dict(held.nodes) if held is not None else {}
    head = grant_heads(life, held, held_nodes, freed, now, out)
    if head is None:
        return out
    reserve_for_head(life, head, now, out)
    if held is not None and (state.reservation is not held or held.nodes != held_nodes):
        freed.widen(held, held_nodes)  # the hold moved (preemption chose another node)
    backfill_shapes(life, head, None if freed.everything else freed, now, out)
    return out


def settle_budgets(life: Lifecycle, lease_ids: Iterable[str], now: float) -> list[Decision]:
    """Within each budget, grant its waiters in order while the first one fits."""
    out: list[Decision] = []
    for lease_id in lease_ids:
        budget = life.state.budgets.by_lease.get(lease_id)
        if budget is None:
            continue
        while (best := budget.best()) is not None and budget.fits(best.request):
            life.grant_within(best, budget, now, out)
    return out


def skip_unusable_release(life: Lifecycle, freed: Freed, now: float, out: list[Decision]) -> bool:
    """Step 1: True when nothing waiting can use what came back (the pass is done).

    The head's preemption is looked at again all the same; if that moves its hold,
    where it held back is free for the others, and the pass goes on.
    """
    state = life.state
    held = state.reservation
    if (
        held is None
        or freed.everything
        or held.request_id not in state.queue
        or not state.queue.none_can_use(_free_on(state, freed.nodes), freed.pools, freed.tenants)
    ):
        return False
    held_nodes = dict(held.nodes)
    reserve_for_head(life, state.queue.by_id[held.request_id], now, out)
    if state.reservation is held and held.nodes == held_nodes:
        return True
    freed.widen(held, held_nodes)
    return False


def grant_heads(
    life: Lifecycle,
    held: Reservation | None,
    held_nodes: dict[str, Amounts],
    freed: Freed,
    now: float,
    out: list[Decision],
) -> Waiter | None:
    """Step 2: grant the best waiter while it fits; the blocked head, or None (all ran)."""
    state = life.state
    # After a release, the reserved head stays first; aging may change who is first
    # only with time, and tick() passes over everything.
    keep = held if not freed.everything else None
    scope = None if freed.everything else freed
    while True:
        kept = state.queue.by_id.get(keep.request_id) if keep is not None else None
        head = kept if kept is not None else state.queue.best(now)
        keep = None
        if head is None:
            state.reservation = None
            return None
        node = place(state, head.request, None, scope)
        if node is None:
            return head
        life.grant(head, node, now, out)
        if held is not None and state.reservation is not held:
            # The head's hold went with its grant: what it held back is free again.
            freed.widen(held, held_nodes)


def reserve_for_head(life: Lifecycle, head: Waiter, now: float, out: list[Decision]) -> None:
    """Step 3: the head's hold (kept if still right), then preemption for it."""
    state = life.state
    request = head.request
    current = state.reservation
    limited = bool(tenant_blocks(state, request, first=True))
    if (
        current is not None
        and current.request_id == head.request_id
        and current.tenant_limited == limited
        and all(node_id in state.nodes for node_id in current.nodes)
        and (current.node_id is None or current.node_id in state.nodes)
    ):
        if not limited:
            _maybe_preempt(life, head, now, out)
        return
    if limited:
        # Only the tenant's own quota is held (so its later, smaller requests do not
        # overtake the head); capacity stays with the others until the tenant frees
        # some, when this is placed again (``tenant_limited`` no longer matches).
        state.reservation = Reservation(
            head.request_id, None, {}, {}, request.tenant, tenant_demand(request), True
        )
        return
    node_id = request.node
    if request.bundles:
        # A gang holds back, on every node where its bundles will fit soonest, what
        # they would take there: small requests backfill only around all of it.
        held_nodes = gangs.target(state.placer, request.bundles, request.strategy)
        node_id = next(iter(held_nodes), None)
    else:
        if node_id is None and request.resources:
            node_id = _soonest_node(state, request.resources)
        held_nodes = {node_id: request.resources} if node_id and request.resources else {}
    state.reservation = Reservation(
        head.request_id,
        node_id,
        held_nodes,
        dict(request.pools),
        request.tenant,
        tenant_demand(request),
    )
    _maybe_preempt(life, head, now, out)


def backfill_shapes(
    life: Lifecycle, head: Waiter, scope: Freed | None, now: float, out: list[Decision]
) -> None:
    """Step 4: the best of each other shape that fits outside the head's hold, in order."""
    state = life.state
    queue = state.queue
    if scope is None:
        bests = queue.group_bests(now)
    else:
        head_shape = head.request.shape
        rank = queue.rank
        most_free = admission.most_free(n for i in scope.nodes if (n := state.nodes.get(i)))
        bests = []
        for shape, group in queue.groups.items():
            if shape == head_shape:
                continue
            request = next(iter(next(iter(group.classes.values())).values())).request
            if (
                request.resources
                and not request.bundles  # a gang may use a little on each of several nodes
                and request.tenant not in scope.tenants
                and not scope.pools & request.pools.keys()
                and any(a > most_free.get(r, 0) for r, a in request.resources.items())
            ):
                continue  # it could only use what was freed, and that is too little
            if place(state, request, state.reservation, scope) is not None:
                bests.append(min(group.heads(), key=lambda w: rank(w, now)))
        bests.sort(key=lambda w: rank(w, now))
    for best in bests:
        if best.request.shape != head.request.shape:
            _grant_shape(life, best, scope, now, out)


def _grant_shape(
    life: Lifecycle, waiter: Waiter, scope: Freed | None, now: float, out: list[Decision]
) -> None:
    """Grant waiters of one shape, best first, until one does not fit.

    One shape fits in the same places, so the first that does not fit tells for all
    the rest of that shape.
    """
    state = life.state
    group = state.queue.groups[waiter.request.shape]
    current: Waiter | None = waiter
    while current is not None:
        node = place(state, current.request, state.reservation, scope)
        if node is None:
            return
        life.grant(current, node, now, out)
        current = (
            min(group.heads(), key=lambda w: state.queue.rank(w, now)) if group.classes else None
        )


def _free_on(state: ClusterState, node_ids: Iterable[str]) -> Callable[[str], list[int]]:
    """What is free of a resource on each of ``node_ids``, asked one resource at a time."""
    nodes = [node for node_id in node_ids if (node := state.nodes.get(node_id)) is not None]
    return lambda resource: [node.free(resource) for node in nodes]


def _soonest_node(state: ClusterState, demand: Amounts) -> str | None:
    """The node with the smallest shortfall: where the head will fit soonest."""
    node = gangs.soonest(state.placer.candidates(demand), demand, {}, ())
    return None if node is None else node.node_id


def _held_nodes(state: ClusterState) -> set[str]:
    held = state.reservation
    return set(held.nodes) if held is not None else set()


def _maybe_preempt(life: Lifecycle, head: Waiter, now: float, out: list[Decision]) -> None:
    """Revoke the fewest preemptible leases that make room for the head, if it may."""
    state, hints = life.state, life.hints
    pending = state.revoking_for.get(head.request_id)
    if pending:
        pending &= state.leases.active.keys()
        if pending:
            return  # wait for the leases already revoked for it
    effective = state.queue.effective(head, now)
    if state.leases.preemptible_count == 0:
        return
    request = head.request
    quota = state.tenants.get(request.tenant)
    reclaims = quota is not None and quota.below_guarantee(tenant_demand(request))
    memo = (head.request_id, int(effective), len(state.nodes), reclaims)
    only: set[str] | None = None
    if memo == hints.preempt_memo and not request.pools:
        if not hints.preempt_dirty:
            return
        if request.bundles and not hints.preempt_dirty & _held_nodes(state):
            return  # nothing changed on the nodes the gang holds back
        only = hints.preempt_dirty
    hints.preempt_dirty = set()
    if request.bundles:
        held = state.reservation
        target = held.nodes if held is not None and held.request_id == head.request_id else {}
        gang_victims = choose_gang_victims(state, request, effective, target) if target else None
        if gang_victims is None:
            hints.preempt_memo = memo
            return
        victims = gang_victims
    else:
        plan = choose_victims(state, request, effective, only, fits_nowhere=True)
        if plan is None:
            hints.preempt_memo = memo  # nothing changed since: nothing to find
            return
        node_id, victims = plan
        if node_id is not None and state.reservation is not None and request.resources:
            state.reservation.node_id = node_id
            state.reservation.nodes = {node_id: request.resources}
    reason = f"preempted for {head.request_id} ({request.priority_name})"
    for lease in victims:
        life.revoke(lease, RevokeCause.PREEMPTED, reason, now, out)
        life.counters.revoked["preemption"] = life.counters.revoked.get("preemption", 0) + 1
    state.revoking_for[head.request_id] = {lease.lease_id for lease in victims}
