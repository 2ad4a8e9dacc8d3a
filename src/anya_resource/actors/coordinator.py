"""The coordinator: one named, detached, async Ray actor around the pure core.

It feeds the ``Scheduler`` events and carries out its decisions, and decides nothing
itself: it answers acquires, tells managers of grants, refusals, revocations, ends
and give-back requests through a long poll (``anya_resource.messages``), and tells
each node agent, in its heartbeat's reply, which holder processes to watch. Between a
capacity check and the grant there is never an ``await``: each call into the
scheduler runs to completion. Time and the world outside come through a ``Clock`` and
a ``Transport`` (``actors/transport.py``), so the same class runs on Ray and, in the
tests, on fakes.

Durability (docs/architecture.md, "Recovery"): every change to the set of leases
is staged in the journal as the core makes it, and one task writes what is staged
to Ray's GCS store, one segment at a time (a group commit: an acquire pays at most
one write, however many arrive together). **Nothing is told before the write that
holds it is done**: no grant, release, cancel or end reaches anybody earlier. So a
restarted coordinator (``max_restarts=-1`` reruns ``__init__``) reads back exactly
what its predecessor had told, no more and no less; ``core/recovery.py`` decides
what it restores, and it serves nothing before that is written again as its own
snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
from collections import deque
from collections.abc import Callable
from typing import Any

import ray

from anya_resource.actors.naming import COORDINATOR_NAME, NAMESPACE
from anya_resource.actors.reservations import Reservations, needs_group
from anya_resource.actors.transport import Clock, RayTransport, SystemClock, Transport
from anya_resource.actors.wire import lease_to_wire
from anya_resource.config import Policy
from anya_resource.core import (
    Decision,
    Grant,
    Holder,
    LeaseRecord,
    NodeSample,
    Reclaim,
    ReclaimReason,
    Reject,
    Request,
    Revoke,
    build_request,
    check_invariants,
)
from anya_resource.core.agents import AgentWatch, capped_capacity, stall
from anya_resource.core.giveback import GiveBack, Tell
from anya_resource.core.history import HistoryRing, compact
from anya_resource.core.model import channel_of
from anya_resource.core.recovery import recovering, start
from anya_resource.core.requests import check_count, check_lease_id, check_seconds, check_ttl
from anya_resource.core.verdict import judge_health
from anya_resource.errors import InvalidRequest, LeaseExpired, ResourceError, rejection_error
from anya_resource.health import NodeHealth, ResourceHealth, node_cpu_percent, node_memory_percent
from anya_resource.messages import (
    AcquireAnswer,
    EndedEvent,
    Event,
    GrantedEvent,
    HeartbeatReply,
    Ping,
    RejectedEvent,
    RequestMessage,
    RevokedEvent,
    Snapshot,
    WatchReply,
    WhatIfAnswer,
)
from anya_resource.metrics import CoordinatorMetrics
from anya_resource.quantities import MILLI

log = logging.getLogger(__name__)

TICK_S = 0.05
WATCH_TIMEOUT_S = 30.0
MAX_PENDING_EVENTS = 200_000  # per channel: a manager's grants and ends not yet polled
# Events per watch reply: a grant carries its lease (~450 bytes), and a reply under Ray's
# 100 KB for inline values never goes through the object store (client.SUBMIT_BATCH).
WATCH_BATCH = 150
POOL_WANTED_S = 0.25  # how often holders of a pool's slots hear that others wait for it
ASK_BACK_S = 0.01  # after a request is queued, warm leases are asked back this soon


class CoordinatorImpl:
    """The actor's body (``Coordinator`` below is its Ray actor class).

    ``transport`` and ``clock`` are Ray's and the system's unless given (the shell's
    tests give fakes: tests/unit/test_coordinator_shell.py).
    """

    def __init__(
        self,
        policy_json: str | None = None,
        *,
        transport: Transport | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.transport: Transport = transport or RayTransport()
        self.clock: Clock = clock or SystemClock()
        stored = self.transport.stored_policy()
        if stored is not None:
            # A restart keeps the policy of the first deployment.
            self.policy = Policy.model_validate_json(stored)
        else:
            self.policy = (
                Policy.model_validate_json(policy_json) if policy_json else Policy.default()
            )
            self.transport.keep_policy(self.policy.model_dump_json().encode())
        self.epoch = self.transport.next_epoch()
        self.restarted = self.epoch > 0
        # What Ray reports for each node, kept so that every heartbeat can re-cap it by
        # what the node's agent measured of the machine.
        self.reported_capacity = self.transport.alive_nodes()
        now = self.clock.time()
        # Recovery, decided in the core: restore what the journal holds, then write it
        # back as this epoch's first snapshot before serving anything (Ray sends no call
        # to an actor before its __init__ returns).
        startup = start(
            self.policy,
            self.epoch,
            self.transport.cluster_secret(),
            self.transport.journal(),
            self.reported_capacity,
            now,
        )
        self.transport.write_now(startup.first_write)
        startup.commits.written(startup.first_write.ticket)
        self.scheduler = startup.scheduler
        self.commits = startup.commits
        self.recovered = startup.restored
        self.started_at = now
        # Requests that wait (request id -> idempotency key): their decision goes to the
        # key's channel as an event, since no call is held open for them.
        self.queued: dict[str, str] = {}
        self.agents: dict[str, Any] = {}
        self.heard = AgentWatch()  # when each agent was started and last beat
        self.node_health: dict[str, NodeHealth] = {}
        # Per holder process: (sequence, event), kept until a watch call acknowledges it
        # by asking for what came after. A watch call abandoned by its client can then
        # never swallow an event.
        self.events: dict[str, list[tuple[int, Event]]] = {}
        self.event_seq = 0
        self.watchers: dict[str, asyncio.Event] = {}
        self.give_back = GiveBack()  # who was asked for pool slots and warm leases
        # channel -> lease id -> "idle" or "busy", as each manager last reported its warm
        # leases (warm_report): for display only, decides nothing.
        self.warm_use: dict[str, dict[str, str]] = {}
        self._asking_back = False
        self.dead_jobs: set[str] = set()
        # What may be told once the write of its ticket is done (see the module's doc).
        self._after_commit: deque[tuple[int, Callable[[], None]]] = deque()
        self._commit_wanted = asyncio.Event()
        self.metrics = CoordinatorMetrics()
        self.history_ring = HistoryRing(self.policy.heartbeat_s)
        # The Ray placement groups of reserved leases (actors/reservations.py), and the
        # grants whose telling waits for theirs to be ready (lease id -> that telling).
        self.reservations = Reservations(self.transport, self.clock.monotonic, self._regrouped)
        self._telling: dict[str, asyncio.Task[None]] = {}
        self._apply(startup.decisions)
        self._restore_groups()
        for node_id in self.reported_capacity:
            self._start_agent(node_id)
        # What exists now (Ray, pydantic, the policy: ~100,000 objects) lives as long as
        # the actor. Out of the collector's sight, a full collection no longer walks it
        # (~100 ms every few seconds under load, a pause for every caller).
        gc.freeze()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._commit_loop()),
            loop.create_task(self._tick_loop()),
            loop.create_task(self._node_loop()),
            loop.create_task(self._pool_wanted_loop()),
            loop.create_task(self._observe_loop()),
        ]
        log.info(
            "coordinator of epoch %d ready: %d leases restored from the journal",
            self.epoch,
            self.recovered,
        )

    # -- the group commit ---------------------------------------------------------------

    def _stage(self) -> None:
        self.commits.stage(self.scheduler.take_journal())
        if self.commits.staged:
            self._commit_wanted.set()

    def _later(self, tell: Callable[[], None]) -> None:
        """Run ``tell`` once everything decided so far is written (at once if it is)."""
        ticket = self.commits.barrier()
        if ticket <= self.commits.committed:
            tell()
        else:
            self._after_commit.append((ticket, tell))

    async def _durable(self) -> None:
        """Return once everything decided so far is written."""
        self._stage()
        if self.commits.barrier() <= self.commits.committed:
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def written() -> None:
            if not done.done():
                done.set_result(None)

        self._later(written)
        await done

    async def _commit_loop(self) -> None:
        while True:
            await self._commit_wanted.wait()
            self._commit_wanted.clear()
            while True:
                self._stage()
                write = self.commits.cut()
                if write is None:
                    break
                await self.transport.write(write)
                self.commits.written(write.ticket)
                self._told()
            self._told()  # a cut with nothing left to write (granted and gone) commits too

    def _told(self) -> None:
        committed = self.commits.committed
        while self._after_commit and self._after_commit[0][0] <= committed:
            _, tell = self._after_commit.popleft()
            try:
                tell()
            except Exception:  # one caller's bad luck must not stop the others' replies
                log.exception("carrying out a committed decision failed")

    # -- lifecycle ------------------------------------------------------------------------

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            self._apply(self.scheduler.tick(self.clock.time()))
            self.reservations.sweep()

    async def _node_loop(self) -> None:
        woke = self.clock.monotonic()
        while True:
            await asyncio.sleep(self.policy.heartbeat_s)
            woke = await self._node_turn(woke)

    async def _node_turn(self, woke: float) -> float:
        """One heartbeat's node work, after a sleep begun at ``woke``; when it woke.

        A node is never lost because this coordinator was busy: a wake-up later than
        planned (a long call, a pause of the process) is time nobody could be heard in,
        so it does not count as any agent's silence.
        """
        now = self.clock.monotonic()
        stalled = stall(woke, now, self.policy.heartbeat_s)
        if stalled:
            log.warning("the coordinator was stalled %.1f s: not agents' silence", stalled)
            self.heard.forgive(stalled)
        try:
            await self._sync_nodes()
            await self._reclaim_ended_jobs()
        except Exception:
            log.exception("node sync failed; trying again next heartbeat")
        return now

    async def _observe_loop(self) -> None:
        """Once per heartbeat: metrics to Ray, and an entry of the history ring."""
        while True:
            await asyncio.sleep(self.policy.heartbeat_s)
            try:
                self.metrics.flush(self.scheduler, self._warm_counts())
                now = self.clock.time()
                if self.history_ring.due(now):
                    self.history_ring.add(compact(self.scheduler.state, now), now)
            except Exception:  # observing must never stop the coordinator
                log.exception("metrics or history failed; trying again next heartbeat")

    # -- nodes and agents ---------------------------------------------------------------

    async def _sync_nodes(self) -> None:
        """Ray's alive nodes, less those whose agent is silent (``core/agents.py``)."""
        alive = await asyncio.to_thread(self.transport.alive_nodes)
        now = self.clock.time()
        self.reported_capacity.update(alive)
        for node_id in alive.keys() - self.agents.keys():
            self._start_agent(node_id)
        for node_id in self.heard.lost(alive, now, self.policy):
            log.warning("the agent of node %s is silent: counting the node as lost", node_id)
            del alive[node_id]
        capacities = {node_id: self._capped(node_id) for node_id in alive}
        self._apply(self.scheduler.sync_nodes(capacities, now))
        for node_id in self.agents.keys() - capacities.keys():
            self._forget_node(node_id)
        await self._note_outside_use(alive)

    def _capped(self, node_id: str) -> dict[str, int]:
        """What Ray reports for the node, never more than its agent measured."""
        health = self.node_health.get(node_id)
        reported = self.reported_capacity[node_id]
        if health is None:
            return dict(reported)
        return capped_capacity(reported, health.memory_total, health.gpus)

    def _forget_node(self, node_id: str) -> None:
        log.warning("node %s is gone: its leases were reclaimed", node_id)
        self.agents.pop(node_id, None)
        self.heard.forget(node_id)
        self.node_health.pop(node_id, None)
        self.reported_capacity.pop(node_id, None)

    def _start_agent(self, node_id: str) -> None:
        self.heard.agent_started(node_id, self.clock.time())
        self.agents[node_id] = self.transport.start_agent(node_id, self.policy.heartbeat_s)

    async def _reclaim_ended_jobs(self) -> None:
        if not self.scheduler.watches_jobs():
            return
        ended = await asyncio.to_thread(self.transport.ended_jobs)
        now = self.clock.time()
        for job_id in sorted(ended - self.dead_jobs):
            self.dead_jobs.add(job_id)
            self._apply(self.scheduler.job_ended(job_id, now))

    # -- carrying out decisions ----------------------------------------------------------

    def _apply(self, decisions: list[Decision]) -> None:
        """Carry ``decisions`` out, each once what it stands on is written.

        A request decided in the call that submitted it is answered in that call's reply;
        one decided later (it waited) is answered by an event on its manager's channel.
        """
        self._stage()
        for decision in decisions:
            if isinstance(decision, Grant):
                self.metrics.grant(decision)
                lease = decision.lease
                if lease.reserve:  # reserved in Ray before the grant is told
                    self._reserve(lease)
                waited = self.queued.pop(decision.request_id, None)
                if waited is not None:
                    if lease.reserve:  # told with its group's id once that is ready
                        self._tell_when_reserved(lease, waited)
                    else:
                        self._tell_later(channel_of(waited), _granted(waited, lease))
            elif isinstance(decision, Reject):
                waited = self.queued.pop(decision.request_id, None)
                if waited is not None:
                    error = rejection_error(decision.reason.value, decision.message)
                    rejected: RejectedEvent = {
                        "kind": "rejected",
                        "key": waited,
                        "error": type(error).__name__,
                        "message": str(error),
                    }
                    self._tell_later(channel_of(waited), rejected)
            elif isinstance(decision, Reclaim):
                given_back = decision.reason in (ReclaimReason.RELEASED, ReclaimReason.CANCELLED)
                self.reservations.end(decision.lease_id, given_back)
                ended: EndedEvent = {
                    "kind": "ended",
                    "lease_id": decision.lease_id,
                    "reason": decision.reason.value,
                }
                self._tell_later(decision.tell, ended, decision.lease_id)
            elif isinstance(decision, Revoke):
                revoked: RevokedEvent = {
                    "kind": "revoked",
                    "lease_id": decision.lease_id,
                    "node_id": decision.node_id,
                    "cause": decision.cause.value,
                    "reason": decision.reason,
                    "deadline": decision.deadline,
                }
                self._tell_after_grant(decision.lease_id, decision.tell, revoked)

    def _tell_later(self, channel: str | None, event: Event, lease_id: str | None = None) -> None:
        """Tell ``event`` once what it stands on is written (and, for the end of a lease
        whose grant is still being told, after that grant)."""
        if channel is not None:
            self._later(lambda: self._tell_after_grant(lease_id, channel, event))

    def _tell_after_grant(self, lease_id: str | None, channel: str | None, event: Event) -> None:
        telling = self._telling.get(lease_id) if lease_id is not None else None
        if telling is None:
            self._tell(channel, event)
            return

        async def after() -> None:
            await asyncio.shield(telling)
            self._tell(channel, event)

        asyncio.get_running_loop().create_task(after())

    # -- reservations in Ray (actors/reservations.py) -----------------------------------

    def _reserve(self, lease: LeaseRecord) -> None:
        """Ask Ray for the lease's placement group; the journal keeps which it is."""
        if not needs_group(lease) or lease.lease_id in self.reservations:
            return
        free_after = {node_id: self.scheduler.free_on(node_id) for node_id in lease.nodes()}
        group_id = self.reservations.make(lease, free_after)
        self.scheduler.placement_group(lease.lease_id, lease.token, group_id)

    def _regrouped(self, lease_id: str, group_id: str) -> None:
        """A lease's group was asked for again (``Reservations``): the journal keeps it."""
        lease = self.scheduler.leases.active.get(lease_id)
        if lease is not None:
            self.scheduler.placement_group(lease_id, lease.token, group_id)
            self._stage()

    def _tell_when_reserved(self, lease: LeaseRecord, key: str) -> None:
        """Tell a grant once it is written and its placement group is ready (or gone)."""
        lease_id = lease.lease_id

        async def tell() -> None:
            await self.reservations.wait(lease_id)
            await self._durable()  # a group asked for again: its new id is written first
            self._tell(channel_of(key), _granted(key, lease))

        def start() -> None:
            task = asyncio.get_running_loop().create_task(tell())
            self._telling[lease_id] = task
            task.add_done_callback(lambda _: self._telling.pop(lease_id, None))

        self._later(start)

    def _restore_groups(self) -> None:
        """After a restart: Ray's groups of ours against the journal's leases. A group no
        lease holds is removed; a lease that had one (or is reserved at grant) gets its
        own again, a new one if Ray no longer has it."""
        found = {group_id: handle for group_id, handle in self.transport.our_groups().values()}
        active = self.scheduler.leases.active
        kept: set[str] = set()
        for lease in list(active.values()):
            if not needs_group(lease) or not (lease.reserve or lease.placement_group):
                continue
            group_id = lease.placement_group
            if group_id is not None and group_id in found and group_id not in kept:
                self.reservations.adopt(lease, group_id, found[group_id])
                kept.add(group_id)
            else:
                log.warning("lease %s had lost its placement group: made anew", lease.lease_id)
                lease.placement_group = None
                self._reserve(lease)
        for group_id, handle in found.items():
            if group_id not in kept:  # no lease holds it (a spare, or its lease ended)
                self.reservations.remove_stray(handle)
        self._stage()

    async def _note_outside_use(self, alive: dict[str, dict[str, int]]) -> None:
        """Ray's figures of what each node has available, for the core to count what
        plain Ray work takes (``membership.outside_use``). What our groups hold is read
        before and after Ray's figures, and the larger counted as ours: a group made or
        removed meanwhile then never makes plain work look larger than it is."""
        before = self.reservations.held_on()
        available = await asyncio.to_thread(self.transport.available_nodes)
        after = self.reservations.held_on()
        now = self.clock.time()
        for node_id in alive:
            free = available.get(node_id)
            if free is None:
                continue
            ours = {
                r: max(before.get(node_id, {}).get(r, 0), after.get(node_id, {}).get(r, 0))
                for r in ("cpu", "gpu", "memory")
            }
            self._apply(self.scheduler.outside_use(node_id, free, ours, now))

    def _tell(self, channel: str | None, event: Event) -> None:
        """Queue ``event`` for the manager listening on ``channel`` (its next ``watch``)."""
        if channel is None:
            return
        self.event_seq += 1
        pending = self.events.setdefault(channel, [])
        pending.append((self.event_seq, event))
        if len(pending) > MAX_PENDING_EVENTS:
            # Only a manager that stopped polling gets this far behind (its process is
            # gone or wedged): what it missed it learns from its census, if it comes back.
            del pending[: len(pending) - MAX_PENDING_EVENTS]
        watcher = self.watchers.get(channel)
        if watcher is not None:
            watcher.set()

    def _tell_all(self, tells: list[Tell]) -> None:
        for channel, event in tells:
            self._tell(channel, event)

    # -- giving back what others wait for (core/giveback.py) -----------------------------

    async def _pool_wanted_loop(self) -> None:
        while True:
            await asyncio.sleep(POOL_WANTED_S)
            self._tell_all(self.give_back.repeat(self.scheduler.state))
            self._ask_back()

    def _ask_back_soon(self) -> None:
        """A request was queued: ask for warm leases back shortly (once per burst)."""
        if not self._asking_back:
            self._asking_back = True
            asyncio.get_running_loop().call_later(ASK_BACK_S, self._ask_back)

    def _ask_back(self) -> None:
        self._asking_back = False
        self._tell_all(self.give_back.warm(self.scheduler.state, self.clock.time()))

    # -- the API the client calls ---------------------------------------------------------

    async def ping(self) -> Ping:
        return {
            "epoch": self.epoch,
            "ready": True,  # nothing is served before recovery is written (see __init__)
            "nodes": len(self.agents),
            "recovering": recovering(self.scheduler),
            "pid": os.getpid(),
            "warm_idle_s": self.policy.lease.warm_idle_s,
            "submit_ahead": self.policy.lease.submit_ahead,
            "max_ttl": self.policy.lease.max_ttl,
        }

    def _request(self, spec: RequestMessage) -> Request:
        resources = spec.get("resources", {})
        if spec.get("default_pool"):
            if self.policy.default_pool is None:
                raise InvalidRequest("no pool named and the policy has no default_pool")
            resources = {"pools": {self.policy.default_pool: 1}}
        if not isinstance(spec.get("holder", {}), dict):
            raise InvalidRequest("holder: expected a mapping of process identity fields")
        return build_request(
            self.policy,
            resources,
            priority=spec.get("priority", "normal"),
            tenant=spec.get("tenant"),
            ttl=spec.get("ttl"),
            timeout=spec.get("timeout"),
            preemptible=spec.get("preemptible", False),
            node=spec.get("node"),
            idempotency_key=spec.get("idempotency_key"),
            holder=Holder(**spec.get("holder", {})),
            detached=spec.get("detached", False),
            within=spec.get("within"),
            bundles=spec.get("bundles"),
            strategy=spec.get("strategy"),
            reserve=spec.get("reserve"),
        )

    async def acquire_many(
        self,
        specs: list[RequestMessage],
        releases: list[list[str]] | None = None,
        by: str | None = None,
    ) -> list[AcquireAnswer]:
        """Submit the requests a manager made since its last call; answer once written.

        Per request: ``["granted", lease bytes]``, ``["queued"]`` (its grant or rejection
        comes later as an event on the manager's channel, so a waiting request holds no
        call here however many wait), or ``["error", error class name, message]``.
        Releases the manager had not sent yet ride along (applied first, whatever becomes
        of the requests). The lease bytes are ``wire.lease_to_wire``'s: Ray passes bytes
        through as they are.
        """
        self._release_all(releases or (), by)
        now = self.clock.time()
        answers: list[AcquireAnswer] = []
        reserving: list[tuple[int, LeaseRecord]] = []
        for spec in specs:
            try:
                answers.append(self._submit(spec, now, reserving, len(answers)))
            except ResourceError as exc:
                answers.append(["error", type(exc).__name__, str(exc)])
        await self._durable()  # nothing is told before it is written
        for index, lease in reserving:  # nor before what it reserves in Ray is ready
            await self.reservations.wait(lease.lease_id)
            answers[index] = ["granted", lease_to_wire(lease)]  # with its group's id
        if reserving:
            await self._durable()  # a group asked for again: its new id is written too
        return answers

    def _submit(
        self,
        spec: RequestMessage,
        now: float,
        reserving: list[tuple[int, LeaseRecord]],
        index: int,
    ) -> AcquireAnswer:
        request = self._request(spec)
        request_id, decisions = self.scheduler.submit(request, now)
        mine = next((d for d in decisions if getattr(d, "request_id", None) == request_id), None)
        key = request.idempotency_key
        if mine is None and key is not None:
            self.queued[request_id] = key  # answered by an event when it is decided
        self._apply(decisions)
        if mine is None:
            if request.pools:
                self._tell_all(self.give_back.queued(request, self.scheduler.state, now))
            self._ask_back_soon()
            return ["queued"]
        if isinstance(mine, Grant):
            if mine.lease.lease_id in self.reservations:
                reserving.append((index, mine.lease))
            return ["granted", lease_to_wire(mine.lease)]
        assert isinstance(mine, Reject)
        error = rejection_error(mine.reason.value, mine.message)
        return ["error", type(error).__name__, str(error)]

    async def cancel(self, idempotency_key: str) -> None:
        """The caller gave up on the request with this key, whatever its state.

        Returns once the cancel is written: a cancel that is lost with the coordinator
        is sent again by the client, or the request it refuses could still be granted.
        """
        self._apply(self.scheduler.cancel_key(idempotency_key, self.clock.time()))
        await self._durable()

    async def release(self, lease_id: str, token: str, by: str | None = None) -> None:
        """Give a lease back (``by``: the releasing process's holder key); once written."""
        check_lease_id(lease_id)
        self._apply(self.scheduler.release(lease_id, token, self.clock.time(), by=by))
        await self._durable()

    async def release_many(self, pairs: list[list[str]], by: str | None = None) -> None:
        """Releases sent in one call, ``[lease_id, token]`` each; a bad one is only logged."""
        self._release_all(pairs, by)
        await self._durable()

    def _release_all(self, pairs: Any, by: str | None) -> None:
        for lease_id, token in pairs:
            try:
                self._apply(self.scheduler.release(lease_id, token, self.clock.time(), by=by))
            except ResourceError as exc:
                log.warning("release of %s refused: %s", lease_id, exc)

    async def budget_group(self, lease_id: str, key: str) -> str:
        """The placement group of the budget ``lease_id`` (its key proves membership),
        made now if it has none: where a job runs its own plain Ray work."""
        lease = self.scheduler.budget_owner(lease_id, key)
        return await self._group_of(lease)

    async def reserve(self, lease_id: str, token: str) -> str:
        """The lease's placement group (its id, hex), made now if it has none yet; once
        Ray has reserved it. A lease drawn from a budget runs in its budget's group."""
        leases = self.scheduler.leases
        lease = leases.held_with(lease_id, token)
        if lease is None:
            leases.raise_ended(lease_id)
        if lease.within is not None:
            owner = leases.active.get(lease.within)
            if owner is None:
                raise LeaseExpired(f"lease {lease_id}: its budget {lease.within} has ended")
            lease = owner
        return await self._group_of(lease)

    async def _group_of(self, lease: LeaseRecord) -> str:
        """The placement group of ``lease``, made now if it has none, once Ray has it."""
        if not needs_group(lease):
            raise InvalidRequest(
                f"lease {lease.lease_id} holds nothing Ray can reserve (pools and disk are "
                "ours alone); expected a lease of cpu, gpu or memory"
            )
        self._reserve(lease)
        await self._durable()
        await self.reservations.wait(lease.lease_id)
        group = self.reservations.ids.get(lease.lease_id)
        if group is None or lease.lease_id not in self.reservations.is_ready:
            raise LeaseExpired(f"lease {lease.lease_id} ended before Ray reserved it")
        return group

    async def budget_key(self, lease_id: str, token: str) -> str:
        """The key that lets a job's processes draw from this lease (core/budgets.py)."""
        check_lease_id(lease_id)
        return self.scheduler.budget_key(lease_id, token)

    async def queue_positions(self, actor_ids: list[str]) -> dict[str, Any]:
        """Where the requests these actors hold wait, and why (the job queue's listing)."""
        return self.scheduler.queue_positions(actor_ids, self.clock.time())

    async def budgets(self) -> dict[str, dict[str, Any]]:
        """Every budget in use: its amounts, what is drawn from it, who waits in it."""
        return self.scheduler.budget_list()

    async def renew(self, lease_id: str, token: str, ttl: float | None = None) -> float:
        """The lease's new expiry (``ttl``: seconds up to the policy's max_ttl, or None
        for the lease's own); checked here first: a client is never trusted."""
        check_lease_id(lease_id)
        check_ttl(ttl, self.policy.lease.max_ttl)
        return self.scheduler.renew(lease_id, token, self.clock.time(), ttl).expires_at

    async def rebind(self, lease_id: str, token: str, holder: dict[str, Any]) -> float:
        """Another process (a ``@leased`` task's worker) holds the lease from now on."""
        check_lease_id(lease_id)
        lease = self.scheduler.rebind(lease_id, token, Holder(**holder), self.clock.time())
        await self._durable()
        return lease.expires_at

    async def claim(
        self, manager: str, held: list[list[str]], waiting: list[str]
    ) -> dict[str, float | None]:
        """A client manager's account after it saw a new epoch (``Scheduler.claim``).

        Per held lease, its new expiry or None if it has ended; the manager's other
        restored leases that none of its waiting acquires will claim are reclaimed.
        """
        pairs = [(lease_id, token) for lease_id, token in held]
        results, decisions = self.scheduler.claim(manager, pairs, waiting, self.clock.time())
        self._apply(decisions)
        await self._durable()
        return results

    async def watch(
        self, channel: str, after: int = 0, timeout: float = WATCH_TIMEOUT_S
    ) -> WatchReply:
        """Long poll: events for this manager's channel after ``after``, and the epoch.

        The grants and rejections of its waiting requests, the ends and revocations of
        its leases, and pool hints. An event stays until a later poll acknowledges it by
        asking for what came after, so a poll abandoned by its client never swallows one.
        """
        pending = self.events.setdefault(channel, [])
        pending[:] = [(seq, e) for seq, e in pending if seq > after]  # acknowledged
        self.give_back.read(channel, (e["pool"] for _, e in pending if e["kind"] == "pool_wanted"))
        if not pending:
            event = self.watchers.setdefault(channel, asyncio.Event())
            event.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(event.wait(), timeout=min(timeout, WATCH_TIMEOUT_S))
        events = [(seq, e) for seq, e in self.events.get(channel, []) if seq > after]
        events = events[:WATCH_BATCH]
        return {
            "epoch": self.epoch,
            "events": [e for _, e in events],
            "cursor": max((seq for seq, _ in events), default=after),
        }

    async def snapshot(self) -> Snapshot:
        snap = self.scheduler.snapshot(self.clock.time())
        snap["health"] = {n: h.to_dict() for n, h in self.node_health.items()}
        snap["warm"] = self._warm_counts()
        snap["recovery"] = {
            "restored": self.recovered,
            "unclaimed": recovering(self.scheduler),
            "started_at": self.started_at,
            "journal_generation": self.commits.generation.number,
            "journal_ticket": self.commits.committed,
        }
        return snap

    async def lease_list(self) -> list[dict[str, Any]]:
        """Every active lease; ``warm``: "idle" or "busy" for a warm lease, else None."""
        uses = self._warm_uses()
        rows = self.scheduler.lease_list()
        for row in rows:
            row["warm"] = uses.get(row["lease_id"])
        return rows

    async def warm_report(self, channel: str, idle: list[str], busy: list[str]) -> None:
        """A manager's warm leases as it sees them now (sent when they change, at most
        every half second; warm acquires and releases themselves take no call)."""
        uses = {**dict.fromkeys(busy, "busy"), **dict.fromkeys(idle, "idle")}
        if uses:
            self.warm_use[channel] = uses
        else:
            self.warm_use.pop(channel, None)

    def _warm_uses(self) -> dict[str, str]:
        """lease id -> "idle"/"busy", for active leases only (stale reports dropped)."""
        active = self.scheduler.state.leases.active
        uses: dict[str, str] = {}
        for channel, reported in list(self.warm_use.items()):
            live = {i: use for i, use in reported.items() if i in active}
            if live:
                uses.update(live)
            else:
                del self.warm_use[channel]
        return uses

    def _warm_counts(self) -> dict[str, int]:
        uses = list(self._warm_uses().values())
        return {"idle": uses.count("idle"), "busy": uses.count("busy")}

    async def history(self, seconds: float | None = None) -> list[bytes]:
        """The history entries of the last ``seconds`` (None: all), JSON-encoded.

        Encoded as stored: the client decodes them, so that a long history does not
        hold up this event loop.
        """
        check_seconds("seconds", seconds)
        return self.history_ring.since(self.clock.time(), seconds)

    async def job_started(self, priority: str, tenant: str, waited: float) -> None:
        """A queued Ray job got its lease after ``waited`` s (for the metrics only)."""
        self.metrics.job_started(str(priority)[:100], str(tenant)[:100], float(waited))

    async def what_if(self, spec: RequestMessage, count: int) -> WhatIfAnswer:
        check_count(count)  # before anything: an int of 5,000 digits is refused, named
        request = self._request({**spec, "idempotency_key": None, "timeout": None})
        return self.scheduler.what_if(request, count, self.clock.time()).to_dict()

    async def check_health(self) -> ResourceHealth:
        now = self.clock.time()
        snap = self.scheduler.snapshot(now)
        silent = self.heard.silence(now)
        verdict = judge_health(self.scheduler.state, snap, silent, self.policy)
        reasons = verdict.reasons
        nodes = [
            NodeHealth.from_dict({**health.to_dict(), "missed_heartbeats": verdict.missed[node_id]})
            for node_id in snap["nodes"]
            if (health := self.node_health.get(node_id)) is not None
        ]
        return ResourceHealth(
            is_healthy=not reasons,
            memory_usage_percent=max((h.memory_percent for h in nodes), default=0.0),
            cpu_percent=max((h.cpu_percent for h in nodes), default=0.0),
            disk_percent=max((h.disk_percent for h in nodes), default=0.0),
            nodes=nodes,
            bottlenecks=snap["bottlenecks"],
            reasons=reasons,
            checked_at=now,
        )

    # -- what agents call ---------------------------------------------------------------

    async def heartbeat(
        self, node_id: str, health: dict[str, Any], dead_holders: list[str]
    ) -> HeartbeatReply:
        """An agent's beat: its node's health and the holders it found dead.

        The reply names the holder processes on that node to watch from now on: an
        agent keeps no table of its own, so a restarted agent, or one that beat for a
        coordinator that died since, knows whom to watch from its next beat on, and
        reports a dead holder at every beat until nothing is held in its name.
        """
        now = self.clock.time()
        sample = NodeHealth.from_dict(health)
        self.node_health[node_id] = sample
        self.heard.beat(node_id, now)
        for holder_key in dead_holders:
            self._apply(self.scheduler.holder_died(holder_key, now))
        watch = [[h.key, h.pid, h.create_time] for h in self.scheduler.holders_on(node_id)]
        counted = self.scheduler.capacity_of(node_id)
        if counted is None:
            return {"known": False, "epoch": self.epoch, "holders": watch}
        # -- adaptive allocation (begin) --
        # Grantable capacity follows the machine: Ray's figure capped by what the agent
        # measured just now (a cgroup limit lowered at run time, a wrong --memory), then
        # minus the reserve, which node_up recomputes from the new capacity.
        if node_id in self.reported_capacity:
            capacity = self._capped(node_id)
            if capacity != counted:
                log.info("node %s capacity now %s", node_id, capacity)
                self._apply(self.scheduler.node_up(node_id, capacity, now))
                counted = capacity
        # -- adaptive allocation (end) --
        memory_capacity = counted.get("memory", 0)
        cpu_capacity = counted.get("cpu", 0) / MILLI
        self._apply(
            self.scheduler.health(
                node_id,
                NodeSample(
                    memory_percent=node_memory_percent(sample, memory_capacity),
                    cpu_percent=node_cpu_percent(sample, cpu_capacity),
                    memory_available=sample.memory_available,
                    disk_percent=sample.disk_percent,
                ),
                now,
            )
        )
        return {"known": True, "epoch": self.epoch, "holders": watch}

    async def invariants(self) -> list[str]:
        """Empty when every invariant of docs/architecture.md holds (for tests and operators)."""
        try:
            check_invariants(self.scheduler.state)
        except AssertionError as exc:
            return [str(exc)]
        return []


Coordinator = ray.remote(CoordinatorImpl)


def _granted(key: str, lease: LeaseRecord) -> GrantedEvent:
    """The event that tells a waiter its grant (the record as it is now)."""
    return {"kind": "granted", "key": key, "lease": lease_to_wire(lease)}


def coordinator_options() -> dict[str, Any]:
    return {
        "name": COORDINATOR_NAME,
        "namespace": NAMESPACE,
        "lifetime": "detached",
        "get_if_exists": True,
        "num_cpus": 0,
        "max_restarts": -1,
        "max_concurrency": 10_000,
    }


__all__ = [
    "Coordinator",
    "CoordinatorImpl",
    "coordinator_options",
]
