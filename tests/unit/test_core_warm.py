"""Warm leases: which held leases the queue wants back (core/warm.py)."""

from __future__ import annotations

from anya_resource.core import Holder
from anya_resource.core.warm import WantedBack, wanted_back
from tests.unit.core_support import Harness, make_policy

HOLDER = Holder(pid=7, create_time=1.0, node_id="n1")


def harness() -> Harness:
    h = Harness(
        make_policy(
            pools={"default": {"size": 4}, "rpc": {"size": 1}},
            tenants={"capped": {"limit": {"cpu": 1}}},
            aging={"per_second": 1.0, "max_boost": 40},
        )
    )
    h.node("n1", cpu=2)
    h.node("n2", cpu=2)
    return h


def test_nothing_waits_nothing_is_wanted() -> None:
    h = harness()
    h.acquire({"cpu": 1}, idempotency_key="warm-a/1")
    assert wanted_back(h.s.state, h.now).wanted == {}


def test_a_lower_lease_is_wanted_by_a_higher_waiter_on_its_node() -> None:
    h = harness()
    low = h.acquire({"cpu": 2}, priority="low", node="n1", idempotency_key="warm-a/1")
    other = h.acquire({"cpu": 2}, priority="low", node="n2", idempotency_key="warm-b/1")
    h.wait({"cpu": 2}, priority="high", node="n1", idempotency_key="waiter/1")
    assert wanted_back(h.s.state, h.now).wanted == {"warm-a": {low.lease.lease_id}}
    assert other.lease.lease_id not in wanted_back(h.s.state, h.now).wanted.get("warm-b", set())


def test_a_higher_lease_keeps_its_capacity_and_equals_give_way_to_the_older_waiter() -> None:
    h = harness()
    h.acquire({"cpu": 2}, priority="critical", node="n1", idempotency_key="warm-a/1")
    equal = h.acquire({"cpu": 2}, priority="normal", node="n2", idempotency_key="warm-b/1")
    h.wait({"cpu": 2}, priority="normal", idempotency_key="waiter/1")
    assert wanted_back(h.s.state, h.now).wanted == {"warm-b": {equal.lease.lease_id}}


def test_aging_lets_a_waiter_outgrow_a_lease_it_did_not_outrank() -> None:
    h = harness()
    held = h.acquire({"cpu": 2}, priority="high", node="n1", idempotency_key="warm-a/1")
    h.acquire({"cpu": 2}, priority="high", node="n2", idempotency_key="warm-b/1")
    h.wait({"cpu": 1}, priority="normal", node="n1", idempotency_key="waiter/1")
    assert wanted_back(h.s.state, h.now).wanted == {}
    h.clock.advance(30)  # normal (50) + 30 s of aging > high (75)
    assert wanted_back(h.s.state, h.now).wanted == {"warm-a": {held.lease.lease_id}}


def test_pool_slots_and_a_tenant_at_its_limit() -> None:
    h = harness()
    slot = h.acquire({"pools": {"rpc": 1}}, holder=HOLDER, idempotency_key="warm-a/1")
    h.wait({"pools": {"rpc": 1}}, holder=HOLDER, idempotency_key="waiter/1")
    assert wanted_back(h.s.state, h.now).wanted == {"warm-a": {slot.lease.lease_id}}
    h2 = harness()
    mine = h2.acquire({"cpu": 1}, tenant="capped", node="n1", idempotency_key="warm-a/1")
    h2.wait({"cpu": 1}, tenant="capped", node="n2", idempotency_key="waiter/1")
    assert wanted_back(h2.s.state, h2.now).wanted == {"warm-a": {mine.lease.lease_id}}


def test_leases_that_would_not_help_are_not_asked_for() -> None:
    h = harness()
    h.acquire({"pools": {"default": 1}}, holder=HOLDER, idempotency_key="warm-a/1")
    h.acquire({"cpu": 2}, node="n1", idempotency_key="warm-b/1")
    h.acquire({"cpu": 2}, node="n2", idempotency_key="warm-c/1")
    h.wait({"cpu": 1}, node="n1", idempotency_key="waiter/1")
    found = wanted_back(h.s.state, h.now)
    assert set(found.wanted) == {"warm-b"}  # not the pool slot, not the lease on n2
    assert found.spare == {}


def test_a_higher_lease_is_spare_only_it_may_stay_busy_but_not_idle() -> None:
    h = harness()
    high = h.acquire({"cpu": 2}, priority="critical", node="n1", idempotency_key="warm-a/1")
    h.acquire({"cpu": 2}, priority="critical", node="n2", idempotency_key="warm-b/1")
    h.wait({"cpu": 2}, priority="low", node="n1", idempotency_key="waiter/1")
    found = wanted_back(h.s.state, h.now)
    assert found.wanted == {}
    assert found.spare == {"warm-a": {high.lease.lease_id}}


def test_a_manager_is_never_asked_for_its_own_leases_of_the_waiters_kind() -> None:
    h = harness()
    h.acquire({"cpu": 2}, priority="low", node="n1", idempotency_key="warm-a/1")
    h.acquire({"cpu": 2}, priority="low", node="n2", idempotency_key="warm-a/2")
    h.wait({"cpu": 2}, priority="low", idempotency_key="warm-a/3")  # its own back-pressure
    assert wanted_back(h.s.state, h.now) == WantedBack()


def test_a_managers_own_low_leases_give_way_to_its_high_waiter() -> None:
    h = harness()
    low = h.acquire({"cpu": 2}, priority="low", node="n1", idempotency_key="warm-a/1")
    h.acquire({"cpu": 2}, priority="critical", node="n2", idempotency_key="warm-a/2")
    h.wait({"cpu": 2}, priority="high", idempotency_key="warm-a/3")
    found = wanted_back(h.s.state, h.now)
    assert found.wanted == {"warm-a": {low.lease.lease_id}}


def test_wanted_says_more_than_spare_for_the_same_lease() -> None:
    h = harness()
    lease = h.acquire({"cpu": 2}, priority="normal", node="n1", idempotency_key="warm-a/1")
    h.acquire({"cpu": 2}, priority="critical", node="n2", idempotency_key="warm-b/1")
    h.wait({"cpu": 2}, priority="low", node="n1", idempotency_key="low/1")
    h.wait({"cpu": 1}, priority="high", node="n1", idempotency_key="high/1")
    found = wanted_back(h.s.state, h.now)
    assert found.wanted == {"warm-a": {lease.lease.lease_id}}
    assert "warm-a" not in found.spare
