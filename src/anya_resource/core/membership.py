"""Nodes come, go, change size and report their use: what that does to leases and waiters.

A node that joins or grows settles the queue there; one that shrinks or leaves rejects
what can never fit any more, and a node that leaves takes its leases with it, and the
leases its processes held elsewhere (nobody is left there to report their death).
Measured use past the policy's marks puts a node under pressure (``core/nodehealth.py``):
it grants no more of that resource and its preemptible leases are revoked one at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from anya_resource.core import admission, agents, settle
from anya_resource.core.ledger import NodeLedger, reserve_for
from anya_resource.core.lifecycle import Lifecycle
from anya_resource.core.model import (
    NODE_RESOURCES,
    Decision,
    NodeSample,
    ReclaimReason,
    RejectReason,
    Request,
    RevokeCause,
)
from anya_resource.core.nodehealth import observe, pressure_victim
from anya_resource.core.state import Freed
from anya_resource.errors import InvalidRequest


def node_up(
    life: Lifecycle, node_id: str, capacity: Mapping[str, int], now: float
) -> list[Decision]:
    """A node joined (or reported a new capacity)."""
    state = life.state
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
        _reject_infeasible(life, lambda request: False, "", out)
        state.reservation = None
        freed.everything = True
    out.extend(settle.settle(life, now, freed))
    return out


def sync_nodes(
    life: Lifecycle, alive: Mapping[str, Mapping[str, int]], now: float
) -> list[Decision]:
    """Ray's list of alive nodes (id -> capacity): joins, losses, and lost holders.

    A node that left goes as at ``node_down``. So do the leases of processes that
    lived on a node that is not alive, wherever those leases were granted: a request
    still in flight from such a process may have been granted after its node went
    (or while this coordinator did not know the node), and no agent is left there to
    report its holder's death.
    """
    out: list[Decision] = []
    for node_id in [n for n in life.state.nodes if n not in alive]:
        out.extend(node_down(life, node_id, now))
    for node_id in sorted(alive):
        if node_id not in life.state.nodes:
            out.extend(node_up(life, node_id, alive[node_id], now))
    orphaned = [n for n in life.state.leases.holders_by_node if n not in alive]
    if orphaned:
        freed = Freed(everything=True)
        for node_id in orphaned:
            life.reclaim_holders_on(node_id, out, freed)
        out.extend(settle.settle(life, now, freed))
    return out


def node_down(life: Lifecycle, node_id: str, now: float) -> list[Decision]:
    """A node is gone: its leases are reclaimed, its waiters placed again or rejected."""
    state = life.state
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
    if state.reservation is not None and (
        state.reservation.node_id == node_id or node_id in state.reservation.nodes
    ):
        state.reservation = None
    _reject_infeasible(life, lambda request: request.node == node_id, node_id, out)
    out.extend(settle.settle(life, now, freed))
    return out


def _reject_infeasible(
    life: Lifecycle, pinned: Callable[[Request], bool], node_id: str, out: list[Decision]
) -> None:
    """After the nodes changed: waiters ``pinned`` to a lost node, and those that can
    never fit any more, are rejected rather than left waiting."""
    for waiter in list(life.state.queue.by_id.values()):
        request = waiter.request
        if pinned(request):
            life.reject(waiter, RejectReason.NODE_LOST, f"node {node_id} left", out)
        elif (
            block := admission.never_fits(life.state, request, life.hints.never_fits)
        ) is not None:
            life.reject(waiter, RejectReason.INFEASIBLE, str(block), out)


def outside_use(
    life: Lifecycle,
    node_id: str,
    available: Mapping[str, int],
    ours: Mapping[str, int],
    now: float,
) -> list[Decision]:
    """What Ray has ``available`` on ``node_id`` and what our placement groups hold there
    (``ours``): what others take of the node's limits is not free (``agents.outside_use``).

    A figure counts from its second reading in a row, the lower of the two: Ray's view
    lags a moment behind a group made or removed, and a lease must not wait a heartbeat
    for a ghost. Less of it than before frees capacity there (the queue is settled on that
    node); more of it only means fewer grants there from now on: nothing granted is undone.
    """
    node = life.state.nodes.get(node_id)
    if node is None:
        return []
    reading = agents.outside_use(node.limits, available, ours)
    seen, node.outside_seen = node.outside_seen, reading
    use = {r: min(int(reading.get(r, 0)), seen.get(r, 0)) for r in NODE_RESOURCES}
    if use == {r: node.outside.get(r, 0) for r in NODE_RESOURCES}:
        return []
    if not node.set_outside(use):
        return []
    life.state.placer.note_freed(node)
    life.hints.preempt_dirty.add(node_id)
    return settle.settle(life, now, Freed(nodes={node_id}))


def health(life: Lifecycle, node_id: str, sample: NodeSample, now: float) -> list[Decision]:
    """A node's measured use: pressure with hysteresis, and revocations under it."""
    state = life.state
    node = state.nodes.get(node_id)
    if node is None:
        return []
    state.samples[node_id] = sample
    relieved = observe(node, sample, state.policy.pressure)
    out: list[Decision] = []
    for resource in sorted(node.pressured):
        victim = pressure_victim(node_id, state.leases.by_node.get(node_id, {}).values(), resource)
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
