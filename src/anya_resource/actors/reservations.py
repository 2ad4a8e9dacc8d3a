"""The Ray placement groups that reserve leases: made, awaited, removed, found again.

A lease of node resources is reserved in Ray by a placement group of its own (named
``anya-resource:<lease id>``), one Ray bundle per node the lease holds something on (its
bundles there summed; in the order its bundles name the nodes, ``LeaseRecord.nodes``),
each pinned to that node (``bundle_label_selector={"ray.io/node-id": ...}``) under
``STRICT_SPREAD``, with a
detached lifetime: it outlives the process that asked and the coordinator, and is
removed when the lease ends in any way. Ray then enforces what the lease holds: plain
Ray work cannot take it, and work placed in it runs in what it reserved.

The core decides which leases are reserved and when (``Request.reserve``, the policy's
``lease.reserve_at``), and keeps each lease's group in the journal
(``Scheduler.placement_group``); this module only carries that out on a ``Groups``
transport and remembers the handles, so that a grant waits for its group to be ready
before it is told, and the group goes when the lease ends: at once, or after a moment
as a spare that the next lease of the same layout takes as it is (``core/spares.py``
says why and when). After a restart the coordinator finds the groups again by the ids
the journal holds: a group no lease holds is removed, a reserved lease whose group is
gone gets a new one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any, Protocol

from anya_resource.core.model import Amounts, Bundle, LeaseRecord
from anya_resource.core.spares import Spare, SpareGroups, layout_of
from anya_resource.quantities import MILLI

log = logging.getLogger(__name__)

GROUP_PREFIX = "anya-resource:"
# Ray's view of a node lags a group's removal by about 0.1 s; a group asked for on that
# node within it is placed only at Ray's retry, about a second later. Such a group not
# ready this long after is asked for again (a new one, the first removed): Ray's view
# has caught up by then, and it is placed at once.
RAY_VIEW_LAG_S = 0.15
ASK_AGAIN_AFTER_S = 0.2
NODE_LABEL = "ray.io/node-id"  # Ray's label of a node's id, which a bundle may select
# Ray's names of what a group reserves (disk is not a Ray resource; pools are ours).
RAY_NAMES = {"cpu": "CPU", "gpu": "GPU", "memory": "memory"}


def group_name(lease_id: str) -> str:
    return GROUP_PREFIX + lease_id


def lease_of(name: str) -> str | None:
    """The lease id a group of ours is named after; None for anybody else's group."""
    return name[len(GROUP_PREFIX) :] if name.startswith(GROUP_PREFIX) else None


def reservable(amounts: Mapping[str, int]) -> Amounts:
    """What Ray can reserve of ``amounts`` (core units)."""
    return {r: a for r, a in amounts.items() if r in RAY_NAMES and a > 0}


def ray_bundles(placed: Iterable[Bundle]) -> tuple[list[dict[str, float]], list[dict[str, str]]]:
    """The group's bundles in Ray's units and names, one per node (what the lease holds
    there, summed), and each one's node selector.

    One per node, pinned, under STRICT_SPREAD: Ray places such a group at once, where a
    soft strategy over pinned bundles took it a third of a second (measured: median 368
    ms for SPREAD, 108 ms for PACK, 14 ms for STRICT_SPREAD, 4 bundles on 4 nodes).
    """
    merged: dict[str, Amounts] = {}
    for node_id, amounts in placed:
        into = merged.setdefault(node_id, {})
        for resource, amount in amounts.items():
            into[resource] = into.get(resource, 0) + amount
    bundles: list[dict[str, float]] = []
    selectors: list[dict[str, str]] = []
    for node_id, amounts in merged.items():
        bundle: dict[str, float] = {}
        for resource, amount in reservable(amounts).items():
            bundle[RAY_NAMES[resource]] = (
                amount / MILLI if resource in ("cpu", "gpu") else float(amount)
            )
        bundles.append(bundle)
        selectors.append({NODE_LABEL: node_id})
    return bundles, selectors


def needs_group(lease: LeaseRecord) -> bool:
    """Whether Ray can reserve anything of ``lease`` (a draw runs in its budget's)."""
    return lease.within is None and any(reservable(a) for _, a in lease.placed())


class Groups(Protocol):
    """Ray's placement groups, as the coordinator uses them (``RayTransport``)."""

    def create_group(
        self,
        name: str,
        bundles: list[dict[str, float]],
        selectors: list[dict[str, str]],
        strategy: str,
    ) -> tuple[str, Any]:
        """Ask Ray for a placement group; its id (hex) and a handle, at once."""
        ...

    async def group_ready(self, handle: Any) -> None:
        """Return once Ray has reserved every bundle of the group."""
        ...

    def remove_group(self, handle: Any) -> None:
        """Remove the group (what runs in it ends with it)."""
        ...

    def our_groups(self) -> dict[str, tuple[str, Any]]:
        """Every group of ours Ray has and has not removed: name -> (id, handle)."""
        ...


class Reservations:
    """The groups the coordinator made for leases, and which are ready."""

    def __init__(
        self,
        groups: Groups,
        clock: Callable[[], float],
        regrouped: Callable[[str, str], None],
    ) -> None:
        """``clock``: monotonic seconds; ``regrouped(lease_id, group_id)``: a lease's
        group was asked for again, under a new id (for the journal)."""
        self.groups = groups
        self.clock = clock
        self.regrouped = regrouped
        self.removed_at: dict[str, float] = {}  # node -> when a group there last went
        self.handles: dict[str, Any] = {}  # lease id -> the group's handle
        self.ids: dict[str, str] = {}  # lease id -> the group's id (hex)
        self.placed: dict[str, list[Bundle]] = {}  # lease id -> what its group holds where
        self.ready: dict[str, asyncio.Future[None]] = {}  # done once ready, or once gone
        self.is_ready: set[str] = set()
        self.spares = SpareGroups()  # groups of ended leases, kept a moment for reuse
        self.spare_handles: dict[str, tuple[Any, list[Bundle]]] = {}  # group id -> handle
        self._tasks: set[asyncio.Task[None]] = set()  # waits and removals under way

    def __contains__(self, lease_id: object) -> bool:
        return lease_id in self.handles

    def make(self, lease: LeaseRecord, free_after: Mapping[str, Mapping[str, int]]) -> str:
        """The group of ``lease`` (pinned where the core placed it): a spare of its layout
        as it is, else a new one asked of Ray, once the spares whose room it needs are
        given up (``free_after``: the ledger's free room per node, after the grant).
        Its id."""
        layout = layout_of(lease.placed())
        spare = self.spares.take(layout)
        if spare is not None:
            handle, _ = self.spare_handles.pop(spare.group_id)
            self._track(lease, spare.group_id, handle, ready=True)
            return spare.group_id
        for gone in self.spares.clear_for(layout, free_after):
            self._give_up(gone)
        now = self.clock()
        lagging = any(
            now - self.removed_at.get(node, -RAY_VIEW_LAG_S) < RAY_VIEW_LAG_S
            for node in lease.nodes()
        )
        group_id, handle = self._create(lease)
        self._track(lease, group_id, handle, ask_again=lagging)
        return group_id

    def _create(self, lease: LeaseRecord) -> tuple[str, Any]:
        strategy = "STRICT_SPREAD" if len(lease.nodes()) > 1 else "PACK"
        bundles, selectors = ray_bundles(lease.placed())
        return self.groups.create_group(group_name(lease.lease_id), bundles, selectors, strategy)

    def adopt(self, lease: LeaseRecord, group_id: str, handle: Any) -> None:
        """A group found after a restart: it stands for ``lease`` again."""
        self._track(lease, group_id, handle)

    def _track(
        self,
        lease: LeaseRecord,
        group_id: str,
        handle: Any,
        ready: bool = False,
        ask_again: bool = False,
    ) -> None:
        lease_id = lease.lease_id
        self.handles[lease_id] = handle
        self.ids[lease_id] = group_id
        self.placed[lease_id] = [(node, reservable(a)) for node, a in lease.placed()]
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.ready[lease_id] = done
        if ready:  # a spare: Ray holds it already
            self.is_ready.add(lease_id)
            done.set_result(None)
            return

        async def wait() -> None:
            try:
                await self._ready(lease, handle, ask_again)
            except Exception as exc:  # removed meanwhile, or Ray failed: it is not ready
                log.info("placement group of %s did not become ready: %s", lease_id, exc)
            else:
                if lease_id in self.handles:
                    self.is_ready.add(lease_id)
            if not done.done():
                done.set_result(None)

        self._spawn(wait())

    async def _ready(self, lease: LeaseRecord, handle: Any, ask_again: bool) -> None:
        """Until the lease's group is ready; asked for again once if it was asked for
        while Ray's view still had a removed group's room taken (``RAY_VIEW_LAG_S``)."""
        if ask_again:
            try:
                await asyncio.wait_for(self.groups.group_ready(handle), ASK_AGAIN_AFTER_S)
                return
            except asyncio.TimeoutError:
                if self.handles.get(lease.lease_id) is not handle:
                    return  # the lease ended meanwhile
                self._remove(handle, [])
                group_id, handle = self._create(lease)
                self.handles[lease.lease_id] = handle
                self.ids[lease.lease_id] = group_id
                self.regrouped(lease.lease_id, group_id)
        await self.groups.group_ready(handle)

    async def wait(self, lease_id: str) -> None:
        """Return once the group of ``lease_id`` is ready, or the lease ended."""
        done = self.ready.get(lease_id)
        if done is not None:
            await asyncio.shield(done)

    def end(self, lease_id: str, given_back: bool) -> None:
        """The lease ended: its group is kept a moment as a spare if its holder gave it
        back (``given_back``: released, or a cancel's crossing grant) and Ray holds it;
        else it goes now, and what still runs in it with it (revoked, expired, its holder
        or node lost). Going is a blocking call of about a millisecond: a group asked for
        right after on the same nodes then finds the room free sooner."""
        handle = self.handles.pop(lease_id, None)
        group_id = self.ids.pop(lease_id, None)
        placed = self.placed.pop(lease_id, None) or []
        was_ready = lease_id in self.is_ready
        self.is_ready.discard(lease_id)
        done = self.ready.pop(lease_id, None)
        if done is not None and not done.done():
            done.set_result(None)  # a grant waiting for it is told, then its end
        if handle is None or group_id is None:
            return
        if was_ready and given_back:
            self.spares.put(Spare(group_id, layout_of(placed), self.clock()))
            self.spare_handles[group_id] = (handle, placed)
        else:
            self._remove(handle, placed)

    def sweep(self) -> None:
        """Give up the spares kept too long (``core/spares.py``)."""
        for spare in self.spares.expired(self.clock()):
            self._give_up(spare)

    def _give_up(self, spare: Spare) -> None:
        handle, placed = self.spare_handles.pop(spare.group_id, (None, []))
        if handle is not None:
            self._remove(handle, placed)

    def remove_stray(self, handle: Any) -> None:
        """A group of ours that no lease holds (found after a restart)."""
        self._remove(handle, [])

    def _remove(self, handle: Any, placed: list[Bundle]) -> None:
        now = self.clock()
        for node_id, _ in placed:
            self.removed_at[node_id] = now
        try:
            self.groups.remove_group(handle)
        except Exception as exc:  # gone already: nothing is left to remove
            log.info("removing a placement group failed: %s", exc)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def held_on(self) -> dict[str, Amounts]:
        """What our groups may hold on each node, as Ray may count it: every group made
        and not yet removed (a pending one may be placed any moment), so that nothing of
        ours is ever taken for plain Ray work."""
        held: dict[str, Amounts] = {}
        kept = [placed for _, placed in self.spare_handles.values()]
        for placed in [*self.placed.values(), *kept]:
            for node_id, amounts in placed:
                into = held.setdefault(node_id, {})
                for resource, amount in amounts.items():
                    into[resource] = into.get(resource, 0) + amount
        return held


__all__ = [
    "GROUP_PREFIX",
    "Groups",
    "Reservations",
    "group_name",
    "lease_of",
    "needs_group",
    "ray_bundles",
    "reservable",
]
