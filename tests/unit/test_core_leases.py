"""Leases: tokens, release, renewal, expiry, fencing tokens and recovery after a restart."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest

from anya_resource.core import (
    Reclaim,
    ReclaimReason,
    Scheduler,
    check_invariants,
)
from anya_resource.core.leases import EPOCH_SHIFT
from anya_resource.errors import InvalidRequest, LeaseExpired, LeaseRevoked, NotLeaseHolder
from tests.unit.core_support import Harness, caps, grants, make_policy, reclaims, revokes


@pytest.fixture
def h() -> Harness:
    harness = Harness(make_policy(lease={"default_ttl": 30, "renew_every": 10, "max_ttl": 600}))
    harness.node("n1", cpu=4)
    return harness


def state(h: Harness) -> tuple[Any, Any]:
    return h.snap(), h.s.lease_list()


# -- tokens ------------------------------------------------------------------------------


def test_tokens_are_long_secret_and_unique_and_never_listed(h: Harness) -> None:
    leases = [h.acquire({"cpu": 0.5}).lease for _ in range(8)]
    tokens = {lease.token for lease in leases}
    assert len(tokens) == 8
    assert all(len(t) >= 22 for t in tokens)  # >= 128 bits in url-safe base64
    listing = repr(h.s.lease_list()) + repr(h.snap())
    assert not any(t in listing for t in tokens)


@pytest.mark.parametrize("wrong", ["", "nope", None, 7, b"bytes", "TOKEN+x", "TOKEN[:-1]"])
def test_a_wrong_token_changes_nothing(h: Harness, wrong: Any) -> None:
    grant = h.acquire({"cpu": 2})
    token = grant.lease.token
    wrong = {"TOKEN+x": token + "x", "TOKEN[:-1]": token[:-1]}.get(wrong, wrong)
    before = state(h)
    with pytest.raises(NotLeaseHolder, match=grant.lease.lease_id):
        h.s.release(grant.lease.lease_id, wrong, h.now)
    with pytest.raises(NotLeaseHolder):
        h.s.renew(grant.lease.lease_id, wrong, h.now, 100)
    assert state(h) == before
    h.release(grant)  # and after the release, a wrong token is still refused
    with pytest.raises(NotLeaseHolder):
        h.s.release(grant.lease.lease_id, wrong, h.now)


# -- release -----------------------------------------------------------------------------


def test_release_is_idempotent_for_the_holder(h: Harness) -> None:
    grant = h.acquire({"cpu": 3})
    decisions = h.release(grant)
    assert decisions == [Reclaim(grant.lease.lease_id, "n1", ReclaimReason.RELEASED)]
    after_first = state(h)
    assert h.release(grant) == []
    assert h.release(grant) == []
    assert state(h) == after_first
    assert h.snap()["resources"]["cpu"]["granted"] == 0


def test_release_of_an_unknown_lease_is_invalid(h: Harness) -> None:
    before = state(h)
    with pytest.raises(InvalidRequest, match="lease-999"):
        h.s.release("lease-999", "x", h.now)
    assert state(h) == before


# -- renewal and expiry ------------------------------------------------------------------


def test_renewal_pushes_the_expiry_and_a_lease_not_renewed_is_reclaimed(h: Harness) -> None:
    grant = h.acquire({"cpu": 1})
    assert grant.lease.expires_at == h.now + 30
    h.clock.advance(20)
    record = h.s.renew(grant.lease.lease_id, grant.lease.token, h.now)
    assert record.expires_at == h.now + 30
    assert h.tick(29.9) == []  # the original expiry passed: the renewal holds
    record = h.s.renew(grant.lease.lease_id, grant.lease.token, h.now, ttl=5)
    assert record.expires_at == h.now + 5
    decisions = h.tick(5)
    assert decisions == [Reclaim(grant.lease.lease_id, "n1", ReclaimReason.EXPIRED)]
    assert h.snap()["resources"]["cpu"]["granted"] == 0
    with pytest.raises(LeaseExpired, match="acquire anew"):
        h.s.renew(grant.lease.lease_id, grant.lease.token, h.now)


def test_renew_after_expiry_but_before_the_tick_does_not_revive_the_lease(h: Harness) -> None:
    """Regression: a renewal that arrived after the TTL ran out, but before the tick
    that reclaims it, used to extend the lease, which then never expired."""
    grant = h.acquire({"cpu": 1})
    h.clock.advance(30.5)
    before = state(h)
    with pytest.raises(LeaseExpired):
        h.s.renew(grant.lease.lease_id, grant.lease.token, h.now)
    assert state(h) == before
    assert reclaims(h.tick()) == [Reclaim(grant.lease.lease_id, "n1", ReclaimReason.EXPIRED)]


def test_two_renewals_to_the_same_instant_expire_once(h: Harness) -> None:
    """Regression: equal expiry entries made the tick reclaim the lease twice (KeyError)."""
    grant = h.acquire({"cpu": 1})
    for _ in range(3):  # a client retrying its renewal at the same instant
        h.s.renew(grant.lease.lease_id, grant.lease.token, h.now + 1)
    decisions = h.tick(31)
    assert decisions == [Reclaim(grant.lease.lease_id, "n1", ReclaimReason.EXPIRED)]
    check_invariants(h.s)


@pytest.mark.parametrize("ttl", [0, -1, math.nan, math.inf, 601, "30", True, [30]])
def test_renew_with_a_bad_ttl_is_invalid(h: Harness, ttl: Any) -> None:
    grant = h.acquire({"cpu": 1})
    before = state(h)
    with pytest.raises(InvalidRequest, match="ttl"):
        h.s.renew(grant.lease.lease_id, grant.lease.token, h.now, ttl)
    assert state(h) == before


def test_renew_of_a_revoked_lease_says_revoked(h: Harness) -> None:
    victim = h.acquire({"cpu": 4}, priority="low", preemptible=True)
    _, decisions = h.submit({"cpu": 4}, priority="high")
    assert [r.lease_id for r in revokes(decisions)] == [victim.lease.lease_id]
    with pytest.raises(LeaseRevoked, match="preempted"):
        h.s.renew(victim.lease.lease_id, victim.lease.token, h.now)
    h.release(victim)
    with pytest.raises(LeaseExpired):  # released by its holder: it simply ended
        h.s.renew(victim.lease.lease_id, victim.lease.token, h.now)


def test_renew_of_a_lease_lost_with_its_node_says_revoked(h: Harness) -> None:
    h.node("n2", cpu=4)
    grant = h.acquire({"cpu": 4}, node="n2")
    h.s.node_down("n2", h.now)
    with pytest.raises(LeaseRevoked, match="node_lost"):
        h.s.renew(grant.lease.lease_id, grant.lease.token, h.now)


# -- fencing tokens and restarts --------------------------------------------------------


def test_fencing_tokens_strictly_increase_in_grant_order(h: Harness) -> None:
    fencing = []
    for _ in range(20):
        grant = h.acquire({"cpu": 1})
        fencing.append(grant.lease.fencing_token)
        h.release(grant)
    assert fencing == sorted(set(fencing))


def test_restore_after_a_restart_counts_each_lease_once_and_fences_above_them() -> None:
    policy = make_policy()
    old = Scheduler(policy, epoch=3)
    old.node_up("n1", caps(cpu=8), 0.0)
    old.node_up("n2", caps(cpu=8), 0.0)
    held = []
    for i in range(6):
        _, decisions = old.submit(_req(policy, cpu=1, node=f"n{1 + i % 2}", key=f"k{i}"), 0.0)
        held.extend(g.lease for g in grants(decisions))
    records = [copy.deepcopy(lease) for lease in held]
    highest = max(r.fencing_token for r in records)

    new = Scheduler(policy, epoch=4)
    new.node_up("n1", caps(cpu=8), 1.0)
    new.node_up("n2", caps(cpu=8), 1.0)
    assert new.restore(records, 1.0) == []
    assert new.restore(copy.deepcopy(records), 1.0) == []  # a second report: counted once
    check_invariants(new)
    snap = new.snapshot(1.0)
    assert snap["resources"]["cpu"]["granted"] == 6000
    assert {n: row["resources"]["cpu"]["free"] for n, row in snap["nodes"].items()} == {
        "n1": 5000,
        "n2": 5000,
    }
    _, decisions = new.submit(_req(policy, cpu=1), 1.0)
    [grant] = grants(decisions)
    assert grant.lease.fencing_token > highest
    assert grant.lease.fencing_token >> EPOCH_SHIFT == 4
    # A retried request of before the restart gets its restored lease, not a new one.
    _, decisions = new.submit(_req(policy, cpu=1, node="n1", key="k0"), 1.0)
    assert [g.lease.lease_id for g in grants(decisions)] == [held[0].lease_id]
    # The holder's token still works after the restart.
    assert new.release(held[0].lease_id, held[0].token, 1.0)[0].lease_id == held[0].lease_id


def test_restore_of_a_lease_on_a_node_that_did_not_come_back_reclaims_it() -> None:
    policy = make_policy()
    old = Scheduler(policy)
    old.node_up("n1", caps(cpu=4), 0.0)
    old.node_up("n2", caps(cpu=4), 0.0)
    _, decisions = old.submit(_req(policy, cpu=1, node="n2"), 0.0)
    lease = grants(decisions)[0].lease
    new = Scheduler(policy, epoch=1)
    new.node_up("n1", caps(cpu=4), 1.0)
    assert new.restore([copy.deepcopy(lease)], 1.0) == [
        Reclaim(lease.lease_id, "n2", ReclaimReason.NODE_LOST)
    ]
    assert new.snapshot(1.0)["leases"] == 0
    check_invariants(new)


def test_restore_onto_a_node_that_came_back_smaller_keeps_the_leases_and_grants_nothing() -> None:
    """Regression: restored leases past a smaller capacity broke invariant 1's check."""
    policy = make_policy()
    old = Scheduler(policy)
    old.node_up("n1", caps(cpu=4), 0.0)
    _, decisions = old.submit(_req(policy, cpu=3), 0.0)
    lease = grants(decisions)[0].lease
    new = Scheduler(policy, epoch=1)
    new.node_up("n1", caps(cpu=2), 1.0)
    assert new.restore([copy.deepcopy(lease)], 1.0) == []
    check_invariants(new)
    row = new.snapshot(1.0)["nodes"]["n1"]["resources"]["cpu"]
    assert (row["granted"], row["free"]) == (3000, -1000)
    request_id, decisions = new.submit(_req(policy, cpu=1), 1.0)
    assert grants(decisions) == []
    decisions = new.release(lease.lease_id, lease.token, 2.0)
    assert [g.request_id for g in grants(decisions)] == [request_id]
    check_invariants(new)


def test_restored_revoking_lease_is_still_reclaimed_at_its_deadline(h: Harness) -> None:
    victim = h.acquire({"cpu": 4}, priority="low", preemptible=True)
    _, decisions = h.submit({"cpu": 4}, priority="high")
    [revoke] = revokes(decisions)
    new = Scheduler(h.policy, epoch=1)
    new.node_up("n1", caps(cpu=4), h.now)
    new.restore([copy.deepcopy(victim.lease)], h.now)
    assert new.tick(revoke.deadline - 0.1) == []
    decisions = new.tick(revoke.deadline)
    assert decisions == [Reclaim(victim.lease.lease_id, "n1", ReclaimReason.REVOKED)]


def _req(policy: Any, cpu: float, node: str | None = None, key: str | None = None) -> Any:
    from anya_resource.core import build_request

    return build_request(policy, {"cpu": cpu}, node=node, idempotency_key=key)


def test_restore_with_fresh_ttl_gives_each_lease_a_full_ttl_from_now() -> None:
    from anya_resource.config import Policy
    from anya_resource.core import Scheduler, build_request

    policy = Policy.model_validate({"reserve": {"memory": 0, "cpu": 0}})
    before = Scheduler(policy, epoch=0)
    before.node_up("n1", {"memory": 1 << 30, "cpu": 2000}, 0.0)
    _, decisions = before.submit(build_request(policy, {"cpu": 1}, ttl=10), 0.0)
    lease = decisions[0].lease  # type: ignore[union-attr]
    after = Scheduler(policy, epoch=1)
    after.node_up("n1", {"memory": 1 << 30, "cpu": 2000}, 50.0)
    # Down for 50 s: without a fresh TTL the lease would expire at the first tick.
    assert after.restore([lease], 50.0, fresh_ttl=True) == []
    assert lease.expires_at == 60.0
    assert after.tick(59.0) == [] and len(after.leases) == 1
    assert [d.reason.value for d in after.tick(60.5)] == ["expired"]  # type: ignore[union-attr]
