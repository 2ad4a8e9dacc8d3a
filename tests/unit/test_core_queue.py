"""The waiting queue: priority with aging, FIFO among equals, the head's reservation,
timeouts, cancellation races and idempotent retries."""

from __future__ import annotations

import pytest

from anya_resource.core import Grant, Reclaim, ReclaimReason, RejectReason, check_invariants
from anya_resource.errors import LeaseExpired
from tests.unit.core_support import (
    GIB,
    Harness,
    grant_for,
    grants,
    make_policy,
    reclaims,
    rejects,
)


def one_node(cpu: float = 4, **policy: object) -> Harness:
    h = Harness(make_policy(**policy))
    h.node("n1", cpu=cpu)
    return h


def granted_ids(decisions: list) -> list[str]:  # type: ignore[type-arg]
    return [g.request_id for g in grants(decisions)]


# -- priority, aging, FIFO -----------------------------------------------------------


def test_higher_priority_is_granted_first_and_fifo_among_equals() -> None:
    h = one_node(aging={"per_second": 0, "max_boost": 0})
    blocker = h.acquire({"cpu": 4})
    low = h.wait({"cpu": 1}, priority="low")
    normal_1 = h.wait({"cpu": 1}, priority="normal")
    high = h.wait({"cpu": 1}, priority="high")
    normal_2 = h.wait({"cpu": 1}, priority="normal")
    decisions = h.release(blocker)
    assert granted_ids(decisions) == [high, normal_1, normal_2, low]
    check_invariants(h.s.state)


def test_aging_lifts_a_long_waiter_above_a_fresh_higher_priority_one() -> None:
    # low = 25, normal = 50: after 30 s of waiting at 1 point/s, low is at 55.
    h = one_node(aging={"per_second": 1.0, "max_boost": 40})
    blocker = h.acquire({"cpu": 4})
    old_low = h.wait({"cpu": 4}, priority="low")
    h.tick(30)
    fresh_normal = h.wait({"cpu": 4}, priority="normal")
    decisions = h.release(blocker)
    assert granted_ids(decisions) == [old_low]
    assert fresh_normal in h.s.queue


def test_aging_is_capped_by_max_boost() -> None:
    # batch = 0 can climb to 40 at most: never past a fresh normal (50).
    h = one_node(aging={"per_second": 1.0, "max_boost": 40})
    blocker = h.acquire({"cpu": 4}, ttl=86400)
    old_batch = h.wait({"cpu": 4}, priority="batch")
    h.tick(10_000)
    fresh_normal = h.wait({"cpu": 4}, priority="normal")
    assert granted_ids(h.release(blocker)) == [fresh_normal]
    assert old_batch in h.s.queue


def test_a_tick_that_changes_the_head_by_aging_moves_the_reservation() -> None:
    # Everyone ages at the same rate, so order changes only when the leader's boost
    # is capped: low (25) waits from t=0, normal (50) from t=30. At t=40 low is capped
    # at 65 while normal (60) still climbs; at t=46 normal (66) passes it.
    h = one_node(aging={"per_second": 1.0, "max_boost": 40})
    h.acquire({"cpu": 4}, ttl=3600)
    old_low = h.wait({"cpu": 3}, priority="low")
    h.tick(30)
    normal = h.wait({"cpu": 2}, priority="normal")  # 50 < 25 + 30: does not outrank
    assert h.s.reservation is not None and h.s.reservation.request_id == old_low
    h.tick(10)
    assert h.s.reservation.request_id == old_low
    h.tick(5)  # 65 == 65: first come stays first
    assert h.s.reservation.request_id == old_low
    h.tick(1)
    assert h.s.reservation is not None and h.s.reservation.request_id == normal
    assert h.snap()["queue"]["head"] == normal


# -- head-of-line reservation and backfill -------------------------------------------


def test_big_request_is_not_starved_by_a_stream_of_small_ones() -> None:
    h = Harness(make_policy(aging={"per_second": 0, "max_boost": 0}))
    h.node("a", cpu=4)
    h.node("b", cpu=4)
    on_a = h.acquire({"cpu": 2}, node="a")
    h.acquire({"cpu": 3}, node="b")
    big = h.wait({"cpu": 4})  # fits soonest on a (2 short) rather than b (3 short)
    assert h.s.reservation is not None and h.s.reservation.node_id == "a"
    assert h.snap()["nodes"]["a"]["resources"]["cpu"]["held_for_head"] == 4000

    # Smaller, later requests backfill where they do not delay the big one (node b) ...
    backfill = h.acquire({"cpu": 1})
    assert backfill.lease.node_id == "b"
    # ... and wait rather than take a's free 2 cores, which the big one is owed.
    smalls = [h.wait({"cpu": 1}) for _ in range(5)]
    for _ in range(3):  # the stream goes on: b's backfill slot churns, a stays untouched
        decisions = h.release(backfill)
        backfill = next(g for g in grants(decisions))
        assert backfill.lease.node_id == "b"
    assert h.snap()["nodes"]["a"]["resources"]["cpu"]["granted"] == 2000

    decisions = h.release(on_a)
    assert granted_ids(decisions)[0] == big
    assert grant_for(decisions, big).lease.node_id == "a"  # type: ignore[union-attr]
    assert all(s in h.s.queue for s in smalls[3:])
    check_invariants(h.s.state)


def test_head_reservation_holds_pool_slots_and_tenant_quota() -> None:
    h = Harness(
        make_policy(
            aging={"per_second": 0, "max_boost": 0},
            pools={"default": {"size": 4}},
            tenants={"t": {"limit": {"cpu": 4}}},
        )
    )
    h.node("n1", cpu=16)
    first = h.acquire({"pools": {"default": 2}})
    big = h.wait({"pools": {"default": 4}})
    # Two slots are free, but the head is owed them: a later one-slot request waits.
    small = h.wait({"pools": {"default": 1}})
    assert h.snap()["pools"]["default"]["held_for_head"] == 4
    decisions = h.release(first)
    assert granted_ids(decisions) == [big]
    assert small in h.s.queue

    t1 = h.acquire({"cpu": 3}, tenant="t")
    t_big = h.wait({"cpu": 4}, tenant="t", priority="high")
    t_small = h.wait({"cpu": 1}, tenant="t")  # within the limit, but the head is owed it
    other = h.acquire({"cpu": 1}, tenant="u")  # other tenants are not held back
    assert other.lease.tenant == "u"
    assert granted_ids(h.release(t1)) == [t_big]
    assert t_small in h.s.queue


def test_when_the_head_is_granted_its_held_node_is_free_to_the_others() -> None:
    """Regression: the grant of the head released its hold on another node, but the
    pass only looked at the node that freed capacity, so a waiter that fits on the
    previously held node went on waiting on free capacity."""
    h = Harness(make_policy(reserve={}, aging={"per_second": 0, "max_boost": 0}))
    h.node("a", cpu=4)
    h.node("b", cpu=4, memory=GIB)
    on_a = h.acquire({"cpu": 4}, node="a", tenant="t1")
    h.acquire({"cpu": 3}, node="b", tenant="t2")
    head = h.wait({"cpu": 2}, priority="high")
    assert h.s.reservation is not None and h.s.reservation.node_id == "b"
    needs_b = h.wait({"cpu": 1, "memory": GIB}, priority="low", tenant="t3")
    decisions = h.release(on_a)
    assert grant_for(decisions, head).lease.node_id == "a"  # type: ignore[union-attr]
    # b's core is no longer held for anyone: the low request gets it now.
    assert grant_for(decisions, needs_b) is not None, decisions
    assert not h.s.queue
    check_invariants(h.s.state)


def test_a_request_that_outranks_the_head_is_not_held_back_by_it() -> None:
    h = Harness(make_policy(aging={"per_second": 0, "max_boost": 0}))
    h.node("a", cpu=4)
    h.acquire({"cpu": 2}, node="a")
    h.wait({"cpu": 4}, priority="low")
    assert h.s.reservation is not None
    urgent = h.acquire({"cpu": 2}, priority="critical")
    assert urgent.lease.node_id == "a"


def test_a_capacity_report_below_a_waiters_size_rejects_it_as_infeasible() -> None:
    """Regression: node_up with a smaller capacity left waiters that can never fit any
    more in the queue (node_down rejected them), and kept the head's hold on a node
    too small for it, which blocked that node for everyone else."""
    h = Harness(make_policy(aging={"per_second": 0, "max_boost": 0}))
    h.node("a", cpu=8)
    h.node("b", cpu=4)
    h.acquire({"cpu": 8}, node="a", ttl=3600)
    h.acquire({"cpu": 4}, node="b", ttl=3600)
    doomed = h.wait({"cpu": 6}, priority="high")
    assert h.s.reservation is not None and h.s.reservation.node_id == "a"
    later = h.wait({"cpu": 2})
    decisions = h.s.node_up("a", {"cpu": 4000}, h.now)  # a now reports 4 cores
    assert [(r.request_id, r.reason) for r in rejects(decisions)] == [
        (doomed, RejectReason.INFEASIBLE)
    ]
    assert h.s.reservation is not None and h.s.reservation.request_id == later
    check_invariants(h.s.state)


def test_a_head_whose_held_node_shrank_is_held_where_it_can_still_fit() -> None:
    h = Harness(make_policy(aging={"per_second": 0, "max_boost": 0}))
    h.node("a", cpu=8)
    h.node("b", cpu=8)
    h.acquire({"cpu": 7}, node="a", ttl=3600)
    on_b = h.acquire({"cpu": 8}, node="b", ttl=3600)
    head = h.wait({"cpu": 6}, priority="high")
    assert h.s.reservation is not None and h.s.reservation.node_id == "a"
    h.s.node_up("a", {"cpu": 5000}, h.now)  # a can never hold 6 cores now
    assert h.s.reservation is not None and h.s.reservation.node_id == "b"
    small = h.wait({"cpu": 1}, priority="low")  # a is overcommitted, b is held
    decisions = h.release(on_b)
    assert [g.request_id for g in grants(decisions)] == [head, small]
    assert grant_for(decisions, head).lease.node_id == "b"  # type: ignore[union-attr]


# -- timeouts and cancellation -------------------------------------------------------


def test_timeout_zero_grants_or_rejects_at_once_and_never_queues() -> None:
    h = one_node()
    assert h.acquire({"cpu": 3}, timeout=0).lease.resources == {"cpu": 3000}
    request_id, decisions = h.submit({"cpu": 2}, timeout=0)
    [reject] = rejects(decisions)
    assert (reject.request_id, reject.reason) == (request_id, RejectReason.TIMEOUT)
    assert request_id not in h.s.queue and not grants(decisions)
    assert h.snap()["queue"]["waiting"] == 0


def test_a_waiter_times_out_at_its_deadline_not_before() -> None:
    h = one_node()
    blocker = h.acquire({"cpu": 4})
    request_id = h.wait({"cpu": 1}, timeout=5)
    assert h.tick(4.9) == []
    decisions = h.tick(0.1)
    assert [(r.request_id, r.reason) for r in rejects(decisions)] == [
        (request_id, RejectReason.TIMEOUT)
    ]
    # The timed-out waiter never gets the capacity that comes back later.
    assert grants(h.release(blocker)) == []
    assert h.snap()["resources"]["cpu"]["granted"] == 0


def test_cancel_of_a_waiter_rejects_it_and_it_is_never_granted() -> None:
    h = one_node()
    blocker = h.acquire({"cpu": 4})
    request_id = h.wait({"cpu": 1})
    decisions = h.s.cancel(request_id, h.now)
    assert [(r.request_id, r.reason) for r in rejects(decisions)] == [
        (request_id, RejectReason.CANCELLED)
    ]
    assert grants(h.release(blocker)) == []
    assert h.s.cancel(request_id, h.now) == []  # a second cancel changes nothing


def test_cancel_that_crosses_its_grant_gives_the_capacity_back() -> None:
    """The semaphore race: the grant is made as the waiter gives up."""
    h = one_node()
    blocker = h.acquire({"cpu": 4})
    racer = h.wait({"cpu": 4})
    next_in_line = h.wait({"cpu": 4})
    grant = grant_for(h.release(blocker), racer)
    assert grant is not None
    decisions = h.s.cancel(racer, h.now)
    assert Reclaim(grant.lease.lease_id, "n1", ReclaimReason.CANCELLED) in decisions
    # Its capacity went straight to the next waiter; the racer holds nothing.
    assert grant_for(decisions, next_in_line) is not None
    assert [lease["lease_id"] for lease in h.s.lease_list()] != [grant.lease.lease_id]
    assert all(lease["lease_id"] != grant.lease.lease_id for lease in h.s.lease_list())
    check_invariants(h.s.state)


def test_cancel_of_an_unknown_request_is_a_no_op() -> None:
    h = one_node()
    before = h.snap()
    assert h.s.cancel("req-9-9", h.now) == []
    assert h.snap() == before


# -- idempotency -----------------------------------------------------------------------


def test_a_retried_submit_never_yields_a_second_grant() -> None:
    h = one_node()
    request = h.request({"cpu": 1}, idempotency_key="k1")
    request_id, decisions = h.s.submit(request, h.now)
    [grant] = grants(decisions)
    again_id, again = h.s.submit(request, h.now + 1)
    assert again_id == request_id
    assert [type(d) for d in again] == [Grant]
    assert again[0].lease is grant.lease  # type: ignore[union-attr]
    assert h.snap()["resources"]["cpu"]["granted"] == 1000
    assert len(h.s.leases) == 1
    h.release(grant)
    with pytest.raises(LeaseExpired, match="k1"):
        h.s.submit(request, h.now)
    assert len(h.s.leases) == 0


def test_a_retry_while_waiting_returns_the_same_waiter() -> None:
    h = one_node()
    blocker = h.acquire({"cpu": 4})
    request = h.request({"cpu": 2}, idempotency_key="k2")
    request_id, _ = h.s.submit(request, h.now)
    assert h.s.submit(request, h.now) == (request_id, [])
    assert len(h.s.queue) == 1
    decisions = h.release(blocker)
    assert granted_ids(decisions) == [request_id]
    assert h.snap()["resources"]["cpu"]["granted"] == 2000


def test_a_retry_of_a_rejected_request_is_rejected_again_not_granted() -> None:
    h = one_node()
    blocker = h.acquire({"cpu": 4})
    request = h.request({"cpu": 2}, idempotency_key="k3", timeout=1)
    h.s.submit(request, h.now)
    h.tick(1)
    h.release(blocker)
    _, decisions = h.s.submit(request, h.now)
    assert [r.reason for r in rejects(decisions)] == [RejectReason.TIMEOUT]
    assert not grants(decisions) and not h.s.leases


# -- holders and jobs ------------------------------------------------------------------


def test_holder_death_and_job_end_reclaim_what_they_held_and_drop_their_waiters() -> None:
    from anya_resource.core import Holder

    h = one_node(cpu=8)
    worker = Holder(pid=7, create_time=1.0, node_id="n1", job_id="j1")
    other = Holder(pid=8, create_time=1.0, node_id="n1", job_id="j1")
    died = h.acquire({"cpu": 2}, holder=worker)
    detached = h.acquire({"cpu": 2}, holder=other, detached=True)
    attached = h.acquire({"cpu": 2}, holder=other)
    h.acquire({"cpu": 2})
    waiting = h.wait({"cpu": 4}, holder=worker)
    decisions = h.s.holder_died(worker.key or "", h.now)
    assert {(r.lease_id, r.reason) for r in reclaims(decisions)} == {
        (died.lease.lease_id, ReclaimReason.HOLDER_DIED)
    }
    assert [(r.request_id, r.reason) for r in rejects(decisions)] == [
        (waiting, RejectReason.HOLDER_DIED)
    ]
    decisions = h.s.job_ended("j1", h.now)
    assert {r.lease_id for r in reclaims(decisions)} == {attached.lease.lease_id}
    assert {lease["lease_id"] for lease in h.s.lease_list()} >= {detached.lease.lease_id}
    check_invariants(h.s.state)
