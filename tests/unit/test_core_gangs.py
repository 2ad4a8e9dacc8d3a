"""Gang leases in the core: Ray's four strategies, all or nothing, the head's hold across
nodes, preemption as a unit, node loss, what-if, bad input, and the record's layout.

The state machines (``test_core_stateful.py``'s ``GangMachine``, the recovery machine)
run gangs among everything else; these are the worked cases, each checked exactly.
"""

from __future__ import annotations

from typing import Any

import pytest

from anya_resource.core import Reclaim, ReclaimReason, check_invariants
from anya_resource.core.gangs import EXACT_STEPS, never_fits, place
from anya_resource.core.journal import Recovered
from anya_resource.core.ledger import NodeLedger
from anya_resource.core.model import LeaseRecord
from anya_resource.core.placement import Placer
from anya_resource.errors import Infeasible, InvalidRequest
from tests.unit.core_support import (
    CORE,
    GIB,
    Harness,
    grant_for,
    grants,
    make_policy,
    reclaims,
    rejects,
    revokes,
)

GRACE = 5.0


def cluster(nodes: int = 4, cpu: float = 2, placement: str = "spread", **policy: Any) -> Harness:
    """``nodes`` nodes of ``cpu`` CPUs and 8 GiB each, named n1, n2, ..."""
    policy.setdefault("aging", {"per_second": 0, "max_boost": 0})
    policy.setdefault("lease", {"preemption_grace_s": GRACE})
    h = Harness(make_policy(placement=placement, **policy))
    for index in range(1, nodes + 1):
        h.node(f"n{index}", cpu=cpu, memory=8 * GIB)
    return h


def gang(h: Harness, count: int, strategy: str, cpu: float = 1, **kwargs: Any) -> tuple[str, Any]:
    bundles = [{"cpu": cpu} for _ in range(count)]
    return h.submit(kwargs.pop("resources", {}), bundles=bundles, strategy=strategy, **kwargs)


def nodes_of(lease: LeaseRecord) -> list[str]:
    return [node for node, _ in lease.placed()]


# -- the strategies ----------------------------------------------------------------------


def test_pack_puts_every_bundle_on_one_node_when_one_has_room() -> None:
    h = cluster()
    request_id, decisions = gang(h, 2, "PACK")
    lease = grant_for(decisions, request_id).lease  # type: ignore[union-attr]
    assert len(set(nodes_of(lease))) == 1
    assert lease.node_id == nodes_of(lease)[0]
    assert lease.resources == {"cpu": 2 * CORE}
    check_invariants(h.s.state)


def test_pack_uses_as_few_nodes_as_it_can_when_no_node_holds_all() -> None:
    h = cluster()
    request_id, decisions = gang(h, 4, "PACK")
    lease = grant_for(decisions, request_id).lease  # type: ignore[union-attr]
    assert len(set(nodes_of(lease))) == 2  # 4 CPUs on nodes of 2


def test_spread_puts_bundles_on_distinct_nodes_while_it_can() -> None:
    h = cluster()
    request_id, decisions = gang(h, 4, "SPREAD", cpu=0.5)
    lease = grant_for(decisions, request_id).lease  # type: ignore[union-attr]
    assert len(set(nodes_of(lease))) == 4
    # Five bundles on four nodes: it may share a node, and still goes whole.
    request_id, decisions = gang(h, 5, "SPREAD", cpu=0.5)
    assert grant_for(decisions, request_id) is not None
    check_invariants(h.s.state)


def test_strict_pack_waits_rather_than_split() -> None:
    h = cluster()
    request_id, decisions = gang(h, 2, "STRICT_PACK")
    assert len(set(nodes_of(grant_for(decisions, request_id).lease))) == 1  # type: ignore[union-attr]
    with pytest.raises(Infeasible, match="no node can ever hold all 3 bundles"):
        gang(h, 3, "STRICT_PACK")


def test_strict_spread_needs_a_node_per_bundle() -> None:
    h = cluster()
    request_id, decisions = gang(h, 4, "STRICT_SPREAD")
    lease = grant_for(decisions, request_id).lease  # type: ignore[union-attr]
    assert sorted(nodes_of(lease)) == ["n1", "n2", "n3", "n4"]
    with pytest.raises(Infeasible, match=r"STRICT_SPREAD needs 5 nodes.*has 4"):
        gang(h, 5, "STRICT_SPREAD")


def test_bundles_come_back_in_the_order_asked() -> None:
    h = cluster(nodes=3, cpu=4)
    bundles = [{"cpu": 1}, {"cpu": 3}, {"cpu": 2, "memory": "1GiB"}]
    request_id, decisions = h.submit({}, bundles=bundles, strategy="STRICT_SPREAD")
    lease = grant_for(decisions, request_id).lease  # type: ignore[union-attr]
    assert [amounts for _, amounts in lease.placed()] == [
        {"cpu": 1 * CORE},
        {"cpu": 3 * CORE},
        {"cpu": 2 * CORE, "memory": GIB},
    ]
    public = lease.public()["bundles"]
    assert [b["node_id"] for b in public] == nodes_of(lease)


def test_a_gang_of_one_bundle_is_a_one_node_request() -> None:
    h = cluster()
    request = h.request({}, bundles=[{"cpu": 2}], strategy="STRICT_SPREAD")
    assert request.bundles == () and request.resources == {"cpu": 2 * CORE}


def test_the_exact_search_places_what_the_greedy_pass_cannot() -> None:
    # Largest first, the greedy pass puts the 2-CPU bundle on the node with most room
    # (spread), where the 1.5 then fits nowhere; some order fits all three.
    nodes = [
        NodeLedger("a", {"cpu": 3000, "memory": 0, "gpu": 0, "disk": 0}, {}),
        NodeLedger("b", {"cpu": 2000, "memory": 0, "gpu": 0, "disk": 0}, {}),
        NodeLedger("c", {"cpu": 1500, "memory": 0, "gpu": 0, "disk": 0}, {}),
    ]
    placer = Placer("spread")
    for node in nodes:
        placer.add(node)
    nodes[0].take({"cpu": 1000})  # a: 2 free, b: 2 free, c: 1.5 free
    bundles = [{"cpu": 2000}, {"cpu": 2000}, {"cpu": 1500}]
    found = place(placer, bundles, "STRICT_SPREAD", {})
    assert found is not None
    assert sorted(n.node_id for n in found.nodes[:2]) == ["a", "b"]
    assert found.nodes[2].node_id == "c"
    assert EXACT_STEPS > 0


def test_never_fits_is_exact_for_strict_spread_on_limits() -> None:
    nodes = [
        NodeLedger("a", {"cpu": 4000, "memory": 0, "gpu": 0, "disk": 0}, {}),
        NodeLedger("b", {"cpu": 1000, "memory": 0, "gpu": 0, "disk": 0}, {}),
        NodeLedger("c", {"cpu": 1000, "memory": 0, "gpu": 0, "disk": 0}, {}),
    ]
    assert never_fits(nodes, [{"cpu": 2000}, {"cpu": 2000}, {"cpu": 500}], "STRICT_SPREAD")
    assert never_fits(nodes, [{"cpu": 2000}, {"cpu": 500}, {"cpu": 500}], "STRICT_SPREAD") is None
    # Certain only: more than all nodes together.
    assert never_fits(nodes, [{"cpu": 4000}, {"cpu": 1000}, {"cpu": 1000}], "PACK") is None
    assert never_fits(nodes, [{"cpu": 4000}, {"cpu": 1000}, {"cpu": 1001}], "SPREAD")


# -- all or nothing, the queue --------------------------------------------------------------


def test_a_strict_spread_waits_holding_nothing_then_is_granted_whole() -> None:
    h = cluster()
    first = h.acquire({"cpu": 2}, node="n1")
    h.acquire({"cpu": 2}, node="n2")
    request_id = gang(h, 3, "STRICT_SPREAD")[0]
    assert request_id in h.s.queue
    assert not [lease for lease in h.s.leases if lease.request_id == request_id]
    snap = h.snap()
    assert sum(node["resources"]["cpu"]["granted"] for node in snap["nodes"].values()) == 4 * CORE
    lease = grant_for(h.release(first), request_id).lease  # type: ignore[union-attr]
    assert sorted(nodes_of(lease)) == ["n1", "n3", "n4"]
    check_invariants(h.s.state)


def test_a_gang_at_the_head_is_not_starved_by_a_stream_of_small_requests() -> None:
    h = cluster()
    small = [h.acquire({"cpu": 1}) for _ in range(8)]  # every CPU taken
    head = gang(h, 4, "STRICT_SPREAD", cpu=2)[0]
    held = h.s.reservation
    assert held is not None and held.request_id == head and len(held.nodes) == 4
    # As leases come back, newcomers of the same priority never take what the gang holds.
    for grant in small:
        h.clock.advance(0.1)
        decisions = h.release(grant)
        newcomer, more = h.submit({"cpu": 1})
        assert grant_for(more, newcomer) is None, "a newcomer took the gang's hold"
        if grant_for(decisions, head) is not None:
            break
    assert head not in h.s.queue
    check_invariants(h.s.state)


def test_small_requests_backfill_around_the_gang_hold() -> None:
    h = cluster(nodes=3, cpu=2)
    h.acquire({"cpu": 2}, node="n1")
    h.acquire({"cpu": 1}, node="n2")
    gang(h, 2, "STRICT_SPREAD", cpu=2)  # waits: only n3 has 2 free
    held = h.s.reservation
    assert held is not None and set(held.nodes) == {"n2", "n3"}
    # n2's last free CPU is held for the gang; a memory-only request still goes anywhere.
    h.wait({"cpu": 1})
    assert h.acquire({"memory": "1GiB"}) is not None


def test_a_gang_counts_against_its_tenant_quota_and_pools_as_a_whole() -> None:
    h = cluster(
        tenants={"t": {"limit": {"cpu": 3}}},
        pools={"default": {"size": 4}, "rpc": {"size": 2}},
    )
    with pytest.raises(Infeasible, match="hard limit"):
        gang(h, 4, "SPREAD", tenant="t")
    request_id, decisions = gang(h, 3, "SPREAD", tenant="t", resources={"pools": {"rpc": 2}})
    lease = grant_for(decisions, request_id).lease  # type: ignore[union-attr]
    assert lease.pools == {"rpc": 2} and lease.resources == {"cpu": 3 * CORE}
    assert h.snap()["tenants"]["t"]["usage"]["cpu"] == 3 * CORE


def test_a_waiting_gang_times_out_whole() -> None:
    h = cluster(nodes=2)
    h.acquire({"cpu": 2}, node="n1")
    request_id = gang(h, 2, "STRICT_SPREAD", cpu=2, timeout=3)[0]
    decisions = h.tick(3.5)
    assert [r.request_id for r in rejects(decisions)] == [request_id]
    assert h.s.reservation is None


# -- preemption, revocation, node loss -----------------------------------------------------


def test_a_gang_preempts_the_fewest_low_leases_across_its_nodes() -> None:
    h = cluster()
    lows = [h.acquire({"cpu": 1}, priority="low", preemptible=True) for _ in range(8)]
    request_id = gang(h, 2, "STRICT_SPREAD", cpu=2, priority="high")[0]
    decisions = h.tick()
    revoked = {r.lease_id for r in revokes(h.s.tick(h.now))} | {
        r.lease_id for r in revokes(decisions)
    }
    held = h.s.reservation
    assert held is not None and len(held.nodes) == 2
    victims = [g.lease for g in lows if g.lease.lease_id in h.s.revoking_for(request_id)]
    assert len(victims) == 4  # two on each of the gang's two nodes, no more
    assert {v.node_id for v in victims} == set(held.nodes)
    assert revoked <= {g.lease.lease_id for g in lows}
    out = h.tick(GRACE + 0.1)
    assert grant_for(out, request_id) is not None
    check_invariants(h.s.state)


def test_a_preemptible_gang_is_revoked_and_reclaimed_as_a_unit() -> None:
    h = cluster()
    request_id, decisions = gang(h, 4, "STRICT_SPREAD", cpu=2, priority="low", preemptible=True)
    victim = grant_for(decisions, request_id).lease  # type: ignore[union-attr]
    high, out = h.submit({"cpu": 2}, priority="high")
    assert [r.lease_id for r in revokes(out)] == [victim.lease_id]  # one revocation, whole
    out = h.tick(GRACE + 0.1)
    assert Reclaim(victim.lease_id, victim.node_id, ReclaimReason.REVOKED, None) in [
        Reclaim(r.lease_id, r.node_id, r.reason, None) for r in reclaims(out)
    ]
    assert grant_for(out, high) is not None
    snap = h.snap()
    assert sum(node["resources"]["cpu"]["granted"] for node in snap["nodes"].values()) == 2 * CORE


def test_losing_any_node_of_a_gang_ends_the_whole_gang() -> None:
    h = cluster()
    request_id, decisions = gang(h, 3, "STRICT_SPREAD")
    lease = grant_for(decisions, request_id).lease  # type: ignore[union-attr]
    last = nodes_of(lease)[-1]
    out = h.s.node_down(last, h.now)
    assert [(r.lease_id, r.reason) for r in reclaims(out)] == [
        (lease.lease_id, ReclaimReason.NODE_LOST)
    ]
    snap = h.snap()
    assert all(node["resources"]["cpu"]["granted"] == 0 for node in snap["nodes"].values())
    check_invariants(h.s.state)


def test_a_waiting_strict_spread_that_can_never_fit_after_a_node_left_is_rejected() -> None:
    h = cluster(nodes=3)
    h.acquire({"cpu": 2}, node="n1")
    request_id = gang(h, 3, "STRICT_SPREAD", cpu=2)[0]
    out = h.s.node_down("n3", h.now)
    assert [(r.request_id, r.reason.value) for r in rejects(out)] == [(request_id, "infeasible")]


# -- what-if --------------------------------------------------------------------------------


def test_what_if_says_where_a_gang_would_go_and_whom_it_would_preempt() -> None:
    h = cluster()
    h.acquire({"cpu": 2}, node="n1", priority="low", preemptible=True)
    request = h.request({}, bundles=[{"cpu": 2}] * 4, strategy="STRICT_SPREAD", priority="high")
    answer = h.s.what_if(request, 1, h.now)
    assert answer.granted_after_preemption == 1 and answer.granted_now == 0
    assert answer.nodes == {"n1": 1, "n2": 1, "n3": 1, "n4": 1}
    assert [p["node_id"] for p in answer.preempted] == ["n1"]
    twice = h.s.what_if(request, 2, h.now)
    assert twice.would_wait == 1 and "2 needed" in str(twice.blocked_by)
    never = h.request({}, bundles=[{"cpu": 1}] * 5, strategy="STRICT_SPREAD")
    assert "STRICT_SPREAD needs 5 nodes" in str(h.s.what_if(never, 1, h.now).infeasible)


# -- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resources", "options", "named"),
    [
        ({}, {"bundles": []}, "bundles: got []"),
        ({}, {"bundles": [{}]}, "bundle 0: {} asks for nothing"),
        ({}, {"bundles": [{"cpu": 1}, {}]}, "bundle 1"),
        ({}, {"bundles": [{"cpu": 1}], "strategy": "SCATTER"}, "strategy: got 'SCATTER'"),
        ({}, {"bundles": [{"cpu": 1}], "strategy": 3}, "strategy: got 3"),
        ({}, {"strategy": "PACK"}, "without bundles"),
        ({}, {"bundles": [{"cpu": -1}]}, "bundle 0: amount of 'cpu': got -1"),
        ({}, {"bundles": [{"cpu": float("nan")}]}, "nan"),
        ({}, {"bundles": [{"memory": "1e999"}]}, "'1e999'"),
        ({}, {"bundles": [{"cpu": 10**30}]}, "bundle 0"),
        ({}, {"bundles": [{"cpu": 1}] * 1001}, "at most 1,000"),
        ({"cpu": 1}, {"bundles": [{"cpu": 1}]}, "beside bundles"),
        ({}, {"bundles": [{"cpu": 1, "pools": {"rpc": 1}}]}, "pools are cluster-wide"),
        ({}, {"bundles": [{"rpc": 1}]}, "pools are cluster-wide"),
        ({}, {"bundles": [{"tpu": 1}]}, "'tpu' is not a node resource"),
        ({}, {"bundles": "cpu=1"}, "bundles: got 'cpu=1'"),
        ({}, {"bundles": [[("cpu", 1)]]}, "expected a mapping"),
        ({}, {"bundles": [{"cpu": 1}], "node": "n1"}, "node: got 'n1' with bundles"),
    ],
)
def test_bad_gangs_are_refused_naming_what_was_wrong(
    resources: dict[str, Any], options: dict[str, Any], named: str
) -> None:
    h = cluster(pools={"default": {"size": 4}, "rpc": {"size": 2}})
    with pytest.raises(InvalidRequest) as caught:
        h.request(resources, **options)
    assert named in str(caught.value)


# -- the record -----------------------------------------------------------------------------


def test_a_gang_record_survives_the_journal_and_older_layouts_still_read() -> None:
    h = cluster()
    request_id, decisions = gang(h, 2, "STRICT_SPREAD")
    lease = grant_for(decisions, request_id).lease  # type: ignore[union-attr]
    recovered = Recovered()
    fields = list(lease.fields())
    import json

    recovered.apply([["g", json.loads(json.dumps(fields))]])
    back = recovered.leases[lease.lease_id]
    assert back.bundles == lease.bundles and back.nodes() == lease.nodes()
    older = LeaseRecord.from_fields(fields[:-5])  # before budgets, gangs and reservations
    assert older.within is None and older.bundles is None and older.within_bundle is None
    assert older.reserve is False and older.placement_group is None
    with pytest.raises(ValueError, match="fields"):
        LeaseRecord.from_fields(fields[:-6])


def test_a_placement_group_is_journaled_and_restored_with_its_lease() -> None:
    from tests.unit.core_support import Durable, Store

    store = Store()
    nodes = {f"n{i}": {"cpu": 2 * CORE, "memory": 8 * GIB, "gpu": 0, "disk": 0} for i in (1, 2)}
    policy = make_policy()
    first = Durable(policy, store, nodes, 100.0)
    request = build_gang(policy)
    request_id, decisions = first.s.submit(request, 100.0)
    lease = grant_for(decisions, request_id).lease  # type: ignore[union-attr]
    assert lease.reserve is True  # a gang is reserved at grant
    first.s.placement_group(lease.lease_id, lease.token, "ab12")
    with pytest.raises(InvalidRequest, match="placement_group"):
        first.s.placement_group(lease.lease_id, lease.token, "not hex!")
    first.commit()
    second = Durable(policy, store, nodes, 101.0, epoch=1)
    back = second.s.leases.active[lease.lease_id]
    assert back.placement_group == "ab12" and back.bundles == lease.bundles


def build_gang(policy: Any) -> Any:
    from anya_resource.core import build_request

    return build_request(policy, {}, bundles=[{"cpu": 1}, {"cpu": 1}], strategy="STRICT_SPREAD")


def test_what_ray_cannot_reserve_is_never_reserved_and_plain_leases_follow_the_policy() -> None:
    h = cluster()
    assert h.request({"cpu": 1}).reserve is False  # first_use by default
    assert h.request({"cpu": 1}, reserve=True).reserve is True
    assert h.request({"disk": "1GiB"}, reserve=True).reserve is False
    assert h.request({}, bundles=[{"cpu": 1}] * 2).reserve is True
    assert h.request({}, bundles=[{"cpu": 1}] * 2, reserve=False).reserve is False
    with pytest.raises(InvalidRequest, match="reserve: got 'yes'"):
        h.request({"cpu": 1}, reserve="yes")
    at_grant = cluster(lease={"reserve_at": "grant"})
    assert at_grant.request({"cpu": 1}).reserve is True


def test_plain_ray_work_outside_leases_is_not_granted_and_giving_it_back_settles() -> None:
    h = cluster(nodes=1)
    # Ray has 0.5 of the node's 2 CPUs available and no group of ours is there: plain
    # work takes 1.5, counted from its second reading in a row.
    assert h.s.outside_use("n1", {"cpu": 500, "memory": 8 * GIB}, {}, h.now) == []
    assert h.snap()["nodes"]["n1"]["resources"]["cpu"]["free"] == 2 * CORE  # once: a ghost?
    h.s.outside_use("n1", {"cpu": 500, "memory": 8 * GIB}, {}, h.now)
    request_id = h.wait({"cpu": 1})
    assert h.snap()["nodes"]["n1"]["resources"]["cpu"]["free"] == 500
    # Less plain work counts at once (the lower of the two readings).
    decisions = h.s.outside_use("n1", {"cpu": 1500, "memory": 8 * GIB}, {}, h.now)
    assert grant_for(decisions, request_id) is not None
    check_invariants(h.s.state)


def test_what_ray_counts_past_the_nodes_limits_takes_nothing_from_them() -> None:
    from anya_resource.core.agents import outside_use

    # Ray says 4 logical CPUs (the machine has 2: the core's limit), 2 taken by plain
    # work: Ray can still reserve 2, all the core may grant.
    assert outside_use({"cpu": 2000}, {"cpu": 2000}, {})["cpu"] == 0
    assert outside_use({"cpu": 2000}, {"cpu": 500}, {"cpu": 1000})["cpu"] == 500
    assert outside_use({"cpu": 2000}, {"cpu": 0}, {"cpu": 2000})["cpu"] == 0  # all ours


def test_grants_of_gangs_are_listed_with_every_bundle() -> None:
    h = cluster()
    _, decisions = gang(h, 2, "SPREAD")
    assert len(grants(decisions)) == 1
    (listed,) = h.s.lease_list()
    assert len(listed["bundles"]) == 2 and listed["node_id"] == listed["bundles"][0]["node_id"]
