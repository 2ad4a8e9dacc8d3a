"""The admission check (core/admission.py): one rule for fits, or what blocks and why.

Placement, the explanation of a wait, feasibility, what-if, preemption and the views all
ask it; these tests pin the rule itself and that its users agree with it.
"""

from __future__ import annotations

from typing import Any

import pytest

from anya_resource.core import admission, check_invariants
from anya_resource.core.admission import BlockKind, blocks, fits, never_fits, node_short, why_not
from anya_resource.errors import Infeasible
from tests.unit.core_support import GIB, Harness, make_policy

TENANTS = {"tx": {"guaranteed": {"cpu": 1}, "limit": {"cpu": 4}}}


def cluster(**policy: Any) -> Harness:
    policy.setdefault("aging", {"per_second": 0, "max_boost": 0})
    policy.setdefault("pools", {"default": {"size": 4}})
    policy.setdefault("tenants", TENANTS)
    h = Harness(make_policy(**policy))
    h.node("a", cpu=4, memory=8 * GIB)
    h.node("b", cpu=2, memory=16 * GIB)
    return h


def test_a_request_that_fits_has_no_block_and_is_placed() -> None:
    h = cluster()
    request = h.request({"cpu": 1, "pools": {"default": 1}}, tenant="tx")
    assert blocks(h.s.state, request) == []
    assert fits(h.s.state, request, None)
    assert admission.place(h.s.state, request, None, None) is not None


def test_pool_block_names_the_pool_and_its_figures() -> None:
    h = cluster()
    h.acquire({"pools": {"default": 3}})
    request = h.request({"pools": {"default": 2}})
    [block] = blocks(h.s.state, request)
    assert (block.kind, block.what, block.need, block.used, block.total) == (
        BlockKind.POOL,
        "default",
        2,
        3,
        4,
    )
    assert block.short == 1
    assert str(block) == "pool 'default': 3/4 slots in use"
    assert not fits(h.s.state, request, None)
    assert admission.place(h.s.state, request, None, None) is None


def test_what_the_head_holds_counts_against_those_behind_it() -> None:
    h = cluster()
    h.acquire({"pools": {"default": 3}})
    h.wait({"pools": {"default": 2}})  # the head: holds the pool's slots for itself
    reservation = h.s.reservation
    assert reservation is not None and reservation.pools == {"default": 2}
    small = h.request({"pools": {"default": 1}})
    assert blocks(h.s.state, small) == []  # one slot is free...
    [block] = blocks(h.s.state, small, reservation)  # ...but held for the head
    assert block.held == 2
    assert "held for the head of the queue" in str(block)
    assert str(why_not(h.s.state, small, reservation)) == str(block)


def test_tenant_hard_limit_block_counts_usage_and_the_heads_hold() -> None:
    h = cluster()
    h.acquire({"cpu": 3}, tenant="tx")
    request = h.request({"cpu": 2}, tenant="tx")
    [block] = blocks(h.s.state, request)
    assert (block.kind, block.what, block.resource) == (BlockKind.TENANT, "tx", "cpu")
    assert (block.used, block.need, block.total) == (3000, 2000, 4000)
    assert "tenant 'tx' is at its hard limit of 4 cpu" in str(block)
    assert admission.tenant_blocks(h.s.state, request, first=True) == [block]
    assert blocks(h.s.state, h.request({"cpu": 1}, tenant="tx")) == []


def test_capacity_block_is_the_resource_short_everywhere_it_may_go() -> None:
    h = cluster()
    h.acquire({"cpu": 3}, node="a")
    request = h.request({"cpu": 3, "memory": 10 * GIB})
    found = admission.capacity_blocks(h.s.state, request)
    assert [b.what for b in found] == ["cpu"]  # memory fits on b, cpu nowhere (1 and 2 free)
    assert str(found[0]) == "cpu: the most free on any node is 2, 3 needed"
    assert found[0].short == 1000  # thousandths of a core
    pinned = h.request({"cpu": 2}, node="a")
    [block] = admission.capacity_blocks(h.s.state, pinned)
    assert block.where == "node a" and block.total == 1000


def test_split_when_each_resource_fits_somewhere_but_no_node_has_all() -> None:
    h = cluster()
    request = h.request({"cpu": 3, "memory": 10 * GIB})  # a has the cpu, b the memory
    assert admission.capacity_blocks(h.s.state, request) == []
    assert not fits(h.s.state, request, None)
    assert why_not(h.s.state, request, None).kind is BlockKind.SPLIT


def test_node_short_counts_what_is_about_to_be_freed() -> None:
    h = cluster()
    h.acquire({"cpu": 4}, node="a")
    node = h.s.nodes["a"]
    assert node_short(node, {"cpu": 2000}) == {"cpu": 2000}
    assert node_short(node, {"cpu": 2000}, {"cpu": 1500}) == {"cpu": 500}
    assert node_short(node, {"cpu": 2000}, {"cpu": 2000}) == {}


@pytest.mark.parametrize(
    ("resources", "kwargs", "kind", "text"),
    [
        (
            {"pools": {"default": 5}},
            {},
            BlockKind.POOL,
            "pool 'default' has 4 slots; 5 were asked for",
        ),
        (
            {"cpu": 5},
            {"tenant": "tx"},
            BlockKind.TENANT,
            "tenant 'tx' has a hard limit of 4 CPUs; 5 CPUs were asked for",
        ),
        (
            {"cpu": 5},
            {},
            BlockKind.CAPACITY,
            "a request of 5 CPUs is larger than any node can ever grant",
        ),
        ({"cpu": 3}, {"node": "b"}, BlockKind.CAPACITY, "larger than node b can ever grant"),
    ],
)
def test_never_fits_is_the_same_rule_on_an_empty_cluster(
    resources: dict[str, Any], kwargs: dict[str, Any], kind: BlockKind, text: str
) -> None:
    h = cluster()
    request = h.request(resources, **kwargs)
    block = never_fits(h.s.state, request)
    assert block is not None and block.ever and block.kind is kind and text in str(block)
    with pytest.raises(Infeasible, match=text.split(";")[0]):
        h.s.submit(request, h.now)


def test_never_fits_ignores_what_is_in_use_now() -> None:
    h = cluster()
    h.acquire({"cpu": 4, "pools": {"default": 4}}, tenant="tx")
    request = h.request({"cpu": 4, "pools": {"default": 4}}, tenant="tx")
    assert blocks(h.s.state, request)  # blocked now...
    assert never_fits(h.s.state, request) is None  # ...but not for ever


def test_no_node_alive_for_a_pools_only_request() -> None:
    h = Harness(make_policy(pools={"default": {"size": 2}}))
    block = never_fits(h.s.state, h.request({"pools": {"default": 1}}))
    assert block is not None and block.kind is BlockKind.NO_NODE
    assert str(block) == "no node is alive"


def test_fits_moves_no_placement_cursor_and_agrees_with_place() -> None:
    h = cluster(placement="spread")
    state = h.s.state
    before = (state.placer._cursor, dict(state.placer.free_bound))
    for cpu in (1, 2, 4, 5):
        request = h.request({"cpu": cpu})
        assert fits(state, request, None) == (cpu <= 4)
    assert (state.placer._cursor, dict(state.placer.free_bound)) == before
    check_invariants(state)


def test_the_views_and_the_explanation_agree_with_the_check() -> None:
    h = cluster()
    h.acquire({"cpu": 3}, tenant="tx")
    h.wait({"cpu": 2}, tenant="tx")  # at its tenant's limit
    demand = h.snap()["demand"]
    assert demand["tenants"]["tx"]["blocked_on"] == ["cpu"]
    assert demand["resources"].get("cpu", {}).get("on_capacity", 0) == 0
    plan = h.s.what_if(h.request({"cpu": 2}, tenant="tx"), 1, h.now)
    assert plan.would_wait == 1 and plan.blocked_by is not None
    assert plan.blocked_by.startswith("tenant 'tx' is at its hard limit")
