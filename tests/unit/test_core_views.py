"""Read-only views: what_if dry runs, the snapshot and its totals, bottleneck findings."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from anya_resource.core import check_invariants
from anya_resource.core.bottleneck import binding
from anya_resource.errors import InvalidRequest
from tests.unit.core_support import GIB, Harness, grants, make_policy, revokes


def state(h: Harness) -> tuple[Any, Any]:
    return h.snap(), h.s.lease_list()


def three_nodes(**policy: Any) -> Harness:
    policy.setdefault("aging", {"per_second": 0, "max_boost": 0})
    h = Harness(make_policy(**policy))
    h.node("a", cpu=4, memory=8 * GIB)
    h.node("b", cpu=4, memory=8 * GIB)
    h.node("c", cpu=8, memory=4 * GIB)
    return h


# -- what_if -------------------------------------------------------------------------------


@pytest.mark.parametrize("placement", ["spread", "pack"])
def test_what_if_changes_nothing_and_agrees_with_what_submit_then_does(placement: str) -> None:
    h = three_nodes(placement=placement)
    h.acquire({"cpu": 3}, node="a")
    h.acquire({"cpu": 1}, node="c")
    before = state(h)
    plan = h.s.what_if(h.request({"cpu": 2}), 6, h.now)
    assert state(h) == before
    check_invariants(h.s.state)
    # a: 1 free, b: 4 free (2 grants), c: 7 free (3 grants) -> 5 of 6 now.
    assert (plan.granted_now, plan.granted_after_preemption, plan.would_wait) == (5, 0, 1)
    assert sum(plan.nodes.values()) == 5 and "a" not in plan.nodes
    assert plan.blocked_by and plan.infeasible is None
    placed = Counter()
    for _ in range(6):
        _request_id, decisions = h.submit({"cpu": 2})
        for grant in grants(decisions):
            placed[grant.lease.node_id] += 1
    assert dict(placed) == plan.nodes  # same count, same nodes
    assert len(h.s.queue) == 1


def test_what_if_with_preemption_names_the_victims_and_changes_nothing() -> None:
    """Regression: after lifting a victim, the placer's stale free bound said "no room",
    so what_if reported a victim but no grant."""
    h = three_nodes(lease={"preemption_grace_s": 2})
    for node in ("a", "b", "c"):
        h.acquire({"cpu": 4 if node != "c" else 8}, node=node, priority="high")
    h.s.node_up("d", {"cpu": 4000}, h.now)
    victim = h.acquire({"cpu": 4}, node="d", priority="batch", preemptible=True)
    _, decisions = h.submit({"cpu": 1}, timeout=0)  # a full scan finds no room anywhere
    assert grants(decisions) == []
    before = state(h)
    plan = h.s.what_if(h.request({"cpu": 4}, priority="critical"), 2, h.now)
    assert state(h) == before
    assert (plan.granted_now, plan.granted_after_preemption, plan.would_wait) == (0, 1, 1)
    assert [p["lease_id"] for p in plan.preempted] == [victim.lease.lease_id]
    assert plan.nodes == {"d": 1}
    _, decisions = h.submit({"cpu": 4}, priority="critical")
    assert [r.lease_id for r in revokes(decisions)] == [victim.lease.lease_id]


def test_what_if_on_a_shrunk_node_leaves_its_overcommit_marked() -> None:
    """Regression: the dry run's undo of a lifted victim lost the shrink mark."""
    h = Harness(make_policy())
    h.node("a", cpu=4)
    h.acquire({"cpu": 2}, priority="low", preemptible=True)
    h.acquire({"cpu": 2}, priority="low", preemptible=True)
    h.node("a", cpu=3)  # capacity report below what is granted
    check_invariants(h.s.state)
    before = state(h)
    plan = h.s.what_if(h.request({"cpu": 1}, priority="high"), 1, h.now)
    assert plan.granted_after_preemption == 1
    assert state(h) == before
    check_invariants(h.s.state)


def test_what_if_of_an_infeasible_request() -> None:
    h = three_nodes()
    before = state(h)
    plan = h.s.what_if(h.request({"cpu": 9}), 3, h.now)
    assert plan.infeasible is not None and "larger than any node" in plan.infeasible
    assert "a request of 9 CPUs" in plan.infeasible  # the units people use, not 9000
    # It says one thing: none could ever be granted, so none would wait either.
    counts = (plan.granted_now, plan.granted_after_preemption, plan.would_wait)
    assert counts == (0, 0, 0)
    assert state(h) == before


def test_what_if_respects_the_head_reservation_like_submit() -> None:
    h = three_nodes(pools={"default": {"size": 4}})
    h.acquire({"pools": {"default": 3}})
    h.wait({"pools": {"default": 2}})  # head: holds the pool for itself
    plan = h.s.what_if(h.request({"pools": {"default": 1}}), 1, h.now)
    assert plan.granted_now == 0 and plan.blocked_by is not None
    assert "default" in plan.blocked_by and "held for the head" in plan.blocked_by
    _request_id, decisions = h.submit({"pools": {"default": 1}})
    assert grants(decisions) == []
    urgent = h.s.what_if(h.request({"pools": {"default": 1}}, priority="critical"), 1, h.now)
    assert urgent.granted_now == 1


def test_what_if_on_an_unknown_node_is_invalid_like_submit() -> None:
    """Regression: it raised KeyError from the feasibility check."""
    h = three_nodes()
    with pytest.raises(InvalidRequest, match="'zz' is not an alive node"):
        h.s.what_if(h.request({"cpu": 1}, node="zz"), 1, h.now)


@pytest.mark.parametrize("count", [0, -1, 100_001, 2.0, True, "3"])
def test_what_if_with_a_bad_count_is_invalid(count: Any) -> None:
    h = three_nodes()
    with pytest.raises(InvalidRequest, match="count"):
        h.s.what_if(h.request({"cpu": 1}), count, h.now)


# -- snapshot -------------------------------------------------------------------------------


def test_snapshot_rows_and_totals_add_up() -> None:
    h = Harness(
        make_policy(
            reserve={"memory": "25%", "cpu": 1},
            pools={"default": {"size": 4}, "pg": {"size": 2}},
            tenants={"ml": {"guaranteed": {"gpu": 1}, "limit": {"gpu": 2}}},
        )
    )
    h.node("a", cpu=4, memory=8 * GIB, gpu=2)
    h.node("b", cpu=8, memory=4 * GIB)
    h.acquire({"cpu": 2, "memory": "1GiB", "gpu": 1, "pools": {"pg": 1}}, tenant="ml", node="a")
    h.acquire({"cpu": 1}, node="b")
    h.wait({"cpu": 3, "pools": {"pg": 1}}, node="a", tenant="ml")
    snap = h.snap()
    a = snap["nodes"]["a"]["resources"]
    assert a["cpu"] == {
        "capacity": 4000,
        "reserve": 1000,
        "grantable": 3000,
        "granted": 2000,
        "free": 1000,
        "held_for_head": 3000,
    }
    assert a["memory"]["reserve"] == 2 * GIB and a["memory"]["free"] == 5 * GIB
    cpu = snap["resources"]["cpu"]
    assert (cpu["capacity"], cpu["reserve"], cpu["granted"], cpu["waiting"]) == (
        12000,
        2000,
        3000,
        3000,
    )
    for resource, row in snap["resources"].items():
        assert row["free"] + row["granted"] == row["grantable"], resource
        assert row["capacity"] == sum(
            n["resources"][resource]["capacity"] for n in snap["nodes"].values()
        )
    assert snap["pools"]["pg"] == {
        "size": 2,
        "in_use": 1,
        "free": 1,
        "waiting": 1,
        "held_for_head": 1,
    }
    assert snap["tenants"]["ml"]["usage"] == {"cpu": 2000, "memory": GIB, "gpu": 1000, "pg": 1}
    assert snap["tenants"]["ml"]["waiting"] == {"cpu": 3000, "pg": 1}
    assert snap["queue"]["waiting"] == 1 and snap["queue"]["head_node"] == "a"
    assert snap["leases"] == 2
    assert snap["counters"]["submitted"] == 3 and snap["counters"]["granted"] == 2


# -- bottlenecks ------------------------------------------------------------------------


def test_bottleneck_names_the_binding_resource_with_figures() -> None:
    h = Harness(make_policy())
    h.node("a", cpu=16, memory=16 * GIB, gpu=1)
    h.acquire({"gpu": 1, "cpu": 1})
    for _ in range(3):
        h.wait({"gpu": 1})
    h.tick(4)
    findings = h.snap()["bottlenecks"]
    top = binding(findings)
    assert top is not None and (top["kind"], top["name"]) == ("resource", "gpu")
    figures = top["figures"]
    assert (figures["granted"], figures["free"], figures["waiting"]) == (1000, 0, 3000)
    assert figures["oldest_wait_s"] == 4
    assert "gpu: 1 of 1 granted, 3 waiting" in top["message"]
    assert top["recommendation"]
    hot = [f for f in findings if f["kind"] == "node"]
    assert hot and hot[0]["name"] == "a" and "gpu" in hot[0]["figures"]["hot"]


def test_bottleneck_names_a_pool_at_its_cap_over_a_lone_waiting_core() -> None:
    """Regression: scores compared raw core units, so one waiting core (1000 milli)
    outranked ten requests waiting on a full pool."""
    h = Harness(make_policy(pools={"default": {"size": 4}, "rpc": {"size": 2}}))
    h.node("a", cpu=8, memory=16 * GIB)
    h.acquire({"pools": {"rpc": 2}})
    for _ in range(10):
        h.wait({"pools": {"rpc": 1}})
    h.acquire({"cpu": 8})
    h.wait({"cpu": 1})
    top = binding(h.snap()["bottlenecks"])
    assert top is not None and (top["kind"], top["name"]) == ("pool", "rpc")
    assert (top["figures"]["in_use"], top["figures"]["size"], top["figures"]["waiting"]) == (
        2,
        2,
        10,
    )
    assert "rpc pool: 2/2 in use, 10 waiting" in top["message"]


def test_bottleneck_names_a_tenant_at_its_hard_limit() -> None:
    h = Harness(make_policy(tenants={"tx": {"limit": {"cpu": 2}}}))
    h.node("a", cpu=16)
    h.acquire({"cpu": 2}, tenant="tx")
    h.wait({"cpu": 1}, tenant="tx")
    findings = h.snap()["bottlenecks"]
    tenant = [f for f in findings if f["kind"] == "tenant"]
    assert [f["name"] for f in tenant] == ["tx"]
    assert tenant[0]["figures"]["resource"] == "cpu"
    assert "hard limit of 2 cpu with 1 more waiting" in tenant[0]["message"]


def test_no_findings_when_nothing_waits_and_nothing_is_hot() -> None:
    h = Harness(make_policy())
    h.node("a", cpu=16)
    h.acquire({"cpu": 1})
    assert h.snap()["bottlenecks"] == []
    assert binding([]) is None
