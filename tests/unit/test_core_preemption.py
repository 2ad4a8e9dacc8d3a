"""Preemption and quotas: minimal victim sets, grace periods, guarantees, limits and
reclaiming from borrowers first."""

from __future__ import annotations

import pytest

from anya_resource.core import Reclaim, ReclaimReason, check_invariants
from anya_resource.errors import Infeasible, LeaseRevoked
from tests.unit.core_support import (
    Harness,
    grant_for,
    grants,
    make_policy,
    reclaims,
    revokes,
)

GRACE = 5.0


def harness(cpu: float = 4, **policy: object) -> Harness:
    policy.setdefault("aging", {"per_second": 0, "max_boost": 0})
    policy.setdefault("lease", {"preemption_grace_s": GRACE})
    h = Harness(make_policy(**policy))
    h.node("n1", cpu=cpu)
    return h


# -- victims ---------------------------------------------------------------------------


def test_victims_are_lowest_priority_then_newest_and_pruned_to_a_minimal_set() -> None:
    h = harness()
    old_batch = h.acquire({"cpu": 1}, priority="batch", preemptible=True)
    h.clock.advance(1)
    new_batch = h.acquire({"cpu": 1}, priority="batch", preemptible=True)
    h.clock.advance(1)
    low = h.acquire({"cpu": 2}, priority="low", preemptible=True)
    h.clock.advance(1)
    # 3 cores needed: greedy takes new batch, old batch, low; old batch is then redundant.
    _request_id, decisions = h.submit({"cpu": 3}, priority="high")
    assert {r.lease_id for r in revokes(decisions)} == {
        new_batch.lease.lease_id,
        low.lease.lease_id,
    }
    assert all(r.deadline == h.now + GRACE for r in revokes(decisions))
    assert old_batch.lease.lease_id in {lease["lease_id"] for lease in h.s.lease_list()}
    # One core is needed: only the newest of the lowest class goes.
    h2 = harness()
    first = h2.acquire({"cpu": 1}, priority="batch", preemptible=True)
    h2.clock.advance(1)
    second = h2.acquire({"cpu": 1}, priority="batch", preemptible=True)
    h2.acquire({"cpu": 2}, priority="low", preemptible=True)
    _, decisions = h2.submit({"cpu": 1}, priority="high")
    assert [r.lease_id for r in revokes(decisions)] == [second.lease.lease_id]
    assert first.lease.lease_id != second.lease.lease_id


def test_revoked_lease_has_a_grace_period_then_its_capacity_goes_to_the_head() -> None:
    h = harness()
    victim = h.acquire({"cpu": 4}, priority="low", preemptible=True)
    request_id, decisions = h.submit({"cpu": 2}, priority="high")
    [revoke] = revokes(decisions)
    assert revoke.lease_id == victim.lease.lease_id and not grants(decisions)
    listed = {lease["lease_id"]: lease for lease in h.s.lease_list()}
    assert listed[victim.lease.lease_id]["state"] == "revoking"
    with pytest.raises(LeaseRevoked, match="revoked"):
        h.s.renew(victim.lease.lease_id, victim.lease.token, h.now)
    assert h.tick(GRACE - 0.01) == []  # still within the grace period
    decisions = h.tick(0.01)
    assert Reclaim(victim.lease.lease_id, "n1", ReclaimReason.REVOKED) in decisions
    grant = grant_for(decisions, request_id)
    assert grant is not None and grant.waited == pytest.approx(GRACE)
    with pytest.raises(LeaseRevoked, match="preempted"):
        h.s.renew(victim.lease.lease_id, victim.lease.token, h.now)
    check_invariants(h.s.state)


def test_a_victim_that_lets_go_early_frees_the_capacity_at_once() -> None:
    h = harness()
    victim = h.acquire({"cpu": 4}, priority="low", preemptible=True)
    request_id, _ = h.submit({"cpu": 4}, priority="high")
    decisions = h.release(victim)
    assert grant_for(decisions, request_id) is not None
    assert h.tick(GRACE) == []  # nothing left to reclaim at the deadline


def test_no_preemption_of_equal_priority_or_non_preemptible_leases() -> None:
    h = harness()
    h.acquire({"cpu": 2}, priority="high", preemptible=True)
    h.acquire({"cpu": 2}, priority="low", preemptible=False)
    _, decisions = h.submit({"cpu": 2}, priority="high")
    assert revokes(decisions) == []
    _, decisions = h.submit({"cpu": 4}, priority="critical")
    assert revokes(decisions) == []  # the only candidate would not free enough
    assert len(h.s.queue) == 2


def test_one_preemption_round_per_head() -> None:
    h = harness()
    h.acquire({"cpu": 4}, priority="low", preemptible=True)
    _, decisions = h.submit({"cpu": 2}, priority="high")
    assert len(revokes(decisions)) == 1
    for _ in range(3):  # more events while the revocation runs: no second victim
        assert revokes(h.tick(1)) == []


# -- quotas ----------------------------------------------------------------------------

QUOTAS = {
    "tx": {"guaranteed": {"cpu": 2}, "limit": {"cpu": 6}},
    "ml": {"guaranteed": {"cpu": 2}, "limit": {"cpu": 8}},
    "etl": {"guaranteed": {"cpu": 2}},
    "capped": {"guaranteed": {"cpu": 1}, "limit": {"cpu": 3}, "borrowing": False},
}


def test_tenant_hard_limit_makes_requests_wait_and_larger_ones_infeasible() -> None:
    h = harness(cpu=16, tenants=QUOTAS)
    h.acquire({"cpu": 5}, tenant="tx")
    waiting = h.wait({"cpu": 2}, tenant="tx")  # 5 + 2 > 6, though the node has room
    assert h.acquire({"cpu": 2}, tenant="ml").lease.tenant == "ml"
    with pytest.raises(
        Infeasible, match="tenant 'tx' has a hard limit of 6 CPUs; 7 CPUs were asked for"
    ):
        h.submit({"cpu": 7}, tenant="tx")
    snap = h.snap()
    assert snap["tenants"]["tx"]["usage"] == {"cpu": 5000}
    assert snap["tenants"]["tx"]["waiting"] == {"cpu": 2000}
    assert snap["tenants"]["tx"]["limit"] == {"cpu": 6000}
    assert waiting in h.s.queue


def test_a_tenant_that_may_not_borrow_is_capped_at_its_guarantee() -> None:
    h = harness(cpu=16, tenants=QUOTAS)
    with pytest.raises(Infeasible, match="capped"):
        h.submit({"cpu": 2}, tenant="capped")
    h.acquire({"cpu": 1}, tenant="capped")
    h.wait({"cpu": 0.5}, tenant="capped")
    assert h.snap()["tenants"]["capped"]["limit"] == {"cpu": 1000}


def test_leases_past_the_guarantee_are_marked_borrowed() -> None:
    h = harness(cpu=16, tenants=QUOTAS)
    within = h.acquire({"cpu": 2}, tenant="tx")
    beyond = h.acquire({"cpu": 1}, tenant="tx")
    assert (within.lease.borrowed, beyond.lease.borrowed) == (False, True)


def test_a_tenant_below_its_guarantee_reclaims_from_borrowers_first() -> None:
    h = harness(cpu=6, tenants=QUOTAS)
    ml_own = h.acquire({"cpu": 2}, tenant="ml", priority="high", preemptible=True)
    ml_borrowed = h.acquire({"cpu": 2}, tenant="ml", priority="high", preemptible=True)
    etl_batch = h.acquire({"cpu": 2}, tenant="etl", priority="batch", preemptible=True)
    assert (ml_own.lease.borrowed, ml_borrowed.lease.borrowed) == (False, True)
    assert not etl_batch.lease.borrowed
    # tx holds nothing: its 2 guaranteed cores come from the borrower, even though the
    # borrower's priority is higher and a batch lease is there for the taking.
    request_id, decisions = h.submit({"cpu": 2}, tenant="tx", priority="normal")
    assert [r.lease_id for r in revokes(decisions)] == [ml_borrowed.lease.lease_id]
    decisions = h.tick(GRACE)
    assert {r.lease_id for r in reclaims(decisions)} == {ml_borrowed.lease.lease_id}
    assert grant_for(decisions, request_id) is not None
    check_invariants(h.s.state)


def test_past_its_guarantee_a_tenant_preempts_by_priority_only() -> None:
    h = harness(cpu=6, tenants=QUOTAS)
    h.acquire({"cpu": 2}, tenant="tx")  # tx is at its guarantee
    ml_borrowed = h.acquire({"cpu": 2}, tenant="ml", priority="high", preemptible=True)
    h.acquire({"cpu": 0.5}, tenant="ml", priority="high", preemptible=True)
    etl_batch = h.acquire({"cpu": 1.5}, tenant="etl", priority="batch", preemptible=True)
    _, decisions = h.submit({"cpu": 1.5}, tenant="tx", priority="normal")
    assert [r.lease_id for r in revokes(decisions)] == [etl_batch.lease.lease_id]
    assert ml_borrowed.lease.lease_id not in {r.lease_id for r in revokes(decisions)}


def test_guarantee_is_reclaimed_from_an_unnamed_tenant_from_its_first_lease() -> None:
    """Regression: a tenant the policy does not name has no guarantee, so all it holds
    is borrowed - also its first lease, granted before the scheduler had a quota
    record for it (that one was marked not borrowed, and could not be reclaimed)."""
    h = harness(cpu=4, tenants=QUOTAS)
    hog = h.acquire({"cpu": 4}, tenant="job-77", priority="critical", preemptible=True)
    assert hog.lease.borrowed
    _, decisions = h.submit({"cpu": 2}, tenant="tx", priority="normal")
    assert [r.lease_id for r in revokes(decisions)] == [hog.lease.lease_id]
