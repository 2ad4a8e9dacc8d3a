"""Leases: tokens, release, renewal, expiry, fencing tokens and recovery after a restart."""

from __future__ import annotations

import math
from typing import Any

import pytest

from anya_resource.core import (
    Holder,
    Reclaim,
    ReclaimReason,
    RejectReason,
    build_request,
    check_invariants,
)
from anya_resource.core.leases import EPOCH_SHIFT
from anya_resource.errors import InvalidRequest, LeaseExpired, LeaseRevoked, NotLeaseHolder
from tests.unit.core_support import (
    Durable,
    Harness,
    Store,
    caps,
    grants,
    make_policy,
    reclaims,
    rejects,
    revokes,
)


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


def test_release_of_a_lease_this_cluster_never_issued_is_refused(h: Harness) -> None:
    before = state(h)
    with pytest.raises(NotLeaseHolder, match="lease-999"):
        h.s.release("lease-999", "x", h.now)
    with pytest.raises(InvalidRequest, match="lease_id"):
        h.s.release(None, "x", h.now)  # type: ignore[arg-type]
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
    check_invariants(h.s.state)


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


def _restarted(policy: Any, store: Store, nodes: dict[str, Any], now: float, epoch: int) -> Durable:
    return Durable(policy, store, nodes, now, epoch=epoch)


def test_restore_after_a_restart_counts_each_lease_once_and_fences_above_them() -> None:
    policy = make_policy()
    store = Store()
    nodes = {"n1": caps(cpu=8), "n2": caps(cpu=8)}
    old = Durable(policy, store, nodes, 0.0, epoch=3)
    held = []
    for i in range(6):
        _, decisions = old.s.submit(_req(policy, cpu=1, node=f"n{1 + i % 2}", key=f"k{i}"), 0.0)
        held.extend(g.lease for g in grants(decisions))
    old.commit()
    highest = max(lease.fencing_token for lease in held)

    new = _restarted(policy, store, nodes, 1.0, epoch=4)
    assert new.decisions == []
    check_invariants(new.s.state)
    snap = new.s.snapshot(1.0)
    assert snap["resources"]["cpu"]["granted"] == 6000
    assert {n: row["resources"]["cpu"]["free"] for n, row in snap["nodes"].items()} == {
        "n1": 5000,
        "n2": 5000,
    }
    # Restored from the journal, not from anybody's word: unconfirmed until claimed.
    assert new.s.leases.unconfirmed == {lease.lease_id for lease in held}
    _, decisions = new.s.submit(_req(policy, cpu=1), 1.0)
    [grant] = grants(decisions)
    assert grant.lease.fencing_token > highest
    assert grant.lease.fencing_token >> EPOCH_SHIFT == 4
    # A retried request of before the restart gets its restored lease, not a new one.
    _, decisions = new.s.submit(_req(policy, cpu=1, node="n1", key="k0"), 1.0)
    assert [g.lease.lease_id for g in grants(decisions)] == [held[0].lease_id]
    assert held[0].lease_id not in new.s.leases.unconfirmed  # its caller has it now
    # The holder's token still works after the restart: it is a MAC of the id.
    new.s.confirm(held[1].lease_id, held[1].token, 1.0)
    assert held[1].lease_id not in new.s.leases.unconfirmed
    assert new.s.release(held[0].lease_id, held[0].token, 1.0)[0].lease_id == held[0].lease_id


def test_a_release_that_was_committed_stays_released_after_any_number_of_restarts() -> None:
    policy = make_policy()
    store = Store()
    nodes = {"n1": caps(cpu=2)}
    first = Durable(policy, store, nodes, 0.0)
    _, decisions = first.s.submit(_req(policy, cpu=1), 0.0)
    [lease] = [g.lease for g in grants(decisions)]
    first.commit()
    first.s.release(lease.lease_id, lease.token, 0.5)
    first.commit()  # confirmed to the caller only now
    for epoch in range(1, 6):
        again = _restarted(policy, store, nodes, float(epoch), epoch)
        assert len(again.s.leases) == 0
        # Its holder may send the release again: a no-op, its token is still genuine.
        assert again.s.release(lease.lease_id, lease.token, float(epoch)) == []
        with pytest.raises(NotLeaseHolder):
            again.s.release(lease.lease_id, "0" * 48, float(epoch))
        with pytest.raises(LeaseExpired):
            again.s.renew(lease.lease_id, lease.token, float(epoch))


def test_a_grant_not_yet_committed_is_not_restored_and_nobody_was_told_of_it() -> None:
    policy = make_policy()
    store = Store()
    nodes = {"n1": caps(cpu=2)}
    old = Durable(policy, store, nodes, 0.0)
    _, decisions = old.s.submit(_req(policy, cpu=1, key="k"), 0.0)
    [lease] = [g.lease for g in grants(decisions)]
    old.commits.stage(old.s.take_journal())
    assert old.commits.barrier() > old.commits.committed  # the reply waits for this
    new = _restarted(policy, store, nodes, 1.0, 1)  # the crash came first
    assert len(new.s.leases) == 0
    # The caller retries with its key and is granted once, in the new epoch.
    _, decisions = new.s.submit(_req(policy, cpu=1, key="k"), 1.0)
    [again] = grants(decisions)
    assert again.lease.lease_id != lease.lease_id
    assert again.lease.fencing_token > lease.fencing_token


def test_a_cancel_before_its_request_survives_a_restart() -> None:
    policy = make_policy()
    store = Store()
    nodes = {"n1": caps(cpu=2)}
    old = Durable(policy, store, nodes, 0.0)
    assert old.s.cancel_key("late", 0.0) == []
    old.commit()
    new = _restarted(policy, store, nodes, 1.0, 1)
    # Ray delivers a call made while the actor restarted to the new one: refused there.
    _, decisions = new.s.submit(_req(policy, cpu=1, key="late"), 1.0)
    assert [d.reason for d in rejects(decisions)] == [RejectReason.CANCELLED]
    assert len(new.s.leases) == 0


def test_restore_of_a_lease_on_a_node_that_did_not_come_back_reclaims_it() -> None:
    policy = make_policy()
    store = Store()
    old = Durable(policy, store, {"n1": caps(cpu=4), "n2": caps(cpu=4)}, 0.0)
    holder = Holder(pid=7, create_time=1.0, node_id="n1")
    request = build_request(policy, {"cpu": 1}, node="n2", holder=holder)
    _, decisions = old.s.submit(request, 0.0)
    lease = grants(decisions)[0].lease
    old.commit()
    new = _restarted(policy, store, {"n1": caps(cpu=4)}, 1.0, 1)
    assert new.decisions == [Reclaim(lease.lease_id, "n2", ReclaimReason.NODE_LOST, holder.key)]
    assert new.s.snapshot(1.0)["leases"] == 0
    check_invariants(new.s.state)
    # ... and stays reclaimed: the next restart does not bring it back.
    assert (
        len(_restarted(policy, store, {"n1": caps(cpu=4), "n2": caps(cpu=4)}, 2.0, 2).s.leases) == 0
    )


def test_restore_onto_a_node_that_came_back_smaller_keeps_the_leases_and_grants_nothing() -> None:
    """Regression: restored leases past a smaller capacity broke invariant 1's check."""
    policy = make_policy()
    store = Store()
    old = Durable(policy, store, {"n1": caps(cpu=4)}, 0.0)
    _, decisions = old.s.submit(_req(policy, cpu=3), 0.0)
    lease = grants(decisions)[0].lease
    old.commit()
    new = _restarted(policy, store, {"n1": caps(cpu=2)}, 1.0, 1)
    check_invariants(new.s.state)
    row = new.s.snapshot(1.0)["nodes"]["n1"]["resources"]["cpu"]
    assert (row["granted"], row["free"]) == (3000, -1000)
    request_id, decisions = new.s.submit(_req(policy, cpu=1), 1.0)
    assert grants(decisions) == []
    decisions = new.s.release(lease.lease_id, lease.token, 2.0)
    assert [g.request_id for g in grants(decisions)] == [request_id]
    check_invariants(new.s.state)


def test_restored_revoking_lease_is_still_reclaimed_at_its_deadline(h: Harness) -> None:
    """A snapshot keeps a revocation in progress, and its deadline."""
    store = Store()
    durable = Durable(h.policy, store, {"n1": caps(cpu=4)}, h.now)
    victim_request = build_request(h.policy, {"cpu": 4}, priority="low", preemptible=True)
    _, decisions = durable.s.submit(victim_request, h.now)
    [victim] = grants(decisions)
    _, decisions = durable.s.submit(build_request(h.policy, {"cpu": 4}, priority="high"), h.now)
    [revoke] = revokes(decisions)
    durable.commits.stage(durable.s.take_journal())
    durable.write(durable.commits.start())  # a snapshot of the live state, as compaction writes
    new = _restarted(h.policy, store, {"n1": caps(cpu=4)}, h.now, 1)
    assert new.s.tick(revoke.deadline - 0.1) == []
    decisions = new.s.tick(revoke.deadline)
    assert decisions == [Reclaim(victim.lease.lease_id, "n1", ReclaimReason.REVOKED)]


def _req(policy: Any, cpu: float, node: str | None = None, key: str | None = None) -> Any:
    return build_request(policy, {"cpu": cpu}, node=node, idempotency_key=key)


def test_restore_gives_each_lease_a_full_ttl_from_now() -> None:
    policy = make_policy()
    store = Store()
    nodes = {"n1": caps(cpu=2)}
    before = Durable(policy, store, nodes, 0.0)
    before.s.submit(build_request(policy, {"cpu": 1}, ttl=10), 0.0)
    before.commit()
    after = _restarted(policy, store, nodes, 50.0, 1)
    # Down for 50 s: without a fresh TTL the lease would expire at the first tick.
    [lease] = list(after.s.leases)
    assert lease.expires_at == 60.0
    assert after.s.tick(59.0) == [] and len(after.s.leases) == 1
    assert [d.reason.value for d in after.s.tick(60.5)] == ["expired"]  # type: ignore[union-attr]
