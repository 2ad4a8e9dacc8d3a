"""Budgets (core/budgets.py): what a job draws from its lease never exceeds it.

First the rules one by one, then a state machine that opens budgets, draws from them,
gives back, kills holders, ends and revokes budgets, restarts the coordinator from its
journal, and checks after every step that what is drawn from each budget fits it,
counts once, and ends with it.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from anya_resource.core import Grant, Holder, Reclaim, ReclaimReason, Reject, check_invariants
from anya_resource.core.leases import TokenMinter
from anya_resource.core.model import Decision, LeaseRecord, LeaseState, RejectReason
from anya_resource.core.warm import wanted_back
from anya_resource.errors import (
    Infeasible,
    InvalidRequest,
    LeaseExpired,
    LeaseRevoked,
    NotLeaseHolder,
)
from tests.unit.core_support import (
    CORE,
    GIB,
    SECRET,
    Durable,
    Harness,
    Store,
    caps,
    grant_for,
    make_policy,
    reclaims,
    rejects,
    revokes,
)

POLICY = make_policy(
    pools={"rpc": {"size": 4}},
    default_pool="rpc",
    lease={"default_ttl": 30, "max_ttl": 300, "preemption_grace_s": 5},
)
DRIVER = Holder(pid=7, create_time=1.0, node_id="n1", job_id="job-a")


def within(grant: Grant) -> list[str]:
    """What a job is given to draw from ``grant``'s lease: its id and budget key."""
    return [grant.lease.lease_id, TokenMinter(SECRET).budget_key(grant.lease.lease_id)]


@pytest.fixture
def h() -> Harness:
    harness = Harness(POLICY)
    harness.node("n1", cpu=8, memory=16 * GIB)
    harness.node("n2", cpu=8, memory=16 * GIB)
    return harness


@pytest.fixture
def job(h: Harness) -> Grant:
    """A job's budget: 2 cpus, 4 GiB and 2 rpc slots."""
    return h.acquire({"cpu": 2, "memory": "4GiB", "pools": {"rpc": 2}}, tenant="team")


def test_drawn_leases_fit_the_budget_and_hold_nothing_of_the_cluster(
    h: Harness, job: Grant
) -> None:
    before = h.snap()
    first = h.acquire({"cpu": 1}, within=within(job), holder=DRIVER)
    second = h.acquire({"cpu": 1, "pools": {"rpc": 2}}, within=within(job), holder=DRIVER)
    after = h.snap()
    for node_id in ("n1", "n2"):  # the budget holds it already
        assert after["nodes"][node_id]["resources"] == before["nodes"][node_id]["resources"]
    assert after["pools"] == before["pools"]
    for drawn in (first, second):
        assert drawn.lease.within == job.lease.lease_id
        assert drawn.lease.node_id == job.lease.node_id  # on the budget's node
        assert drawn.lease.tenant == "team"  # in the budget's tenant
        assert not drawn.lease.preemptible
    assert h.s.budgets.by_lease[job.lease.lease_id].used == {"cpu": 2 * CORE, "rpc": 2}
    check_invariants(h.s.state)


def test_a_draw_past_the_budget_waits_and_is_granted_when_one_comes_back(
    h: Harness, job: Grant
) -> None:
    first = h.acquire({"cpu": 2}, within=within(job))
    request_id, decisions = h.submit({"cpu": 1}, within=within(job))
    assert grant_for(decisions, request_id) is None and not rejects(decisions)
    assert request_id in h.s.budgets.waiters
    assert request_id not in h.s.queue  # never in the cluster's queue
    # The cluster has room for it: it still waits, the cap is the budget.
    assert h.acquire({"cpu": 4}).lease.within is None
    decisions = h.release(first)
    assert grant_for(decisions, request_id) is not None
    check_invariants(h.s.state)


def test_the_first_waiter_of_a_budget_is_not_overtaken_by_smaller_ones(
    h: Harness, job: Grant
) -> None:
    small = h.acquire({"cpu": 1}, within=within(job))
    big, _ = h.submit({"cpu": 2}, within=within(job))
    tiny, decisions = h.submit({"cpu": "0.5"}, within=within(job))
    assert grant_for(decisions, tiny) is None  # it fits, but comes after the big one
    high, decisions = h.submit({"cpu": "0.5"}, within=within(job), priority="high")
    high_grant = grant_for(decisions, high)
    assert high_grant is not None  # a higher priority goes first
    decisions = h.release(small)
    assert grant_for(decisions, big) is None  # high's half core is still drawn
    decisions = h.release(high_grant)
    assert grant_for(decisions, big) is not None
    assert grant_for(decisions, tiny) is None  # the big one took it all
    check_invariants(h.s.state)


def test_what_can_never_fit_a_budget_is_refused_at_once_naming_it(h: Harness, job: Grant) -> None:
    with pytest.raises(Infeasible, match=r"holds 2 CPUs; 3 CPUs were asked for"):
        h.submit({"cpu": 3}, within=within(job))
    with pytest.raises(Infeasible, match=r"holds no gpu"):
        h.submit({"gpu": 1}, within=within(job))
    with pytest.raises(Infeasible, match=r"holds 4.0 GiB of memory; 5.0 GiB"):
        h.submit({"memory": "5GiB"}, within=within(job))
    assert not h.s.budgets.waiters
    check_invariants(h.s.state)


def test_a_wrong_ended_or_nested_budget_is_refused_and_changes_nothing(
    h: Harness, job: Grant
) -> None:
    with pytest.raises(NotLeaseHolder):
        h.submit({"cpu": 1}, within=[job.lease.lease_id, "f" * 48])
    with pytest.raises(NotLeaseHolder):  # the lease's own token is not its budget key
        h.submit({"cpu": 1}, within=[job.lease.lease_id, job.lease.token])
    with pytest.raises(NotLeaseHolder):
        h.submit({"cpu": 1}, within=["lease-deadbeef", within(job)[1]])
    assert h.s.budget_key(job.lease.lease_id, job.lease.token) == within(job)[1]
    with pytest.raises(NotLeaseHolder):
        h.s.budget_key(job.lease.lease_id, "f" * 48)
    with pytest.raises(InvalidRequest, match="within"):
        h.submit({"cpu": 1}, within="lease-1")
    with pytest.raises(InvalidRequest, match="within"):
        h.submit({"cpu": 1}, within=[job.lease.lease_id, 5])
    drawn = h.acquire({"cpu": 1}, within=within(job))
    with pytest.raises(InvalidRequest, match="a lease of the cluster's own"):
        h.s.budget_key(drawn.lease.lease_id, drawn.lease.token)
    with pytest.raises(InvalidRequest, match="itself drawn from a budget"):
        h.submit({"cpu": 1}, within=within(drawn))
    other = "n2" if job.lease.node_id == "n1" else "n1"
    with pytest.raises(InvalidRequest, match="holds its capacity on"):
        h.submit({"cpu": 1}, within=within(job), node=other)
    h.release(drawn)
    h.release(job)
    with pytest.raises(LeaseExpired, match="has ended"):
        h.submit({"cpu": 1}, within=within(job))
    assert not h.s.budgets.by_lease and not h.s.leases.active
    assert h.snap()["pools"]["rpc"]["in_use"] == 0
    check_invariants(h.s.state)


def test_when_the_budget_ends_what_was_drawn_ends_and_its_waiters_are_refused(
    h: Harness, job: Grant
) -> None:
    drawn = h.acquire({"cpu": 2}, within=within(job), holder=DRIVER, idempotency_key="m/1")
    waiting, _ = h.submit({"cpu": 1}, within=within(job), holder=DRIVER)
    decisions = h.release(job)
    ended = {r.lease_id: r for r in reclaims(decisions)}
    assert ended[drawn.lease.lease_id].reason is ReclaimReason.BUDGET_ENDED
    assert ended[drawn.lease.lease_id].tell == "m"  # its manager hears of it
    [refused] = rejects(decisions)
    assert refused.request_id == waiting and refused.reason is RejectReason.BUDGET_ENDED
    assert not h.s.leases.active and not h.s.budgets.by_lease and not h.s.budgets.waiters
    # Releasing what ended with its budget is the no-op any late release is.
    assert h.release(drawn) == []
    check_invariants(h.s.state)


def test_revoking_the_budget_revokes_what_was_drawn_with_the_same_grace(h: Harness) -> None:
    job = h.acquire({"cpu": 8}, preemptible=True, priority="low", node="n1")
    h.acquire({"cpu": 8}, node="n2")
    drawn = h.acquire({"cpu": 1}, within=within(job))
    _, decisions = h.submit({"cpu": 8}, priority="high")
    revoked = {r.lease_id: r for r in revokes(decisions)}
    assert set(revoked) == {job.lease.lease_id, drawn.lease.lease_id}
    assert revoked[drawn.lease.lease_id].deadline == revoked[job.lease.lease_id].deadline
    with pytest.raises(LeaseRevoked, match="being taken back"):
        h.submit({"cpu": 1}, within=within(job))
    decisions = h.tick(6)
    assert {r.lease_id for r in reclaims(decisions)} >= {job.lease.lease_id, drawn.lease.lease_id}
    check_invariants(h.s.state)


def test_drawn_leases_are_never_chosen_to_be_preempted(h: Harness) -> None:
    job = h.acquire({"cpu": 8}, node="n1")
    h.acquire({"cpu": 8}, node="n2")
    h.acquire({"cpu": 1}, within=within(job), preemptible=True, priority="low")
    _, decisions = h.submit({"cpu": 1}, priority="high")
    assert not revokes(decisions)  # taking it back would free nothing of the cluster


def test_timeout_cancel_and_holder_death_of_a_waiter_in_a_budget(h: Harness, job: Grant) -> None:
    h.acquire({"cpu": 2}, within=within(job))
    _once, decisions = h.submit({"cpu": 1}, within=within(job), timeout=0)
    assert rejects(decisions)[0].reason is RejectReason.TIMEOUT
    timed, _ = h.submit({"cpu": 1}, within=within(job), timeout=3)
    cancelled, _ = h.submit({"cpu": 1}, within=within(job))
    dying, _ = h.submit({"cpu": 1}, within=within(job), holder=DRIVER)
    assert [r.request_id for r in rejects(h.tick(4))] == [timed]
    assert [r.request_id for r in rejects(h.s.cancel(cancelled, h.now))] == [cancelled]
    decisions = h.s.holder_died(str(DRIVER.key), h.now)
    assert [r.request_id for r in rejects(decisions)] == [dying]
    assert not h.s.budgets.waiters
    check_invariants(h.s.state)


def test_a_retried_draw_gets_its_first_grant(h: Harness, job: Grant) -> None:
    first = h.acquire({"cpu": 1}, within=within(job), idempotency_key="m/7")
    again = h.acquire({"cpu": 1}, within=within(job), idempotency_key="m/7")
    assert again.lease.lease_id == first.lease.lease_id
    assert h.s.budgets.by_lease[job.lease.lease_id].used == {"cpu": CORE}


def test_a_waiter_in_a_budget_wants_back_what_others_keep_warm(h: Harness, job: Grant) -> None:
    warm = h.acquire({"cpu": 2}, within=within(job), idempotency_key="other/1")
    h.submit({"cpu": 1}, within=within(job), idempotency_key="mine/1")
    assert wanted_back(h.s.state, h.now).wanted == {"other": {warm.lease.lease_id}}
    h.s.cancel_key("mine/1", h.now)
    # The cluster's queue never asks for a drawn lease: it would free nothing there.
    h.acquire({"cpu": 6}, node=job.lease.node_id)
    h.submit({"cpu": 8}, node=job.lease.node_id, idempotency_key="third/1")
    asked = wanted_back(h.s.state, h.now)
    everything = set().union(*asked.wanted.values(), *asked.spare.values())
    assert warm.lease.lease_id not in everything


def test_a_restart_restores_budgets_from_the_journal() -> None:
    store = Store()
    nodes = {"n1": caps(cpu=4, memory=8 * GIB)}
    first = Durable(POLICY, store, nodes, 100.0)
    job = grant_for(*_submit(first, {"cpu": 2}))
    assert job is not None
    drawn = grant_for(*_submit(first, {"cpu": 2}, within=within(job)))
    assert drawn is not None
    first.commit()
    second = Durable(POLICY, store, nodes, 101.0, epoch=1)
    assert second.decisions == []
    budget = second.s.budgets.by_lease[job.lease.lease_id]
    assert budget.used == {"cpu": 2 * CORE} and budget.drawn == {drawn.lease.lease_id}
    check_invariants(second.s.state)
    # A budget whose lease ended with a write that never landed: the drawn lease is
    # restored without it, and reclaimed at once.
    records = {job.lease.lease_id, drawn.lease.lease_id}
    assert {lease.lease_id for lease in second.s.leases} == records


def _submit(
    durable: Durable, resources: dict[str, Any], **kwargs: Any
) -> tuple[list[Decision], str]:
    from anya_resource.core import build_request

    request_id, decisions = durable.s.submit(build_request(POLICY, resources, **kwargs), 100.0)
    return decisions, request_id


def test_a_drawn_lease_restored_without_its_budget_is_reclaimed() -> None:
    from anya_resource.core.journal import Recovered

    h = Harness(POLICY)
    h.node("n1", cpu=4)
    orphan = LeaseRecord(
        "lease-9", "req-0-9", "", 9, "n1", {"cpu": CORE}, {}, 0, "normal", "default", 30.0,
        0.0, 30.0, False, Holder(), within="lease-8",
    )  # fmt: skip
    decisions = h.s.restore(Recovered(leases={"lease-9": orphan}, highest_fencing=9), h.now)
    assert [(r.lease_id, r.reason) for r in reclaims(decisions)] == [
        ("lease-9", ReclaimReason.BUDGET_ENDED)
    ]
    assert not h.s.leases.active
    check_invariants(h.s.state)


# -- the state machine ---------------------------------------------------------------

HOLDERS = tuple(Holder(pid=p, create_time=1.0, node_id="n1", job_id="j") for p in (1, 2, 3))
BUDGET_SHAPES = (
    {"cpu": 2},
    {"cpu": 1, "pools": {"rpc": 2}},
    {"memory": "2GiB", "cpu": "0.5"},
    # Jobs across nodes: a draw goes in one bundle, on its node, never past it.
    {"bundles": [{"cpu": 1}, {"cpu": 1}], "strategy": "STRICT_SPREAD"},
    {"bundles": [{"cpu": 1, "memory": "1GiB"}, {"cpu": "0.5"}], "strategy": "SPREAD"},
)
DRAWN_SHAPES = ({"cpu": "0.5"}, {"cpu": 1}, {"pools": {"rpc": 1}}, {"memory": "1GiB"}, {"gpu": 1})
picks = st.integers(min_value=0, max_value=1000)


class BudgetMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 100.0
        self.store = Store()
        self.epoch = 0
        self.nodes = {"n1": caps(cpu=4, memory=8 * GIB), "n2": caps(cpu=2, memory=4 * GIB)}
        self.durable = Durable(POLICY, self.store, self.nodes, self.now)
        self.held: dict[str, LeaseRecord] = {}  # what holders were told they hold
        self.ended_budgets: set[str] = set()

    @property
    def s(self) -> Any:
        return self.durable.s

    def apply(self, decisions: list[Decision]) -> None:
        self.durable.commit()
        for decision in decisions:
            if isinstance(decision, Grant):
                assert decision.lease.lease_id not in self.held, "granted twice"
                if decision.lease.within is not None:
                    event("drawn from a budget")
                self.held[decision.lease.lease_id] = decision.lease
            elif isinstance(decision, Reclaim):
                event(f"reclaimed: {decision.reason.value}")
                lease = self.held.pop(decision.lease_id, None)
                if lease is not None and lease.within is None:
                    self.ended_budgets.add(lease.lease_id)
            elif isinstance(decision, Reject):
                assert decision.request_id not in self.s.budgets.waiters

    def budgets(self) -> list[LeaseRecord]:
        return [lease for lease in self.held.values() if lease.within is None]

    @initialize()
    def begin(self) -> None:
        self.apply(self.durable.decisions)

    @rule(shape=st.sampled_from(BUDGET_SHAPES), preemptible=st.booleans())
    def open_budget(self, shape: dict[str, Any], preemptible: bool) -> None:
        request = self.s_request(shape, preemptible=preemptible, priority="low")
        with_errors(lambda: self.apply(self.s.submit(request, self.now)[1]))

    @rule(
        index=picks,
        shape=st.sampled_from(DRAWN_SHAPES),
        holder=st.sampled_from(HOLDERS),
        priority=st.sampled_from(["low", "normal", "high"]),
        timeout=st.sampled_from([None, 0, 2.0]),
        forged=st.booleans(),
    )
    def draw(
        self,
        index: int,
        shape: dict[str, Any],
        holder: Holder,
        priority: str,
        timeout: float | None,
        forged: bool,
    ) -> None:
        budgets = self.budgets() or [
            lease for lease_id, lease in self.s.leases.active.items() if lease.within is None
        ]
        if not budgets:
            return
        budget = budgets[index % len(budgets)]
        token = "f" * 48 if forged else TokenMinter(SECRET).budget_key(budget.lease_id)
        request = self.s_request(
            shape,
            within=[budget.lease_id, token],
            holder=holder,
            priority=priority,
            timeout=timeout,
        )
        before = self.s.lease_list()
        try:
            self.apply(self.s.submit(request, self.now)[1])
        except NotLeaseHolder:
            assert forged
            assert self.s.lease_list() == before
        except (Infeasible, LeaseRevoked, LeaseExpired):
            assert self.s.lease_list() == before

    @precondition(lambda self: self.held)
    @rule(index=picks)
    def release(self, index: int) -> None:
        lease = sorted(self.held.values(), key=lambda x: x.lease_id)[index % len(self.held)]
        self.apply(self.s.release(lease.lease_id, lease.token, self.now))
        self.held.pop(lease.lease_id, None)
        if lease.within is None:
            self.ended_budgets.add(lease.lease_id)

    @rule(index=picks)
    def cancel_a_waiter(self, index: int) -> None:
        waiting = sorted(self.s.budgets.waiters)
        if waiting:
            self.apply(self.s.cancel(waiting[index % len(waiting)], self.now))

    @rule(holder=st.sampled_from(HOLDERS))
    def holder_died(self, holder: Holder) -> None:
        self.apply(self.s.holder_died(str(holder.key), self.now))

    @rule()
    def preempt(self) -> None:
        """A high request for a whole node: budgets that are preemptible are revoked."""
        request = self.s_request({"cpu": 4}, priority="high", timeout=1.0)
        with_errors(lambda: self.apply(self.s.submit(request, self.now)[1]))

    @rule(seconds=st.sampled_from([0.5, 3.0, 6.0, 40.0]))
    def tick(self, seconds: float) -> None:
        self.now += seconds
        for lease in list(self.s.leases):  # holders renew, so only revocations end leases
            if lease.state is LeaseState.ACTIVE and lease.lease_id in self.held:
                self.s.renew(lease.lease_id, lease.token, self.now - seconds)
        self.apply(self.s.tick(self.now))

    @rule()
    def restart(self) -> None:
        self.durable.commit()
        self.epoch += 1
        self.durable = Durable(POLICY, self.store, self.nodes, self.now, epoch=self.epoch)
        self.apply(self.durable.decisions)
        for lease in self.s.leases:  # holders claim their leases with their tokens
            self.held[lease.lease_id].token = lease.token

    def s_request(self, shape: dict[str, Any], **kwargs: Any) -> Any:
        from anya_resource.core import build_request

        gang = {k: shape[k] for k in ("bundles", "strategy") if k in shape}
        resources = {k: v for k, v in shape.items() if k not in gang}
        return build_request(POLICY, resources, **gang, **kwargs)

    @invariant()
    def invariants_hold(self) -> None:
        check_invariants(self.s.state)

    @invariant()
    def drawn_fits_and_ends_with_its_budget(self) -> None:
        active = self.s.leases.active
        assert set(self.held) == set(active), "what holders hold is what is counted"
        for budget in (lease for lease in active.values() if lease.within is None):
            drawn: dict[str, int] = {}
            for lease in active.values():
                if lease.within == budget.lease_id:
                    for name, amount in {**lease.resources, **lease.pools}.items():
                        drawn[name] = drawn.get(name, 0) + amount
            total = {**budget.resources, **budget.pools}
            for name, amount in drawn.items():
                assert amount <= total.get(name, 0), f"{budget.lease_id}: {drawn} > {total}"
            for index, (node_id, amounts) in enumerate(budget.placed()):
                in_bundle: dict[str, int] = {}
                for lease in active.values():
                    if lease.within == budget.lease_id and (lease.within_bundle or 0) == index:
                        if lease.resources:
                            assert lease.node_id == node_id, "drawn off its bundle's node"
                        for name, amount in lease.resources.items():
                            in_bundle[name] = in_bundle.get(name, 0) + amount
                for name, amount in in_bundle.items():
                    assert amount <= amounts.get(name, 0), (
                        f"bundle {index}: {in_bundle} > {amounts}"
                    )
                if budget.bundles is not None and in_bundle:
                    event("drawn from a bundle of a gang budget")
        for lease in active.values():
            assert lease.within is None or lease.within in active, "outlived its budget"
            assert lease.within not in self.ended_budgets


def with_errors(call: Any) -> None:
    with contextlib.suppress(Infeasible, InvalidRequest):
        call()


BudgetMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("ANYA_SOAK_ITERATIONS") or 150),
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestBudgets = BudgetMachine.TestCase


def test_what_if_within_a_budget_answers_for_the_budget(h: Harness, job: Grant) -> None:
    answer = h.s.what_if(h.request({"cpu": 1}, within=within(job)), 3, h.now)
    assert (answer.granted_now, answer.would_wait) == (2, 1)
    assert answer.nodes == {job.lease.node_id: 2}
    assert answer.blocked_by is not None and "0 of 2 cpu drawn" in answer.blocked_by
    never = h.s.what_if(h.request({"gpu": 1}, within=within(job)), 1, h.now)
    assert never.infeasible and "holds no gpu" in never.infeasible
    assert (never.granted_now, never.would_wait) == (0, 0)  # infeasible, not waiting
    h.acquire({"cpu": 2}, within=within(job))
    h.submit({"cpu": 1}, within=within(job))
    answer = h.s.what_if(h.request({"cpu": 1}, within=within(job)), 1, h.now)
    assert answer.would_wait == 1 and "wait before it" in str(answer.blocked_by)
    check_invariants(h.s.state)
