"""Randomised runs of the scheduler state machine against a model of who holds what.

A hypothesis ``RuleBasedStateMachine`` drives submits (every resource kind, pools,
priorities, policy tenants with guarantees and limits, preemptible leases,
timeouts, node constraints, idempotency keys and retries of them), releases and
renewals with right and wrong tokens, cancellations of waiting *and* granted
requests, clock jumps, nodes joining, leaving and changing capacity, health
samples across the pressure thresholds, holder deaths, job ends and coordinator
restarts, and gangs (two to four bundles under each of Ray's four strategies, granted
all at once or not at all). Every decision is mirrored into the model; after every step the
scheduler must agree with the model and with the invariants of docs/architecture.md, checked
from the outside (the snapshot) as well as by ``check_invariants``.

``ANYA_SOAK_ITERATIONS`` (or ``ANYA_RESOURCE_SOAK_ITERATIONS``) raises the number of
examples for long runs; the default keeps this file well under a minute.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from anya_resource.config import Policy
from anya_resource.core import (
    Grant,
    Holder,
    NodeSample,
    Reclaim,
    ReclaimReason,
    Reject,
    RejectReason,
    Request,
    Revoke,
    build_request,
    check_invariants,
)
from anya_resource.core.model import NODE_RESOURCES, STRATEGIES, Decision, LeaseState
from anya_resource.errors import (
    Infeasible,
    InvalidRequest,
    LeaseExpired,
    LeaseRevoked,
    NotLeaseHolder,
)
from tests.unit.core_support import CORE, GIB, Durable, Store

POLICY = Policy.model_validate(
    {
        "placement": "spread",
        "reserve": {"memory": "10%", "cpu": 0.5},
        "pressure": {"memory_high": 85, "memory_low": 75, "cpu_high": 90, "cpu_low": 70},
        "aging": {"per_second": 2.0, "max_boost": 30},
        "lease": {"default_ttl": 30, "renew_every": 10, "max_ttl": 300, "preemption_grace_s": 4},
        "tenants": {
            "tx": {"guaranteed": {"cpu": 2}, "limit": {"cpu": 6, "rpc": 2}},
            "ml": {"guaranteed": {"gpu": 1, "memory": "4GiB"}, "limit": {"memory": "12GiB"}},
            "capped": {"guaranteed": {"cpu": 1}, "limit": {"cpu": 3}, "borrowing": False},
        },
        "pools": {"default": {"size": 6}, "rpc": {"size": 3}, "pg": {"size": 2}},
    }
)
GRACE = POLICY.lease.preemption_grace_s
PRESSURE = POLICY.pressure

NODE_IDS = ("a1", "b2", "c3", "d4", "e5")
HOLDERS = (
    Holder(),
    Holder(pid=101, create_time=1.5, node_id="a1", job_id="job-1"),
    Holder(pid=102, create_time=2.5, node_id="b2", job_id="job-1"),
    Holder(pid=103, create_time=3.5, node_id="c3", job_id="job-2"),
)
JOBS = ("job-1", "job-2", "job-3")

capacities = st.fixed_dictionaries(
    {
        "cpu": st.sampled_from([1, 2, 4, 8]).map(lambda c: c * CORE),
        "memory": st.sampled_from([2, 4, 8, 16]).map(lambda g: g * GIB),
        "gpu": st.sampled_from([0, 0, 1, 2]).map(lambda g: g * CORE),
    }
)
resource_maps = st.fixed_dictionaries(
    {},
    optional={
        "cpu": st.sampled_from([0.25, 0.5, 1, 2, 3.5, 8]),
        "memory": st.sampled_from(["256MiB", "1GiB", "3GiB", "7GiB", "20GiB"]),
        "gpu": st.sampled_from([0.5, 1, 2]),
        "pools": st.dictionaries(st.sampled_from(["default", "rpc", "pg"]), st.integers(1, 3)),
    },
)
bundle_maps = st.fixed_dictionaries(
    {},
    optional={
        "cpu": st.sampled_from([0.25, 0.5, 1, 2, 3.5]),
        "memory": st.sampled_from(["256MiB", "1GiB", "3GiB"]),
        "gpu": st.sampled_from([0.5, 1]),
    },
).filter(lambda bundle: bundle and (len(bundle) > 1 or "gpu" not in bundle))
gang_specs = st.one_of(
    st.none(),
    st.tuples(
        st.lists(bundle_maps, min_size=2, max_size=4),
        st.sampled_from(STRATEGIES),
    ),
)
priorities = st.sampled_from(["critical", "high", "normal", "low", "batch", 10, 60])
tenants = st.sampled_from([None, "default", "tx", "ml", "capped", "job-x", "job-y", "job-z"])
timeouts = st.sampled_from([None, None, 0, 0.5, 3.0, 20.0])
ttls = st.sampled_from([None, 2.0, 10.0, 60.0])
bad_tokens = st.sampled_from(["", "wrong", None, 12345, "SUFFIX", "PREFIX"])
picks = st.integers(min_value=0, max_value=10_000)


@dataclass
class Waiting:
    request: Request
    deadline: float | None


@dataclass
class Held:
    lease_id: str
    request_id: str
    token: str
    fencing: int
    node: str
    resources: dict[str, int]
    pools: dict[str, int]
    tenant: str
    preemptible: bool
    holder: Holder
    detached: bool
    key: str | None
    expires_at: float
    bundles: list[tuple[str, dict[str, int]]] = field(default_factory=list)
    revoke_deadline: float | None = None
    revoke_reason: str | None = None


@dataclass
class Ended:
    token: str
    reason: ReclaimReason
    before_restart: bool = False  # the new coordinator only knows its token is genuine


@dataclass
class Model:
    nodes: dict[str, dict[str, int]] = field(default_factory=dict)
    pressured: dict[str, set[str]] = field(default_factory=dict)
    outside: dict[str, dict[str, int]] = field(default_factory=dict)  # plain Ray work's use
    outside_seen: dict[str, dict[str, int]] = field(default_factory=dict)  # its last reading
    waiting: dict[str, Waiting] = field(default_factory=dict)
    leases: dict[str, Held] = field(default_factory=dict)
    ended: dict[str, Ended] = field(default_factory=dict)
    dead: set[str] = field(default_factory=set)  # request ids that must never be granted
    lease_ids: set[str] = field(default_factory=set)  # every lease id ever granted
    last_fencing: int = -1
    key_requests: dict[str, Request] = field(default_factory=dict)
    key_leases: dict[str, list[str]] = field(default_factory=dict)


def reserve_of(capacity: dict[str, int]) -> dict[str, int]:
    """POLICY's reserve, worked out independently: 10% of memory, half a core."""
    return {
        "memory": min(int(capacity["memory"] * 10 / 100), capacity["memory"]),
        "cpu": min(500, capacity["cpu"]),
        "gpu": 0,
        "disk": 0,
    }


def limit_of(capacity: dict[str, int], resource: str) -> int:
    return max(0, capacity.get(resource, 0) - reserve_of(_full(capacity))[resource])


def _full(capacity: dict[str, int]) -> dict[str, int]:
    return {r: capacity.get(r, 0) for r in NODE_RESOURCES}


def tenant_limit(tenant: str, resource: str) -> int | None:
    from anya_resource.quantities import to_units

    policy = POLICY.tenants.get(tenant)
    if policy is None:
        return None
    limit = {r: to_units(r, v) for r, v in policy.limit.items()}
    if not policy.borrowing:
        guaranteed = {r: to_units(r, v) for r, v in policy.guaranteed.items()}
        limit = {**guaranteed, **{r: min(v, guaranteed.get(r, v)) for r, v in limit.items()}}
    return limit.get(resource)


def demand_of(request: Request) -> dict[str, int]:
    return {**request.resources, **request.pools}


class SchedulerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.epoch = 0
        self.now = 100.0
        self.store = Store()
        self.durable = Durable(POLICY, self.store, {}, self.now, epoch=self.epoch)
        self.s = self.durable.s
        self.m = Model()
        self.keys_made = 0

    # -- mirroring decisions into the model ------------------------------------------------

    def model_granted(self, node: str, resource: str) -> int:
        return sum(
            amounts.get(resource, 0)
            for h in self.m.leases.values()
            for where, amounts in h.bundles
            if where == node
        )

    def model_pool(self, pool: str) -> int:
        return sum(h.pools.get(pool, 0) for h in self.m.leases.values())

    def model_usage(self, tenant: str, resource: str) -> int:
        return sum(
            demand.get(resource, 0)
            for h in self.m.leases.values()
            if h.tenant == tenant
            for demand in ({**h.resources, **h.pools},)
        )

    def apply(self, decisions: list[Decision], replay: str | None = None) -> None:
        """Mirror ``decisions`` in order; each must be one the scheduler was allowed to make."""
        for decision in decisions:
            if isinstance(decision, Grant):
                self.apply_grant(decision, replay)
            elif isinstance(decision, Reject):
                self.apply_reject(decision, replay)
            elif isinstance(decision, Revoke):
                self.apply_revoke(decision)
            elif isinstance(decision, Reclaim):
                self.apply_reclaim(decision)
            else:  # pragma: no cover - a new decision type must be mirrored here
                raise AssertionError(f"unknown decision {decision!r}")

    def apply_grant(self, grant: Grant, replay: str | None) -> None:
        lease = grant.lease
        if lease.lease_id in self.m.leases:
            # Only a retried idempotency key may hand out a lease again, and only its own.
            assert replay is not None, f"second grant of {lease.lease_id}"
            assert self.m.leases[lease.lease_id].key == replay
            return
        assert lease.lease_id not in self.m.lease_ids, f"lease id {lease.lease_id} reused"
        assert lease.fencing_token > self.m.last_fencing, "fencing tokens must strictly increase"
        assert grant.request_id == lease.request_id
        assert grant.request_id not in self.m.dead, (
            f"{grant.request_id} was cancelled, timed out or rejected, yet granted"
        )
        waiting = self.m.waiting.pop(grant.request_id, None)
        assert waiting is not None, f"grant for unknown request {grant.request_id}"
        request = waiting.request
        assert lease.resources == request.resources and lease.pools == request.pools
        assert lease.tenant == request.tenant and lease.preemptible == request.preemptible
        assert request.node in (None, lease.node_id), "node constraint ignored"
        assert lease.expires_at == self.now + request.ttl
        assert isinstance(lease.token, str) and len(lease.token) >= 22  # >= 128 bits, url-safe
        placed = [(node, dict(amounts)) for node, amounts in lease.placed()]
        self.check_bundles(request, lease.bundles, placed)
        this: dict[str, dict[str, int]] = {}
        for node, amounts in placed:
            assert node in self.m.nodes, f"granted on a node that is not up: {node}"
            for resource, amount in amounts.items():
                this.setdefault(node, {})[resource] = this.get(node, {}).get(resource, 0) + amount
        for node, amounts in this.items():
            capacity = self.m.nodes[node]
            for resource, amount in amounts.items():
                after = self.model_granted(node, resource) + amount
                room = limit_of(capacity, resource) - self.m.outside.get(node, {}).get(resource, 0)
                assert after <= room, f"inv1: {resource} on {node}: {after} > {room}"
                assert resource not in self.m.pressured.get(node, set()), (
                    f"granted {resource} on {node} while it is under pressure"
                )
        for pool, slots in lease.pools.items():
            assert self.model_pool(pool) + slots <= POLICY.pools[pool].size
        for resource, amount in demand_of(request).items():
            cap = tenant_limit(request.tenant, resource)
            if cap is not None:
                assert self.model_usage(request.tenant, resource) + amount <= cap
        key = request.idempotency_key
        if key is not None:
            assert not self.m.key_leases.get(key), f"key {key} yields a second lease"
            self.m.key_leases[key] = [lease.lease_id]
        self.m.lease_ids.add(lease.lease_id)
        self.m.last_fencing = lease.fencing_token
        self.m.leases[lease.lease_id] = Held(
            lease_id=lease.lease_id,
            request_id=lease.request_id,
            token=lease.token,
            fencing=lease.fencing_token,
            node=lease.node_id,
            resources=dict(lease.resources),
            pools=dict(lease.pools),
            tenant=lease.tenant,
            preemptible=lease.preemptible,
            holder=lease.holder,
            detached=lease.detached,
            key=key,
            expires_at=lease.expires_at,
            bundles=placed,
        )

    def check_bundles(
        self, request: Request, bundles: Any, placed: list[tuple[str, dict[str, int]]]
    ) -> None:
        """A gang is granted whole: every bundle, in the order asked, as its strategy says."""
        if not request.bundles:
            assert bundles is None, "a one-node request was granted as a gang"
            return
        event(f"gang granted ({request.strategy})")
        assert bundles is not None and len(placed) == len(request.bundles) >= 2
        assert [amounts for _, amounts in placed] == list(request.bundles), "bundles changed"
        nodes = [node for node, _ in placed]
        if request.strategy == "STRICT_SPREAD":
            assert len(set(nodes)) == len(nodes), f"STRICT_SPREAD bundles share a node: {nodes}"
        elif request.strategy == "STRICT_PACK":
            assert len(set(nodes)) == 1, f"STRICT_PACK bundles on several nodes: {nodes}"

    def apply_reject(self, reject: Reject, replay: str | None) -> None:
        if reject.request_id.startswith("replay-"):
            assert replay is not None and reject.request_id == f"replay-{replay}"
            return
        waiting = self.m.waiting.pop(reject.request_id, None)
        assert waiting is not None, f"reject of a request that is not waiting: {reject}"
        self.m.dead.add(reject.request_id)
        request = waiting.request
        if reject.reason is RejectReason.TIMEOUT:
            assert request.timeout == 0 or (
                waiting.deadline is not None and waiting.deadline <= self.now
            ), f"timed out early: {reject}"
        elif reject.reason is RejectReason.NODE_LOST:
            assert request.node is not None and request.node not in self.m.nodes
        elif reject.reason is RejectReason.INFEASIBLE:
            assert self.never_fits(request), f"feasible waiter rejected: {reject}"

    def apply_revoke(self, revoke: Revoke) -> None:
        held = self.m.leases.get(revoke.lease_id)
        assert held is not None, f"revoke of a lease nobody holds: {revoke}"
        assert held.preemptible, f"revoked a lease that is not preemptible: {revoke}"
        assert held.revoke_deadline is None, f"revoked twice: {revoke}"
        assert revoke.deadline == self.now + GRACE
        held.revoke_deadline = revoke.deadline
        held.revoke_reason = revoke.reason

    def apply_reclaim(self, reclaim: Reclaim) -> None:
        held = self.m.leases.pop(reclaim.lease_id, None)
        assert held is not None, f"reclaim of a lease nobody holds: {reclaim}"
        assert reclaim.node_id == held.node
        if reclaim.reason is ReclaimReason.EXPIRED:
            assert held.expires_at <= self.now, f"expired early: {reclaim}"
        elif reclaim.reason is ReclaimReason.REVOKED:
            assert held.revoke_deadline is not None and held.revoke_deadline <= self.now
        elif reclaim.reason is ReclaimReason.NODE_LOST:
            # A node of it is gone, or the node of the process holding it (not detached).
            assert any(node not in self.m.nodes for node, _ in held.bundles) or (
                not held.detached and held.holder.node_id not in self.m.nodes
            )
        self.m.ended[reclaim.lease_id] = Ended(held.token, reclaim.reason)

    # -- helpers ---------------------------------------------------------------------

    def pick(self, items: list[Any], index: int) -> Any:
        return items[index % len(items)] if items else None

    def unchanged(self, before: tuple[Any, Any]) -> None:
        assert (self.s.snapshot(self.now), self.s.lease_list()) == before, "state changed"

    def state(self) -> tuple[Any, Any]:
        return self.s.snapshot(self.now), self.s.lease_list()

    def never_fits(self, request: Request) -> bool:
        """Whether ``request`` can never be granted, judged from the model."""
        for pool, slots in request.pools.items():
            if slots > POLICY.pools[pool].size:
                return True
        for resource, amount in demand_of(request).items():
            cap = tenant_limit(request.tenant, resource)
            if cap is not None and amount > cap:
                return True
        if not self.m.nodes:
            return True
        if request.bundles:
            return self.gang_never_fits(request)
        nodes = [request.node] if request.node else list(self.m.nodes)
        return not any(
            all(limit_of(self.m.nodes[n], r) >= a for r, a in request.resources.items())
            for n in nodes
        )

    def gang_never_fits(self, request: Request) -> bool:
        """Judged on the nodes' limits: exactly for the strict strategies; for PACK and
        SPREAD only what is certain (a bundle no node holds, more than all nodes hold)."""
        limits = [
            {r: limit_of(capacity, r) for r in NODE_RESOURCES} for capacity in self.m.nodes.values()
        ]

        def holds(limit: dict[str, int], amounts: dict[str, int]) -> bool:
            return all(limit[r] >= a for r, a in amounts.items())

        bundles = list(request.bundles)
        if request.strategy == "STRICT_PACK":
            return not any(holds(limit, request.resources) for limit in limits)
        if not all(any(holds(limit, b) for limit in limits) for b in bundles):
            return True
        if request.strategy == "STRICT_SPREAD":
            return not any(
                all(holds(limits[n], b) for n, b in zip(order, bundles, strict=True))
                for order in itertools.permutations(range(len(limits)), len(bundles))
            )
        return any(
            amount > sum(limit[r] for limit in limits) for r, amount in request.resources.items()
        )

    # -- rules --------------------------------------------------------------------------

    @initialize(first=capacities, second=capacities)
    def start(self, first: dict[str, int], second: dict[str, int]) -> None:
        for node_id, capacity in (("a1", first), ("b2", second)):
            self.m.nodes[node_id] = capacity
            self.apply(self.s.node_up(node_id, capacity, self.now))

    @rule(
        resources=resource_maps,
        priority=priorities,
        tenant=tenants,
        preemptible=st.booleans(),
        timeout=timeouts,
        ttl=ttls,
        node_pick=st.one_of(st.none(), st.none(), picks, st.just(-1)),
        with_key=st.booleans(),
        holder=st.sampled_from(HOLDERS),
        detached=st.booleans(),
        gang=gang_specs,
    )
    def submit(
        self,
        resources: dict[str, Any],
        priority: Any,
        tenant: str | None,
        preemptible: bool,
        timeout: float | None,
        ttl: float | None,
        node_pick: int | None,
        with_key: bool,
        holder: Holder,
        detached: bool,
        gang: tuple[list[dict[str, Any]], str] | None,
    ) -> None:
        node: str | None = None
        if node_pick == -1:
            node = "ff00"  # not a node of this cluster
        elif node_pick is not None:
            node = self.pick(sorted(self.m.nodes), node_pick)
        key = None
        if with_key:
            self.keys_made += 1
            key = f"key-{self.keys_made}"
        options: dict[str, Any] = {}
        if gang is not None:
            # A gang: its node resources are in its bundles, its pools beside them.
            resources = {"pools": resources["pools"]} if "pools" in resources else {}
            options = {"bundles": gang[0], "strategy": gang[1]}
            node = None
        try:
            request = build_request(
                POLICY,
                resources,
                **options,
                priority=priority,
                tenant=tenant,
                ttl=ttl,
                timeout=timeout,
                preemptible=preemptible,
                node=node,
                idempotency_key=key,
                holder=holder,
                detached=detached,
            )
        except InvalidRequest:
            assert not resources or resources == {"pools": {}}, resources
            return
        before = self.state()
        # A dry run first: it changes nothing and tells what the submit will do at once.
        try:
            plan = self.s.what_if(request, 1, self.now)
        except InvalidRequest as exc:
            assert node == "ff00" and "ff00" in str(exc)
            plan = None
        self.unchanged(before)
        check_invariants(self.s.state)
        try:
            request_id, decisions = self.s.submit(request, self.now)
        except InvalidRequest as exc:
            assert node == "ff00" and "ff00" in str(exc)
            self.unchanged(before)
            return
        except Infeasible:
            assert self.never_fits(request), f"feasible request called infeasible: {request}"
            assert plan is not None and plan.infeasible is not None
            self.unchanged(before)
            return
        assert not self.never_fits(request), f"infeasible request accepted: {request}"
        assert plan is not None and plan.infeasible is None
        immediate = any(isinstance(d, Grant) and d.request_id == request_id for d in decisions)
        assert immediate == (plan.granted_now == 1), f"what_if said {plan}, submit {decisions}"
        deadline = None if request.timeout is None else self.now + request.timeout
        self.m.waiting[request_id] = Waiting(request, deadline)
        if key is not None:
            self.m.key_requests[key] = request
        self.apply(decisions)
        if request.timeout == 0:
            assert request_id not in self.m.waiting, "timeout=0 must never queue"

    @precondition(lambda self: self.m.key_requests)
    @rule(index=picks)
    def retry(self, index: int) -> None:
        """The same request again, same idempotency key: never a second lease."""
        key = self.pick(sorted(self.m.key_requests), index)
        request = self.m.key_requests[key]
        holding = [lid for lid in self.m.key_leases.get(key, []) if lid in self.m.leases]
        had_lease = bool(self.m.key_leases.get(key))
        waiting = [rid for rid, w in self.m.waiting.items() if w.request.idempotency_key == key]
        before = self.state()
        try:
            request_id, decisions = self.s.submit(request, self.now)
        except LeaseExpired:
            assert had_lease and not holding, f"{key}: LeaseExpired but the lease is active"
            self.unchanged(before)
            return
        self.unchanged(before)
        if holding:
            assert [type(d) for d in decisions] == [Grant]
            assert decisions[0].lease.lease_id == holding[0]  # type: ignore[union-attr]
        elif waiting:
            assert request_id == waiting[0] and decisions == []
        else:
            assert not had_lease
            assert [type(d) for d in decisions] == [Reject], decisions
        self.apply(decisions, replay=key)

    @precondition(lambda self: self.m.leases or self.m.ended)
    @rule(index=picks, right=st.booleans(), bad=bad_tokens, by_holder=st.booleans())
    def release(self, index: int, right: bool, bad: Any, by_holder: bool) -> None:
        ids = sorted(self.m.leases) + sorted(self.m.ended)
        lease_id = self.pick(ids, index)
        token = self.m.leases[lease_id].token if lease_id in self.m.leases else None
        token = token or self.m.ended[lease_id].token
        if not right:
            before = self.state()
            wrong = {"SUFFIX": token + "x", "PREFIX": token[:-1]}.get(bad, bad)
            with pytest.raises(NotLeaseHolder):
                self.s.release(lease_id, wrong, self.now)
            self.unchanged(before)
            return
        held = self.m.leases.get(lease_id)
        by = held.holder.key if held is not None and by_holder else "another-process"
        decisions = self.s.release(lease_id, token, self.now, by=by)
        if held is not None:
            # The holder hears of it unless it let go itself.
            tell = None if held.holder.key in (None, by) else held.holder.key
            assert Reclaim(lease_id, held.node, ReclaimReason.RELEASED, tell) in decisions
        else:
            assert decisions == [], "a second release changes nothing"
        self.apply(decisions)
        assert lease_id not in self.m.leases

    @precondition(lambda self: self.m.leases or self.m.ended)
    @rule(
        index=picks,
        right=st.booleans(),
        bad=bad_tokens,
        ttl=st.sampled_from([None, None, 5.0, 100.0, 0, -1, math.nan, math.inf, 1e9, "5", True]),
    )
    def renew(self, index: int, right: bool, bad: Any, ttl: Any) -> None:
        ids = sorted(self.m.leases) + sorted(self.m.ended)
        lease_id = self.pick(ids, index)
        held = self.m.leases.get(lease_id)
        token = held.token if held is not None else self.m.ended[lease_id].token
        before = self.state()
        if not right:
            wrong = {"SUFFIX": token + "x", "PREFIX": token[:-1]}.get(bad, bad)
            with pytest.raises(NotLeaseHolder):
                self.s.renew(lease_id, wrong, self.now, ttl)
            self.unchanged(before)
            return
        if held is None:
            ended = self.m.ended[lease_id]
            expected: type[Exception] = (
                LeaseExpired
                if ended.before_restart
                or ended.reason in (ReclaimReason.EXPIRED, ReclaimReason.RELEASED)
                else LeaseRevoked
            )
            with pytest.raises(expected):
                self.s.renew(lease_id, token, self.now, ttl)
            self.unchanged(before)
            return
        valid_ttl = ttl is None or (
            isinstance(ttl, float) and math.isfinite(ttl) and 0 < ttl <= POLICY.lease.max_ttl
        )
        if held.revoke_deadline is not None:
            with pytest.raises(LeaseRevoked):
                self.s.renew(lease_id, token, self.now, ttl)
            self.unchanged(before)
        elif held.expires_at <= self.now:
            # Not renewed within its TTL: it is gone, even if no tick has reclaimed it yet.
            with pytest.raises(LeaseExpired):
                self.s.renew(lease_id, token, self.now, ttl)
            self.unchanged(before)
        elif not valid_ttl:
            with pytest.raises(InvalidRequest, match="ttl"):
                self.s.renew(lease_id, token, self.now, ttl)
            self.unchanged(before)
        else:
            record = self.s.renew(lease_id, token, self.now, ttl)
            new_ttl = ttl if ttl is not None else record.ttl
            assert record.expires_at == self.now + new_ttl
            held.expires_at = record.expires_at

    @rule(index=picks, which=st.sampled_from(["waiting", "granted", "dead", "unknown"]))
    def cancel(self, index: int, which: str) -> None:
        """The caller gives up, maybe just as its grant was made (the semaphore race)."""
        pools = {
            "waiting": sorted(self.m.waiting),
            "granted": sorted(h.request_id for h in self.m.leases.values()),
            "dead": sorted(self.m.dead),
            "unknown": ["req-404"],
        }
        request_id = self.pick(pools[which], index)
        if request_id is None:
            return
        holding = [h for h in self.m.leases.values() if h.request_id == request_id]
        decisions = self.s.cancel(request_id, self.now)
        if request_id in self.m.waiting:
            assert Reject(request_id, RejectReason.CANCELLED, "") in [
                Reject(d.request_id, d.reason, "") for d in decisions if isinstance(d, Reject)
            ]
        elif holding:
            assert (
                Reclaim(holding[0].lease_id, holding[0].node, ReclaimReason.CANCELLED) in decisions
            )
        else:
            assert decisions == []
        self.apply(decisions)
        self.m.dead.add(request_id)
        assert request_id not in self.m.waiting
        assert all(h.request_id != request_id for h in self.m.leases.values())

    @rule(seconds=st.sampled_from([0.0, 0.3, 1.0, 2.5, 5.0, 12.0, 40.0]))
    def tick(self, seconds: float) -> None:
        self.now += seconds
        self.apply(self.s.tick(self.now))
        for held in self.m.leases.values():
            assert held.expires_at > self.now, f"inv3: {held.lease_id} not reclaimed at expiry"
            assert held.revoke_deadline is None or held.revoke_deadline > self.now, (
                f"revoked {held.lease_id} not reclaimed by its deadline"
            )
        for request_id, waiting in self.m.waiting.items():
            assert waiting.deadline is None or waiting.deadline > self.now, (
                f"{request_id} still waits past its timeout"
            )
        if self.s.queue:
            best = self.s.queue.best(self.now)
            assert best is not None and self.s.reservation is not None
            assert self.s.reservation.request_id == best.request_id, "the head is not the best"

    @rule(seconds=st.sampled_from([0.5, 3.0, 31.0]))
    def clock_jump_without_tick(self, seconds: float) -> None:
        """Events may arrive between two ticks: the clock moves, nothing is reclaimed yet."""
        self.now += seconds

    @rule(index=picks, capacity=capacities)
    def node_up(self, index: int, capacity: dict[str, int]) -> None:
        """A new node joins, or a known one reports a new capacity."""
        node_id = NODE_IDS[index % len(NODE_IDS)]
        self.m.nodes[node_id] = capacity
        self.m.pressured.setdefault(node_id, set())
        self.apply(self.s.node_up(node_id, capacity, self.now))
        # A waiter that can never fit any more must not be left waiting.
        for waiting in self.m.waiting.values():
            assert not self.never_fits(waiting.request), f"infeasible waiter kept: {waiting}"

    @precondition(lambda self: self.m.nodes)
    @rule(index=picks)
    def node_down(self, index: int) -> None:
        node_id = self.pick(sorted(self.m.nodes), index)
        # Its leases, and those of processes that lived on it (gone with it).
        on_node = {
            h.lease_id
            for h in self.m.leases.values()
            if any(where == node_id for where, _ in h.bundles)
            or (not h.detached and h.holder.pid is not None and h.holder.node_id == node_id)
        }
        del self.m.nodes[node_id]
        self.m.pressured.pop(node_id, None)
        self.m.outside.pop(node_id, None)
        self.m.outside_seen.pop(node_id, None)
        decisions = self.s.node_down(node_id, self.now)
        lost = {
            d.lease_id
            for d in decisions
            if isinstance(d, Reclaim) and d.reason is ReclaimReason.NODE_LOST
        }
        assert lost == on_node
        self.apply(decisions)
        for waiting in self.m.waiting.values():
            assert waiting.request.node != node_id
            assert not self.never_fits(waiting.request)

    @precondition(lambda self: self.m.nodes)
    @rule(
        index=picks,
        memory=st.sampled_from([10.0, 74.0, 80.0, 86.0, 99.0]),
        cpu=st.sampled_from([5.0, 69.0, 80.0, 95.0]),
    )
    def health(self, index: int, memory: float, cpu: float) -> None:
        node_id = self.pick(sorted(self.m.nodes), index)
        pressured = self.m.pressured.setdefault(node_id, set())
        for resource, percent, high, low in (
            ("memory", memory, PRESSURE.memory_high, PRESSURE.memory_low),
            ("cpu", cpu, PRESSURE.cpu_high, PRESSURE.cpu_low),
        ):
            assert high is not None and low is not None
            if percent >= high:
                pressured.add(resource)
            elif percent <= low:
                pressured.discard(resource)
        decisions = self.s.health(node_id, NodeSample(memory, cpu), self.now)
        for revoke in (d for d in decisions if isinstance(d, Revoke)):
            held = self.m.leases[revoke.lease_id]
            there = [amounts for where, amounts in held.bundles if where == node_id]
            assert there and "pressure" in revoke.reason
            assert any(amounts.get(r) for amounts in there for r in pressured)
        self.apply(decisions)
        by_pressure = [
            h
            for h in self.m.leases.values()
            if any(where == node_id for where, _ in h.bundles)
            and h.revoke_reason
            and "pressure" in h.revoke_reason
        ]
        assert len(by_pressure) <= 1, "pressure revokes one lease at a time per node"
        assert sorted(pressured) == self.s.snapshot(self.now)["nodes"][node_id]["pressured"]

    @precondition(lambda self: self.m.nodes)
    @rule(
        index=picks,
        cpu=st.sampled_from([0, 0, 0.5, 1, 3]),
        memory=st.sampled_from([0, 0, "1GiB", "6GiB"]),
    )
    def outside_use(self, index: int, cpu: float, memory: Any) -> None:
        """Ray reports plain Ray work on a node, outside every lease: it is not free for
        leases from then on, and what is granted there already stays granted."""
        from anya_resource.quantities import to_units

        node_id = self.pick(sorted(self.m.nodes), index)
        capacity = self.m.nodes[node_id]
        reading = {
            "cpu": min(to_units("cpu", cpu), limit_of(capacity, "cpu")),
            "memory": min(to_units("memory", memory), limit_of(capacity, "memory")),
        }
        # What Ray reports: the node's limit less what plain work takes (no group here).
        available = {r: limit_of(capacity, r) - a for r, a in reading.items()}
        available["gpu"] = limit_of(capacity, "gpu")
        before = self.state()[1]
        decisions = self.s.outside_use(node_id, available, {}, self.now)
        # Counted from the second reading in a row: the lower of the two.
        seen = self.m.outside_seen.get(node_id, {})
        self.m.outside_seen[node_id] = reading
        use = {r: min(a, seen.get(r, 0)) for r, a in reading.items()}
        self.m.outside[node_id] = {r: a for r, a in use.items() if a}
        assert not [d for d in decisions if isinstance(d, (Reclaim, Reject))], decisions
        self.apply(decisions)
        assert {lease["lease_id"] for lease in before} <= set(self.m.leases), "a lease ended"

    @rule(holder=st.sampled_from(HOLDERS[1:]))
    def holder_died(self, holder: Holder) -> None:
        assert holder.key is not None
        decisions = self.s.holder_died(holder.key, self.now)
        self.apply(decisions)
        # A detached lease outlives its holder (only its TTL ends it); nothing else does.
        assert all(h.holder.key != holder.key or h.detached for h in self.m.leases.values())
        assert all(w.request.holder.key != holder.key for w in self.m.waiting.values())

    @precondition(lambda self: self.m.leases)
    @rule(index=picks, right=st.booleans(), holder=st.sampled_from(HOLDERS))
    def rebind(self, index: int, right: bool, holder: Holder) -> None:
        """A lease is handed over to another process: the new holder's death ends it."""
        lease_id = self.pick(sorted(self.m.leases), index)
        held = self.m.leases[lease_id]
        before = self.state()
        if not right:
            with pytest.raises(NotLeaseHolder):
                self.s.rebind(lease_id, held.token + "x", holder, self.now)
            self.unchanged(before)
            return
        if held.revoke_deadline is not None or held.expires_at <= self.now:
            with pytest.raises(LeaseRevoked if held.revoke_deadline is not None else LeaseExpired):
                self.s.rebind(lease_id, held.token, holder, self.now)
            self.unchanged(before)
            return
        record = self.s.rebind(lease_id, held.token, holder, self.now)
        assert record.holder == holder and record.expires_at == self.now + record.ttl
        held.holder = holder
        held.expires_at = record.expires_at

    @rule(job=st.sampled_from(JOBS))
    def job_ended(self, job: str) -> None:
        self.apply(self.s.job_ended(job, self.now))
        for held in self.m.leases.values():
            assert held.holder.job_id != job or held.detached, f"{held.lease_id} outlived its job"

    @rule(drop=st.one_of(st.none(), picks), shrink=st.booleans())
    def restart(self, drop: int | None, shrink: bool) -> None:
        """The coordinator restarts with a higher epoch, from what its journal kept.

        Everything decided so far was committed (this machine tells the model of every
        decision at once, so the shell's rule, "nothing is told before it is written",
        means it was written); crashes between a decision and its commit are the
        business of ``test_recovery_stateful``. Waiters are lost (their callers submit
        again); a node may not come back, and may come back smaller than what is
        still granted on it.
        """
        self.durable.commit()
        self.epoch += 1
        self.m.dead.update(self.m.waiting)
        self.m.waiting.clear()
        for ended in self.m.ended.values():
            ended.before_restart = True
        self.m.pressured.clear()
        self.m.outside.clear()  # the new coordinator hears of it at the next heartbeat
        self.m.outside_seen.clear()
        gone = self.pick(sorted(self.m.nodes), drop) if drop is not None else None
        if gone is not None:
            del self.m.nodes[gone]
        if shrink:
            self.m.nodes = {n: {r: a // 2 for r, a in c.items()} for n, c in self.m.nodes.items()}
        self.durable = Durable(POLICY, self.store, self.m.nodes, self.now, epoch=self.epoch)
        self.s = self.durable.s
        decisions = self.durable.decisions
        lost = {d.lease_id for d in decisions}
        assert all(isinstance(d, Reclaim) for d in decisions)
        assert lost == {
            h.lease_id for h in self.m.leases.values() if any(n == gone for n, _ in h.bundles)
        }, "a restart reclaims the leases of a node that did not come back, no others"
        self.apply(decisions)
        for lease_id in lost:  # the new coordinator never counted them
            self.m.ended[lease_id].before_restart = True
        # Keys of leases that ended before the restart are not part of the journal.
        self.m.key_requests = {
            k: r
            for k, r in self.m.key_requests.items()
            if any(h.key == k for h in self.m.leases.values())
        }
        # Every lease is back, each once, unconfirmed until its holder claims it.
        assert {lease.lease_id for lease in self.s.leases} == set(self.m.leases)
        for held in self.m.leases.values():
            # Never cut short of what the holder was promised (its TTL from now at least).
            restored = self.s.leases.active[held.lease_id].expires_at
            assert restored >= max(held.expires_at, self.now), f"{held.lease_id} cut short"
            held.expires_at = restored

    # -- checks after every step -----------------------------------------------------------

    @invariant()
    def scheduler_invariants(self) -> None:
        check_invariants(self.s.state)

    @invariant()
    def ledger_matches_model(self) -> None:
        snap = self.s.snapshot(self.now)
        assert set(snap["nodes"]) == set(self.m.nodes)
        for node_id, capacity in self.m.nodes.items():
            rows = snap["nodes"][node_id]["resources"]
            pressured = self.m.pressured.get(node_id, set())
            for resource in NODE_RESOURCES:
                row = rows[resource]
                held = self.model_granted(node_id, resource)
                limit = limit_of(capacity, resource)
                assert row["capacity"] == capacity.get(resource, 0)
                assert row["reserve"] == reserve_of(_full(capacity))[resource]
                assert row["granted"] == held, f"{node_id} {resource}: {row['granted']} != {held}"
                expected = min(limit, held) if resource in pressured else limit
                expected -= self.m.outside.get(node_id, {}).get(resource, 0)
                assert row["grantable"] == expected
                # inv2: free + granted = grantable capacity, with no leak and no double count.
                assert row["free"] + row["granted"] == row["grantable"]
        totals = snap["resources"]
        for resource in NODE_RESOURCES:
            assert totals[resource]["granted"] == sum(
                self.model_granted(n, resource) for n in self.m.nodes
            )
            assert totals[resource]["capacity"] == sum(
                c.get(resource, 0) for c in self.m.nodes.values()
            )
        for pool, row in snap["pools"].items():
            assert row["in_use"] == self.model_pool(pool) <= row["size"]
            assert row["in_use"] + row["free"] == row["size"]
        for tenant in POLICY.tenants:
            usage = snap["tenants"][tenant]["usage"]
            for resource in set(usage) | set(NODE_RESOURCES) | set(POLICY.pools):
                assert usage.get(resource, 0) == self.model_usage(tenant, resource)
                cap = tenant_limit(tenant, resource)
                assert cap is None or usage.get(resource, 0) <= cap, f"inv1: tenant {tenant}"

    @invariant()
    def leases_match_model(self) -> None:
        listed = {lease["lease_id"]: lease for lease in self.s.lease_list()}
        assert set(listed) == set(self.m.leases)
        for lease_id, held in self.m.leases.items():
            assert listed[lease_id]["fencing_token"] == held.fencing
            assert listed[lease_id]["expires_at"] == held.expires_at
            revoking = listed[lease_id]["state"] == LeaseState.REVOKING.value
            assert revoking == (held.revoke_deadline is not None)
            assert "token" not in listed[lease_id]
        fencing = sorted(h.fencing for h in self.m.leases.values())
        assert len(set(fencing)) == len(fencing)
        for key, lease_ids in self.m.key_leases.items():
            assert len(lease_ids) <= 1, f"key {key} holds {lease_ids}"
        assert set(self.s.queue.by_id) == set(self.m.waiting)
        assert not set(self.m.waiting) & self.m.dead

    @invariant()
    def queue_is_settled(self) -> None:
        """No waiter fits where it may go: otherwise it would wait on free capacity."""
        if not self.m.waiting:
            assert self.s.reservation is None
            return
        reservation = self.s.reservation
        assert reservation is not None, "requests wait but nobody holds the head reservation"
        assert reservation.request_id in self.m.waiting
        snap = self.s.snapshot(self.now)
        for request_id, waiting in self.m.waiting.items():
            hold = None if request_id == reservation.request_id else reservation
            assert not self.fits(snap, waiting.request, hold), (
                f"{request_id} waits although it fits now: {waiting.request}"
            )

    def fits(self, snap: dict[str, Any], request: Request, hold: Any) -> bool:
        for pool, slots in request.pools.items():
            row = snap["pools"][pool]
            held = hold.pools.get(pool, 0) if hold is not None else 0
            if row["in_use"] + held + slots > row["size"]:
                return False
        held_tenant = (
            hold.tenant_amounts if hold is not None and hold.tenant == request.tenant else {}
        )
        for resource, amount in demand_of(request).items():
            cap = tenant_limit(request.tenant, resource)
            used = self.model_usage(request.tenant, resource) + held_tenant.get(resource, 0)
            if cap is not None and used + amount > cap:
                return False
        nodes = [request.node] if request.node else sorted(snap["nodes"])
        nodes = [n for n in nodes if n in snap["nodes"]]
        if not request.resources:
            return bool(nodes)
        held_nodes = hold.nodes if hold is not None else {}
        if request.bundles:
            return _gang_fits(snap, request, held_nodes, nodes)
        for node_id in nodes:
            rows = snap["nodes"][node_id]["resources"]
            held = held_nodes.get(node_id, {})
            if all(
                rows[r]["free"] - held.get(r, 0) >= amount
                for r, amount in request.resources.items()
            ):
                return True
        return False


def _examples() -> int:
    raw = os.environ.get("ANYA_SOAK_ITERATIONS") or os.environ.get("ANYA_RESOURCE_SOAK_ITERATIONS")
    return max(150, int(raw)) if raw else 150


SchedulerMachine.TestCase.settings = settings(
    max_examples=_examples(),
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestCoreScheduler = SchedulerMachine.TestCase


def _free_after(snap: dict[str, Any], held_nodes: Any, node_id: str) -> dict[str, int]:
    rows = snap["nodes"][node_id]["resources"]
    held = held_nodes.get(node_id, {})
    return {r: rows[r]["free"] - held.get(r, 0) for r in NODE_RESOURCES}


def _gang_fits(snap: dict[str, Any], request: Request, held_nodes: Any, nodes: list[str]) -> bool:
    """Whether some way to put every bundle on ``nodes`` fits now, as the strategy says
    (depth first over every assignment: the model's own, independent of the core's)."""
    free = {n: _free_after(snap, held_nodes, n) for n in nodes}
    bundles = list(request.bundles)
    distinct = request.strategy == "STRICT_SPREAD"
    one_node = request.strategy == "STRICT_PACK"

    def place(index: int, used: list[str]) -> bool:
        if index == len(bundles):
            return True
        for node_id in nodes:
            if distinct and node_id in used:
                continue
            if one_node and used and node_id != used[0]:
                continue
            room = free[node_id]
            if all(room[r] >= a for r, a in bundles[index].items()):
                for r, a in bundles[index].items():
                    room[r] -= a
                found = place(index + 1, [*used, node_id])
                for r, a in bundles[index].items():
                    room[r] += a
                if found:
                    return True
        return False

    return place(0, [])


mid_capacities = st.fixed_dictionaries(
    {
        "cpu": st.sampled_from([2, 4]).map(lambda c: c * CORE),
        "memory": st.sampled_from([4, 8]).map(lambda g: g * GIB),
        "gpu": st.sampled_from([0, 1, 2]).map(lambda g: g * CORE),
    }
)


class GangMachine(SchedulerMachine):
    """The same machine and checks, weighted to gangs: four nodes to start with, and a
    rule that submits a gang (preemptible or not, by priority) at every draw, so that
    gangs wait, hold the head's reservation across nodes, are preempted and preempt as
    a unit, lose a node, and come back after restarts in most runs."""

    @initialize(
        first=mid_capacities, second=mid_capacities, third=mid_capacities, fourth=mid_capacities
    )
    def start(  # type: ignore[override]
        self,
        first: dict[str, int],
        second: dict[str, int],
        third: dict[str, int],
        fourth: dict[str, int],
    ) -> None:
        for node_id, capacity in zip(NODE_IDS, (first, second, third, fourth), strict=False):
            self.m.nodes[node_id] = capacity
            self.apply(self.s.node_up(node_id, capacity, self.now))

    @rule(
        bundles=st.lists(bundle_maps, min_size=2, max_size=4),
        strategy=st.sampled_from(STRATEGIES),
        pools=st.sampled_from([{}, {}, {"pools": {"rpc": 1}}]),
        priority=priorities,
        tenant=tenants,
        preemptible=st.booleans(),
        timeout=timeouts,
        holder=st.sampled_from(HOLDERS),
    )
    def submit_gang(
        self,
        bundles: list[dict[str, Any]],
        strategy: str,
        pools: dict[str, Any],
        priority: Any,
        tenant: str | None,
        preemptible: bool,
        timeout: float | None,
        holder: Holder,
    ) -> None:
        self.submit(
            resources=pools,
            priority=priority,
            tenant=tenant,
            preemptible=preemptible,
            timeout=timeout,
            ttl=None,
            node_pick=None,
            with_key=True,
            holder=holder,
            detached=False,
            gang=(bundles, strategy),
        )


GangMachine.TestCase.settings = settings(
    max_examples=_examples(),
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestCoreGangs = GangMachine.TestCase
