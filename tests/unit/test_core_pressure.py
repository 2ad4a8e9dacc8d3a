"""Adaptive allocation: measured pressure shrinks what a node grants, with hysteresis,
and takes back preemptible leases one at a time."""

from __future__ import annotations

from anya_resource.core import NodeSample, Reclaim, ReclaimReason, check_invariants
from tests.unit.core_support import GIB, Harness, grant_for, grants, make_policy, revokes

GRACE = 3.0


def harness() -> Harness:
    h = Harness(
        make_policy(
            pressure={"memory_high": 85, "memory_low": 75, "cpu_high": 90, "cpu_low": 60},
            lease={"preemption_grace_s": GRACE},
        )
    )
    h.node("n1", cpu=8, memory=16 * GIB)
    return h


def sample(h: Harness, memory: float, cpu: float = 10.0) -> list:  # type: ignore[type-arg]
    return h.s.health("n1", NodeSample(memory_percent=memory, cpu_percent=cpu), h.now)


def pressured(h: Harness) -> list[str]:
    value: list[str] = h.snap()["nodes"]["n1"]["pressured"]
    return value


def test_hysteresis_no_flapping_between_the_thresholds() -> None:
    h = harness()
    states = []
    for memory in [50, 84.9, 85, 80, 76, 75.1, 84, 75, 80, 84.9, 90]:
        sample(h, memory)
        states.append("memory" in pressured(h))
    assert states == [
        False,  # 50
        False,  # 84.9: below high
        True,  # 85: at high
        True,  # 80: between - stays
        True,  # 76
        True,  # 75.1
        True,  # 84
        False,  # 75: at low
        False,  # 80: between - stays
        False,  # 84.9
        True,  # 90
    ]


def test_pressure_stops_new_grants_of_that_resource_only() -> None:
    h = harness()
    h.acquire({"memory": "4GiB"})
    sample(h, 90)
    row = h.snap()["nodes"]["n1"]["resources"]["memory"]
    assert (row["grantable"], row["granted"], row["free"]) == (4 * GIB, 4 * GIB, 0)
    waiting = h.wait({"memory": "1GiB"})
    assert h.acquire({"cpu": 2}).lease.resources == {"cpu": 2000}  # cpu is not pressured
    decisions = sample(h, 70)  # back below low: the waiter is granted at once
    assert grant_for(decisions, waiting) is not None
    check_invariants(h.s.state)


def test_pressure_revokes_one_preemptible_lease_at_a_time_lowest_priority_newest() -> None:
    h = harness()
    keep = h.acquire({"memory": "2GiB"}, priority="batch")  # not preemptible: never taken
    old_low = h.acquire({"memory": "2GiB"}, priority="low", preemptible=True)
    h.clock.advance(1)
    new_low = h.acquire({"memory": "2GiB"}, priority="low", preemptible=True)
    high = h.acquire({"memory": "2GiB"}, priority="high", preemptible=True)
    cpu_only = h.acquire({"cpu": 1}, priority="batch", preemptible=True)

    decisions = sample(h, 95)
    assert [r.lease_id for r in revokes(decisions)] == [new_low.lease.lease_id]
    assert "memory pressure" in revokes(decisions)[0].reason
    for _ in range(3):  # still under pressure, but the last revocation is still running
        assert revokes(sample(h, 95)) == []
    decisions = h.tick(GRACE)
    assert decisions == [Reclaim(new_low.lease.lease_id, "n1", ReclaimReason.REVOKED)]
    assert [r.lease_id for r in revokes(sample(h, 95))] == [old_low.lease.lease_id]
    h.tick(GRACE)
    assert [r.lease_id for r in revokes(sample(h, 95))] == [high.lease.lease_id]
    h.tick(GRACE)
    assert revokes(sample(h, 95)) == []  # only the non-preemptible lease holds memory now
    held = {lease["lease_id"] for lease in h.s.lease_list()}
    assert held == {keep.lease.lease_id, cpu_only.lease.lease_id}


def test_no_revocation_once_pressure_is_gone() -> None:
    h = harness()
    h.acquire({"memory": "2GiB"}, priority="low", preemptible=True)
    sample(h, 90)
    assert revokes(sample(h, 74)) == []
    h.tick(GRACE)
    assert revokes(sample(h, 80)) == []  # between the thresholds after release: no pressure


def test_cpu_pressure_uses_its_own_thresholds() -> None:
    h = harness()
    h.acquire({"cpu": 2})
    sample(h, 10, cpu=95)
    assert pressured(h) == ["cpu"]
    waiting = h.wait({"cpu": 1})
    assert grants(sample(h, 10, cpu=70)) == []  # 70 is between 60 and 90
    assert grant_for(sample(h, 10, cpu=60), waiting) is not None
    assert pressured(h) == []


def test_health_of_an_unknown_node_is_ignored() -> None:
    h = harness()
    before = h.snap()
    assert h.s.health("zz", NodeSample(99.0, 99.0), h.now) == []
    assert h.snap() == before


def test_busy_nodes_get_a_lower_health_factor() -> None:
    h = harness()
    sample(h, 20, cpu=20)
    calm = h.snap()["nodes"]["n1"]["health_factor"]
    sample(h, 80, cpu=85)
    busy = h.snap()["nodes"]["n1"]["health_factor"]
    assert 0 < busy < calm <= 1
