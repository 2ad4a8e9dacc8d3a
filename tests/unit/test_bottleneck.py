"""Bottleneck findings: what holds work back, the waits behind it, one recommendation each.

Also the two tenant-limit defects: demand its own tenant's hard limit blocks was reported
as a resource or pool bottleneck, and a head blocked only by its tenant's limit held node
capacity back from the other tenants (and preempted them, for nothing).
"""

from __future__ import annotations

from typing import Any

import pytest

from anya_resource.core import NodeSample, check_invariants
from anya_resource.core.bottleneck import binding
from tests.unit.core_support import GIB, Harness, grant_for, granted, make_policy, revokes

NO_AGING = {"per_second": 0, "max_boost": 0}


def kinds(findings: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(f["kind"], f["name"]) for f in findings]


# -- the plain-language report ---------------------------------------------------------


def test_pool_finding_reads_as_one_line_with_its_p95_and_recommendation() -> None:
    h = Harness(
        make_policy(pools={"default": {"size": 4}, "postgres": {"size": 20}}, aging=NO_AGING)
    )
    h.node("a", cpu=8)
    h.acquire({"pools": {"postgres": 20}})
    for _ in range(34):
        h.wait({"pools": {"postgres": 1}})
    h.clock.advance(2.1)
    h.wait({"pools": {"postgres": 1}})  # 34 waited 2.1 s, one just came: p95 is 2.1 s
    top = binding(h.snap()["bottlenecks"])
    assert top is not None and (top["kind"], top["name"]) == ("pool", "postgres")
    assert top["text"] == (
        "postgres pool: 20/20 in use, 35 waiting, p95 wait 2.1 s: "
        "raise the pool size or lower concurrency"
    )
    figures = top["figures"]
    assert figures["requests"] == 35
    assert figures["oldest_wait_s"] == figures["p50_wait_s"] == pytest.approx(2.1)


def test_every_finding_has_figures_a_message_and_one_recommendation() -> None:
    h = Harness(
        make_policy(
            pools={"default": {"size": 4}, "rpc": {"size": 1}},
            tenants={"tx": {"limit": {"cpu": 1}}},
            aging=NO_AGING,
        )
    )
    h.node("a", cpu=4, memory=4 * GIB)
    h.acquire({"cpu": 4})
    h.wait({"cpu": 1})
    h.acquire({"pools": {"rpc": 1}})
    h.wait({"pools": {"rpc": 1}})
    findings = h.snap()["bottlenecks"]
    assert {f["kind"] for f in findings} == {"resource", "pool", "node"}
    for finding in findings:
        assert finding["message"] and finding["recommendation"] and finding["figures"]
        assert finding["text"] == f"{finding['message']}: {finding['recommendation']}"


def test_requests_short_of_cpu_do_not_make_idle_memory_a_bottleneck() -> None:
    """Every waiter asks for cpu and memory; only cpu is short. Counting all waiting
    demand made memory a finding too (waiting against plenty of free memory)."""
    h = Harness(make_policy(aging=NO_AGING))
    h.node("a", cpu=4, memory=16 * GIB)
    h.node("b", cpu=4, memory=16 * GIB)
    h.acquire({"cpu": 4}, node="a")
    h.acquire({"cpu": 4}, node="b")
    for _ in range(3):
        h.wait({"cpu": 1, "memory": "1GiB"})
    snap = h.snap()
    assert [(f["kind"], f["name"]) for f in snap["bottlenecks"] if f["kind"] != "node"] == [
        ("resource", "cpu")
    ]
    memory = snap["demand"]["resources"]["memory"]
    assert (memory["on_capacity"], memory["behind_other"]) == (0, 3 * GIB)
    # Enough cpu on each node but not both at once on one: it waits for all it asks.
    h2 = Harness(make_policy(aging=NO_AGING))
    h2.node("a", cpu=4, memory=8 * GIB)
    h2.node("b", cpu=4, memory=8 * GIB)
    h2.acquire({"cpu": 3}, node="a")  # a: 1 core and 8 GiB free
    h2.acquire({"memory": "6GiB"}, node="b")  # b: 4 cores and 2 GiB free
    h2.wait({"cpu": 2, "memory": "4GiB"})
    fragmented = h2.snap()["demand"]["resources"]
    assert fragmented["cpu"]["on_capacity"] == 2000
    assert fragmented["memory"]["on_capacity"] == 4 * GIB


def test_resource_finding_counts_pressured_nodes_and_node_finding_gives_the_reading() -> None:
    h = Harness(make_policy(pressure={"memory_high": 85, "memory_low": 75}, aging=NO_AGING))
    h.node("a", cpu=4, memory=4 * GIB)
    h.node("b", cpu=4, memory=4 * GIB)
    h.acquire({"memory": "3GiB"}, node="a")
    h.acquire({"memory": "4GiB"}, node="b")
    h.s.health("a", NodeSample(memory_percent=91.4, cpu_percent=5.0), h.now)
    h.wait({"memory": "1GiB"})
    findings = h.snap()["bottlenecks"]
    top = binding(findings)
    assert top is not None and top["name"] == "memory"
    assert "1 node(s) under measured memory pressure" in top["message"]
    assert top["figures"]["pressured_nodes"] == ["a"]
    assert "pressure" in top["recommendation"]
    node_a = next(f for f in findings if (f["kind"], f["name"]) == ("node", "a"))
    assert "memory under measured pressure (91% in use)" in node_a["message"]
    # A pressured resource is not reported hot as well (its grantable is what it holds).
    assert node_a["figures"]["hot"] == []
    assert "below the policy's low mark" in node_a["recommendation"]


def test_a_node_busy_by_measurement_is_hot_without_a_cpu_threshold() -> None:
    h = Harness(make_policy())
    h.node("a", cpu=4)
    h.s.health("a", NodeSample(memory_percent=10.0, cpu_percent=96.0), h.now)
    (finding,) = h.snap()["bottlenecks"]
    assert (finding["kind"], finding["figures"]["busy"]) == ("node", ["cpu"])
    assert "cpu 96% in use (measured)" in finding["message"]


def test_snapshot_nodes_carry_the_measured_use() -> None:
    h = Harness(make_policy())
    h.node("a", cpu=4)
    assert h.snap()["nodes"]["a"]["memory_percent"] is None
    h.s.health("a", NodeSample(memory_percent=42.5, cpu_percent=7.0), h.now)
    node = h.snap()["nodes"]["a"]
    assert (node["memory_percent"], node["cpu_percent"]) == (42.5, 7.0)


# -- demand blocked by its own tenant's hard limit ----------------------------------------


def tenant_harness() -> Harness:
    h = Harness(
        make_policy(
            pools={"default": {"size": 4}, "rpc": {"size": 10}},
            tenants={"tx": {"limit": {"cpu": 2, "rpc": 2}}},
            aging=NO_AGING,
        )
    )
    h.node("a", cpu=16, memory=8 * GIB)
    return h


def test_demand_of_a_tenant_at_its_hard_limit_is_not_a_resource_or_pool_bottleneck() -> None:
    """Regression: resource and pool findings always sorted first, and counted all waiting
    demand, so a tenant at its limit was reported as a cpu (and rpc pool) bottleneck on
    a cluster with plenty of both free."""
    h = tenant_harness()
    h.acquire({"cpu": 2, "pools": {"rpc": 2}}, tenant="tx")
    for _ in range(5):
        h.wait({"cpu": 1, "pools": {"rpc": 1}}, tenant="tx")
    h.clock.advance(3)
    snap = h.snap()
    findings = snap["bottlenecks"]
    assert kinds(findings) == [("tenant", "tx"), ("tenant", "tx")]
    top = binding(findings)
    assert top is not None and top["kind"] == "tenant"
    assert {f["figures"]["resource"] for f in findings} == {"cpu", "rpc"}
    cpu = next(f for f in findings if f["figures"]["resource"] == "cpu")
    assert cpu["message"] == (
        "tenant tx: 2 in use, at its hard limit of 2 cpu with 5 more waiting, p95 wait 3.0 s"
    )
    assert cpu["recommendation"] == "raise tenants.tx.limit.cpu, or spread its work over time"
    demand = snap["demand"]
    assert demand["resources"]["cpu"]["on_capacity"] == 0
    assert demand["resources"]["cpu"]["at_tenant_limit"] == 5000
    assert demand["pools"]["rpc"]["at_tenant_limit"] == 5
    assert demand["tenants"]["tx"]["blocked_on"] == ["cpu", "rpc"]
    # The totals still show all the waiting demand.
    assert snap["resources"]["cpu"]["waiting"] == 5000 and snap["pools"]["rpc"]["waiting"] == 5


def test_only_the_demand_waiting_on_capacity_makes_a_resource_finding() -> None:
    h = tenant_harness()
    h.acquire({"cpu": 1}, tenant="tx")
    h.acquire({"cpu": 15}, tenant="ml")  # the node is full
    h.wait({"cpu": 2}, tenant="tx")  # its tenant's limit blocks it (1 + 2 > 2)
    h.wait({"cpu": 1}, tenant="ml")  # capacity blocks it
    findings = h.snap()["bottlenecks"]
    resource = next(f for f in findings if f["kind"] == "resource")
    assert resource["name"] == "cpu"
    assert (resource["figures"]["on_capacity"], resource["figures"]["at_tenant_limit"]) == (
        1000,
        2000,
    )
    assert "cpu: 16 of 16 granted, 1 waiting in 1 requests" in resource["message"]
    assert ("tenant", "tx") in kinds(findings)


def test_a_request_behind_its_own_tenants_head_counts_as_held_by_the_limit() -> None:
    """As ``place`` sees it: the head's tenant quota is held for it, so a smaller request
    of the same tenant, though within the limit alone, waits on the limit too."""
    h = Harness(make_policy(tenants={"t": {"limit": {"cpu": 4}}}, aging=NO_AGING))
    h.node("a", cpu=16)
    h.acquire({"cpu": 3}, tenant="t")
    h.wait({"cpu": 4}, tenant="t", priority="high")
    h.wait({"cpu": 1}, tenant="t")
    demand = h.snap()["demand"]
    assert demand["tenants"]["t"]["requests"] == 2
    assert "cpu" not in demand["resources"] or demand["resources"]["cpu"]["on_capacity"] == 0


# -- a head blocked only by its tenant's limit holds nothing back from other tenants ------


def test_a_tenant_limited_head_does_not_hold_node_capacity_from_other_tenants() -> None:
    h = Harness(make_policy(tenants={"t": {"limit": {"cpu": 2}}}, aging=NO_AGING))
    h.node("a", cpu=4)
    mine = h.acquire({"cpu": 2}, tenant="t")
    head = h.wait({"cpu": 2}, tenant="t", priority="high")
    reservation = h.s.reservation
    assert reservation is not None and reservation.tenant_limited
    assert reservation.nodes == {} and reservation.pools == {}
    # Before the fix the head held a's last 2 cores: this waited on idle capacity.
    other = h.acquire({"cpu": 2}, tenant="u", priority="low")
    assert other.lease.node_id == "a"
    check_invariants(h.s.state)
    h.release(other)
    decisions = h.release(mine)
    assert grant_for(decisions, head) is not None
    check_invariants(h.s.state)


def test_a_tenant_limited_head_preempts_nobody() -> None:
    h = Harness(
        make_policy(
            tenants={"t": {"limit": {"cpu": 2}}},
            aging=NO_AGING,
            lease={"preemption_grace_s": 1},
        )
    )
    h.node("a", cpu=4)
    h.acquire({"cpu": 2}, tenant="t")
    h.acquire({"cpu": 2}, tenant="u", priority="batch", preemptible=True)
    _, decisions = h.submit({"cpu": 2}, tenant="t", priority="critical")
    # Revoking u's lease could not let t's request run: t is at its limit.
    assert revokes(decisions) == []
    assert revokes(h.tick(1)) == []


def test_once_its_tenant_frees_quota_the_head_holds_capacity_again() -> None:
    """Else smaller requests would backfill the node forever and starve it."""
    h = Harness(make_policy(tenants={"t": {"limit": {"cpu": 2}}}, aging=NO_AGING))
    h.node("a", cpu=4)
    mine = h.acquire({"cpu": 1}, tenant="t")
    big = h.acquire({"cpu": 3}, tenant="u")
    head = h.wait({"cpu": 2}, tenant="t", priority="high")  # limit (1 + 2 > 2) and capacity
    small = h.wait({"cpu": 1}, tenant="u", priority="low")  # capacity: the node is full
    assert h.s.reservation is not None and h.s.reservation.tenant_limited
    decisions = h.release(mine)  # t is within its limit again, but a has only 1 core free
    assert grant_for(decisions, head) is None
    reservation = h.s.reservation
    assert reservation is not None and reservation.request_id == head
    assert not reservation.tenant_limited and reservation.nodes == {"a": {"cpu": 2000}}
    # The freed core is held for the head: the small request does not take it.
    assert grant_for(decisions, small) is None and small in h.s.queue
    assert granted(h.snap(), "a", "cpu") == 3000
    decisions = h.release(big)
    assert grant_for(decisions, head) is not None and grant_for(decisions, small) is not None
    check_invariants(h.s.state)
