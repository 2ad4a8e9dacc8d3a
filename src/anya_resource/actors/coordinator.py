"""The coordinator: one named, detached, async Ray actor around the pure core.

It feeds the ``Scheduler`` events and carries out its decisions: it resolves the
futures that waiting ``acquire`` calls are parked on, tells node agents about
grants and reclaims (in the background, batched), and tells holders about
revocations through a long poll. Between a capacity check and the grant there
is never an ``await``: each call into the scheduler runs to completion.

Recovery after a restart (``max_restarts=-1`` reruns ``__init__``):

* the epoch, kept in Ray's GCS key-value store, goes up by one, so fencing
  tokens keep increasing and lease ids never repeat;
* the ledger is rebuilt from the node agents' lease tables (each agent is its
  node's record), then, during a short *learning period* in which nothing new is
  granted, from the clients: every process holding a lease has a ``watch`` call
  parked here, sees it fail when the actor dies, and re-registers its leases
  (``adopt``) as soon as the actor is back. Only after that does granting resume,
  so a lease granted just before the crash, that no agent had heard of yet,
  is neither lost nor granted a second time.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from dataclasses import asdict
from typing import Any

import ray
from ray.experimental import internal_kv

from anya_resource.actors.naming import (
    COORDINATOR_NAME,
    KV_EPOCH,
    KV_NAMESPACE,
    KV_POLICY,
    NAMESPACE,
    agent_name,
)
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
    RejectReason,
    Request,
    Revoke,
    Scheduler,
    build_request,
    check_invariants,
)
from anya_resource.core.history import HistoryRing, compact
from anya_resource.core.verdict import judge_health
from anya_resource.errors import (
    AcquireTimeout,
    Infeasible,
    InvalidRequest,
    LeaseRevoked,
    ResourceError,
)
from anya_resource.health import NodeHealth, ResourceHealth, node_cpu_percent, node_memory_percent
from anya_resource.metrics import CoordinatorMetrics
from anya_resource.quantities import MILLI

log = logging.getLogger(__name__)

TICK_S = 0.05
# Agents hear of grants in batches: off the acquire's path, and a lease that comes and
# goes within one batch costs them nothing. A crash loses at most this much, which the
# clients' re-registration during the learning period makes up for.
FLUSH_S = 0.25
WATCH_TIMEOUT_S = 30.0
MAX_PENDING_EVENTS = 1000
POOL_WANTED_S = 0.25  # how often holders of a pool's slots hear that others wait for it


def _kv_get(key: bytes) -> bytes | None:
    value = internal_kv._internal_kv_get(key, namespace=KV_NAMESPACE)
    return value if isinstance(value, bytes) else None


def _kv_put(key: bytes, value: bytes) -> None:
    internal_kv._internal_kv_put(key, value, overwrite=True, namespace=KV_NAMESPACE)


def ray_capacity(node: dict[str, Any]) -> dict[str, int]:
    """A node's capacity in core units, from what Ray reports for it."""
    resources = node.get("Resources", {})
    return {
        "memory": int(resources.get("memory", 0)),
        "cpu": round(resources.get("CPU", 0) * MILLI),
        "gpu": round(resources.get("GPU", 0) * MILLI),
        "disk": 0,
    }


def reject_error(reject: Reject) -> ResourceError:
    """The exception a waiter sees for a rejection."""
    if reject.reason in (RejectReason.TIMEOUT, RejectReason.CANCELLED):
        return AcquireTimeout(reject.message)
    if reject.reason is RejectReason.INFEASIBLE:
        return Infeasible(reject.message)
    return LeaseRevoked(reject.message)


class CoordinatorImpl:
    """The actor's body (``Coordinator`` below is its Ray actor class)."""

    def __init__(self, policy_json: str | None = None) -> None:
        stored = _kv_get(KV_POLICY)
        if stored is not None:
            # A restart keeps the policy of the first deployment.
            self.policy = Policy.model_validate_json(stored)
        else:
            self.policy = (
                Policy.model_validate_json(policy_json) if policy_json else Policy.default()
            )
            _kv_put(KV_POLICY, self.policy.model_dump_json().encode())
        previous = _kv_get(KV_EPOCH)
        self.epoch = (int(previous) + 1) if previous is not None else 0
        _kv_put(KV_EPOCH, str(self.epoch).encode())
        self.restarted = previous is not None
        self.scheduler = Scheduler(self.policy, epoch=self.epoch)
        self.futures: dict[str, asyncio.Future[Decision]] = {}
        self.agents: dict[str, Any] = {}
        self.node_health: dict[str, NodeHealth] = {}
        self.last_heartbeat: dict[str, float] = {}
        # Per node: lease id -> record to add, or None to remove; the last word wins.
        self.outbox: dict[str, dict[str, LeaseRecord | None]] = {}
        # Granted since the last flush, not routed yet: a lease released before the flush
        # costs one dict insert and one pop, and its agents never hear of it.
        self.fresh: dict[str, LeaseRecord] = {}
        # Per holder process: (sequence, event), kept until a watch call acknowledges it
        # by asking for what came after. A watch call abandoned by its client can then
        # never swallow an event.
        self.revocations: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        self.event_seq = 0
        self.routes: dict[str, tuple[Holder, set[str]]] = {}
        self.watchers: dict[str, asyncio.Event] = {}
        self.dead_jobs: set[str] = set()
        self.ready = asyncio.Event()
        self.learning_until = 0.0
        self.pool_hinted_at: dict[str, float] = {}  # pool -> last pool_wanted sent (pools)
        # -- adaptive allocation, metrics, history (begin) --
        # What Ray reports for each node, kept so that every heartbeat can re-cap it by
        # what the node's agent measured of the machine.
        self.reported_capacity: dict[str, dict[str, int]] = {}
        self.metrics = CoordinatorMetrics()
        self.history_ring = HistoryRing(self.policy.heartbeat_s)
        # -- adaptive allocation, metrics, history (end) --
        self._tasks = [
            asyncio.get_running_loop().create_task(self._bootstrap()),
        ]

    # -- lifecycle ------------------------------------------------------------------------

    async def _bootstrap(self) -> None:
        await self._sync_nodes()
        if self.restarted:
            await self._recover_from_agents()
            # Learning period: clients re-register leases before anything new is granted.
            self.learning_until = time.time() + max(2.0, 2 * self.policy.heartbeat_s)
            await asyncio.sleep(self.learning_until - time.time())
        self._apply(self.scheduler.tick(time.time()))
        # What exists now (Ray, pydantic, the policy: ~100,000 objects) lives as long as
        # the actor. Out of the collector's sight, a full collection no longer walks it
        # (~100 ms every few seconds under load, a pause for every caller).
        gc.freeze()
        self.ready.set()
        loop = asyncio.get_running_loop()
        self._tasks += [
            loop.create_task(self._tick_loop()),
            loop.create_task(self._node_loop()),
            loop.create_task(self._flush_loop()),
            loop.create_task(self._pool_wanted_loop()),
            loop.create_task(self._observe_loop()),
        ]

    async def _recover_from_agents(self) -> None:
        records: list[LeaseRecord] = []
        for node_id, agent in list(self.agents.items()):
            try:
                table = await asyncio.wait_for(agent.table_records.remote(), timeout=10)
            except Exception as exc:  # an agent that cannot answer has nothing to give
                log.warning("agent %s gave no lease table: %s", node_id, exc)
                continue
            records.extend(table)
        self._apply(self.scheduler.restore(records, time.time(), fresh_ttl=True))
        check_invariants(self.scheduler)

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            self._apply(self.scheduler.tick(time.time()))

    async def _node_loop(self) -> None:
        while True:
            await asyncio.sleep(self.policy.heartbeat_s)
            try:
                await self._sync_nodes()
                await self._reclaim_ended_jobs()
            except Exception:
                log.exception("node sync failed; trying again next heartbeat")

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            await self._flush()

    async def _observe_loop(self) -> None:
        """Once per heartbeat: metrics to Ray, and an entry of the history ring."""
        while True:
            await asyncio.sleep(self.policy.heartbeat_s)
            try:
                self.metrics.flush(self.scheduler)
                now = time.time()
                if self.history_ring.due(now):
                    self.history_ring.add(compact(self.scheduler, now), now)
            except Exception:  # observing must never stop the coordinator
                log.exception("metrics or history failed; trying again next heartbeat")

    # -- nodes and agents ---------------------------------------------------------------

    async def _sync_nodes(self) -> None:
        nodes = await asyncio.to_thread(ray.nodes)
        now = time.time()
        alive = {n["NodeID"]: n for n in nodes if n.get("Alive")}
        for node_id, node in alive.items():
            reported = self.reported_capacity[node_id] = ray_capacity(node)
            if node_id not in self.scheduler.nodes:
                self._apply(self.scheduler.node_up(node_id, self._capped(node_id, reported), now))
            if node_id not in self.agents:
                self.agents[node_id] = self._start_agent(node_id)
        # An agent that has not reported yet is starting (slow on a loaded machine), not
        # lost; Ray itself says when such a node is dead.
        lost_after = max(10.0, self.policy.heartbeat_s * 3 * self.policy.health.missed_heartbeats)
        for node_id in list(self.scheduler.nodes):
            silent = now - self.last_heartbeat.get(node_id, now)
            if node_id not in alive or silent > lost_after:
                self._node_lost(node_id, now)

    def _capped(self, node_id: str, reported: dict[str, int]) -> dict[str, int]:
        capacity = dict(reported)
        health = self.node_health.get(node_id)
        if health is not None:
            # Never grant more than the machine physically has.
            capacity["memory"] = min(capacity["memory"], health.memory_total)
            capacity["cpu"] = min(capacity["cpu"], round(health.cpu_count * MILLI))
            if health.gpus > 0:  # 0 may only mean NVML is missing: then Ray's figure stands
                capacity["gpu"] = min(capacity["gpu"], health.gpus * MILLI)
        return capacity

    def _node_lost(self, node_id: str, now: float) -> None:
        log.warning("node %s is gone: reclaiming its leases", node_id)
        self._apply(self.scheduler.node_down(node_id, now))
        self.agents.pop(node_id, None)
        self.node_health.pop(node_id, None)
        self.last_heartbeat.pop(node_id, None)
        self.reported_capacity.pop(node_id, None)
        self.outbox.pop(node_id, None)

    def _start_agent(self, node_id: str) -> Any:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from anya_resource.actors.agent import NodeAgent

        return NodeAgent.options(  # type: ignore[attr-defined]
            name=agent_name(node_id),
            namespace=NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            num_cpus=0,
            max_restarts=-1,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
        ).remote(node_id, self.policy.heartbeat_s)

    async def _reclaim_ended_jobs(self) -> None:
        if not self.scheduler.leases.by_job and not self.scheduler.queue:
            return
        jobs = await asyncio.to_thread(ray._private.state.jobs)
        now = time.time()
        for job in jobs:
            job_id = job["JobID"]
            if job.get("IsDead") and job_id not in self.dead_jobs:
                self.dead_jobs.add(job_id)
                self._apply(self.scheduler.job_ended(job_id, now))

    # -- carrying out decisions ----------------------------------------------------------

    def _apply(self, decisions: list[Decision]) -> None:
        for decision in decisions:
            if isinstance(decision, Grant):
                self.metrics.grant(decision)
                self._resolve(decision.request_id, decision)
                # Agents hear of it at the next flush, unless it is gone by then.
                self.fresh[decision.lease.lease_id] = decision.lease
            elif isinstance(decision, Reclaim):
                self._tell_agents_removed(decision)
            elif isinstance(decision, Reject):
                self._resolve(decision.request_id, decision)
            elif isinstance(decision, Revoke):
                lease = self.scheduler.leases.active.get(decision.lease_id)
                if lease is not None:
                    self._tell_holder(lease.holder, {**asdict(decision), "ended": False})
                    self._tell_agents(lease)

    def _resolve(self, request_id: str, decision: Decision) -> None:
        future = self.futures.pop(request_id, None)
        if future is not None and not future.done():
            future.set_result(decision)

    def _tell_agents(self, lease: LeaseRecord) -> None:
        # The lease's node keeps it in its table; the holder's node watches the holder.
        self.fresh.pop(lease.lease_id, None)
        nodes = {n for n in (lease.node_id, lease.holder.node_id) if n in self.scheduler.nodes}
        for node_id in self.routes.get(lease.lease_id, (None, set()))[1] - nodes:
            self.outbox.setdefault(node_id, {})[lease.lease_id] = None  # the holder moved
        self.routes[lease.lease_id] = (lease.holder, nodes)
        for node_id in nodes:
            self.outbox.setdefault(node_id, {})[lease.lease_id] = lease

    def _tell_agents_removed(self, reclaim: Reclaim) -> None:
        fresh = self.fresh.pop(reclaim.lease_id, None)
        holder: Holder | None
        if fresh is not None:
            holder = fresh.holder  # granted since the last flush: no agent has heard of it
        else:
            holder, nodes = self.routes.pop(reclaim.lease_id, (None, {reclaim.node_id}))
            for node_id in nodes:
                self.outbox.setdefault(node_id, {})[reclaim.lease_id] = None
        if holder is not None and reclaim.reason not in (
            ReclaimReason.RELEASED,
            ReclaimReason.CANCELLED,
        ):
            self._tell_holder(
                holder,
                {"lease_id": reclaim.lease_id, "reason": reclaim.reason.value, "ended": True},
            )

    def _tell_holder(self, holder: Holder, event: dict[str, Any]) -> None:
        key = holder.key
        if key is None:
            return
        self.event_seq += 1
        pending = self.revocations.setdefault(key, [])
        pending.append((self.event_seq, event))
        del pending[:-MAX_PENDING_EVENTS]
        watcher = self.watchers.get(key)
        if watcher is not None:
            watcher.set()

    async def _flush(self) -> None:
        for lease in list(self.fresh.values()):
            self._tell_agents(lease)
        outbox, self.outbox = self.outbox, {}
        for node_id, pending in outbox.items():
            agent = self.agents.get(node_id)
            if agent is None or not pending:
                continue
            batch = [
                ("add", record) if record is not None else ("remove", lease_id)
                for lease_id, record in pending.items()
            ]
            try:
                await agent.apply.remote(batch)
            except Exception as exc:
                # The agent restarts and asks for its table again; nothing to redo here.
                log.warning("agent %s missed a batch of %d: %s", node_id, len(batch), exc)

    # -- pools: holders of idle slots give them back when others wait --------------------
    #
    # A process keeps the connections it is done with warm, each on its slot, until their
    # idle timeout. While requests from other processes wait for that pool, every holder
    # of its slots hears ``{"kind": "pool_wanted", "pool": name}`` through its watch; its
    # pool then closes idle connections and gives their slots back at once.

    async def _pool_wanted_loop(self) -> None:
        while True:
            await asyncio.sleep(POOL_WANTED_S)
            self._pool_wanted_all()

    def _pool_wanted_now(self, request: Request) -> None:
        """A request was queued on pools: their holders hear it now (at most every 50 ms)."""
        now = time.monotonic()
        pools = {p for p in request.pools if now - self.pool_hinted_at.get(p, 0.0) >= 0.05}
        if pools:
            self.pool_hinted_at.update(dict.fromkeys(pools, now))
            self._tell_pool_holders({p: {request.holder.key} for p in pools})

    def _pool_wanted_all(self) -> None:
        """Repeat the hint for every pool that still has waiters."""
        waiting: dict[str, set[str | None]] = {}
        for waiter in self.scheduler.queue.by_id.values():
            for pool in waiter.request.pools:
                waiting.setdefault(pool, set()).add(waiter.request.holder.key)
        if waiting:
            self._tell_pool_holders(waiting)

    def _tell_pool_holders(self, waiting: dict[str, set[str | None]]) -> None:
        """Tell each holder of slots of these pools, unless it is the only one waiting."""
        told: set[tuple[str, str]] = set()
        for lease in self.scheduler.leases:
            key = lease.holder.key
            if key is None:
                continue
            for pool in lease.pools:
                others = waiting.get(pool, set()) - {key}
                if not others or (key, pool) in told:
                    continue
                told.add((key, pool))
                event = {"kind": "pool_wanted", "pool": pool}
                heard = [e for _, e in self.revocations.get(key, [])]
                if event not in heard:  # not yet heard: once is enough
                    self._tell_holder(lease.holder, event)

    # -- the API the client calls ---------------------------------------------------------

    async def ping(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "ready": self.ready.is_set(), "nodes": len(self.agents)}

    def _request(self, spec: dict[str, Any]) -> Request:
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
        )

    async def acquire(self, spec: dict[str, Any]) -> bytes:
        """Grant (or queue, then grant) a request; the lease goes back as bytes.

        ``wire.lease_from_wire`` rebuilds the ``LeaseRecord``: Ray passes bytes through
        as they are, where it would pickle a dataclass on both sides of every acquire.
        """
        # Releases the client had not sent yet ride along: one call instead of two.
        self._release_all(spec.get("releases", ()))
        request = self._request(spec)
        if not self.ready.is_set():
            await self.ready.wait()
        now = time.time()
        request_id, decisions = self.scheduler.submit(request, now)
        mine = next((d for d in decisions if getattr(d, "request_id", None) == request_id), None)
        future: asyncio.Future[Decision] | None = None
        if mine is None:
            future = self.futures.get(request_id)
            if future is None:
                future = self.futures[request_id] = asyncio.get_running_loop().create_future()
        self._apply(decisions)
        if mine is None and request.pools:
            self._pool_wanted_now(request)
        if mine is None:
            assert future is not None
            mine = await asyncio.shield(future)
        if isinstance(mine, Grant):
            return lease_to_wire(mine.lease)
        assert isinstance(mine, Reject)
        raise reject_error(mine)

    async def cancel(self, idempotency_key: str) -> None:
        """The caller gave up on the request with this key, whatever its state."""
        self._apply(self.scheduler.cancel_key(idempotency_key, time.time()))

    async def release(self, lease_id: str, token: str) -> None:
        self._apply(self.scheduler.release(lease_id, token, time.time()))

    async def release_many(self, pairs: list[list[str]]) -> None:
        """Releases sent in one call, ``[lease_id, token]`` each; a bad one is only logged."""
        self._release_all(pairs)

    def _release_all(self, pairs: Any) -> None:
        for lease_id, token in pairs:
            try:
                self._apply(self.scheduler.release(lease_id, token, time.time()))
            except ResourceError as exc:
                log.warning("release of %s refused: %s", lease_id, exc)

    async def renew(self, lease_id: str, token: str, ttl: float | None = None) -> float:
        # Agents are not told: a restart gives every restored lease a fresh TTL anyway.
        return self.scheduler.renew(lease_id, token, time.time(), ttl).expires_at

    async def rebind(self, lease_id: str, token: str, holder: dict[str, Any]) -> float:
        """Another process (a ``@leased`` task's worker) holds the lease from now on."""
        lease = self.scheduler.rebind(lease_id, token, Holder(**holder), time.time())
        self._tell_agents(lease)
        return lease.expires_at

    async def adopt(self, record: LeaseRecord) -> float:
        """A client re-registers a lease after a restart; returns its expiry."""
        active = self.scheduler.leases.active.get(record.lease_id)
        if active is None:
            if record.lease_id in self.scheduler.leases.ended:
                return await self.renew(record.lease_id, record.token)  # raises why it ended
            decisions = self.scheduler.restore([record], time.time(), fresh_ttl=True)
            self._apply(decisions)
            if decisions:
                raise LeaseRevoked(f"lease {record.lease_id}: its node is gone")
            self._tell_agents(record)
        return await self.renew(record.lease_id, record.token)

    async def watch(
        self, holder_key: str, after: int = 0, timeout: float = WATCH_TIMEOUT_S
    ) -> dict[str, Any]:
        """Long poll: events for this process's leases after ``after``, and the epoch."""
        pending = self.revocations.setdefault(holder_key, [])
        pending[:] = [(seq, e) for seq, e in pending if seq > after]  # acknowledged
        if not pending:
            event = self.watchers.setdefault(holder_key, asyncio.Event())
            event.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(event.wait(), timeout=min(timeout, WATCH_TIMEOUT_S))
        events = [(seq, e) for seq, e in self.revocations.get(holder_key, []) if seq > after]
        return {
            "epoch": self.epoch,
            "events": [e for _, e in events],
            "cursor": max((seq for seq, _ in events), default=after),
        }

    async def snapshot(self) -> dict[str, Any]:
        snap = self.scheduler.snapshot(time.time())
        snap["health"] = {n: h.to_dict() for n, h in self.node_health.items()}
        return snap

    async def lease_list(self) -> list[dict[str, Any]]:
        return self.scheduler.lease_list()

    async def history(self, seconds: float | None = None) -> list[bytes]:
        """The history entries of the last ``seconds`` (None: all), JSON-encoded.

        Encoded as stored: the client decodes them, so that a long history does not
        hold up this event loop.
        """
        return self.history_ring.since(time.time(), seconds)

    async def what_if(self, spec: dict[str, Any], count: int) -> dict[str, Any]:
        request = self._request({**spec, "idempotency_key": None, "timeout": None})
        if request.node is not None and request.node not in self.scheduler.nodes:
            raise InvalidRequest(f"node: {request.node!r} is not an alive node")
        return self.scheduler.what_if(request, count, time.time()).to_dict()

    async def check_health(self) -> ResourceHealth:
        now = time.time()
        snap = self.scheduler.snapshot(now)
        silent = {node_id: now - heard for node_id, heard in self.last_heartbeat.items()}
        verdict = judge_health(self.scheduler, snap, silent, self.policy)
        reasons = verdict.reasons
        nodes = [
            NodeHealth.from_dict({**health.to_dict(), "missed_heartbeats": verdict.missed[node_id]})
            for node_id in self.scheduler.nodes
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
    ) -> dict[str, Any]:
        now = time.time()
        sample = NodeHealth.from_dict(health)
        self.node_health[node_id] = sample
        self.last_heartbeat[node_id] = now
        ledger = self.scheduler.nodes.get(node_id)
        if ledger is None:
            return {"known": False}
        for holder_key in dead_holders:
            self._apply(self.scheduler.holder_died(holder_key, now))
        # -- adaptive allocation (begin) --
        # Grantable capacity follows the machine: Ray's figure capped by what the agent
        # measured just now (a cgroup limit lowered at run time, a wrong --memory), then
        # minus the reserve, which node_up recomputes from the new capacity.
        reported = self.reported_capacity.get(node_id)
        if reported is not None:
            capacity = self._capped(node_id, reported)
            if capacity != ledger.capacity:
                log.info("node %s capacity now %s", node_id, capacity)
                self._apply(self.scheduler.node_up(node_id, capacity, now))
        # -- adaptive allocation (end) --
        memory_capacity = ledger.capacity.get("memory", 0)
        cpu_capacity = ledger.capacity.get("cpu", 0) / MILLI
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
        return {"known": True, "epoch": self.epoch}

    async def agent_table(self, node_id: str) -> list[LeaseRecord]:
        """What a (re)started agent should hold: leases on its node or held from it."""
        return [
            lease
            for lease in self.scheduler.leases
            if node_id in (lease.node_id, lease.holder.node_id)
        ]

    async def invariants(self) -> list[str]:
        """Empty when every invariant of DESIGN.md holds (for tests and operators)."""
        try:
            check_invariants(self.scheduler)
        except AssertionError as exc:
            return [str(exc)]
        return []


Coordinator = ray.remote(CoordinatorImpl)


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
    "ray_capacity",
]
