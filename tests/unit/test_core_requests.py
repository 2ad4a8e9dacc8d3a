"""Bad input and requests that can never fit: refused at once, and nothing changes."""

from __future__ import annotations

import math
from typing import Any

import pytest

from anya_resource.core import build_request, check_invariants
from anya_resource.errors import Infeasible, InvalidRequest
from tests.unit.core_support import GIB, Harness, make_policy


@pytest.fixture
def h() -> Harness:
    harness = Harness(
        make_policy(
            tenants={"tx": {"guaranteed": {"cpu": 1}, "limit": {"cpu": 2, "rpc": 2}}},
            pools={"default": {"size": 4}, "rpc": {"size": 3}},
        )
    )
    harness.node("n1", cpu=4, memory=8 * GIB, gpu=1)
    harness.node("n2", cpu=8, memory=4 * GIB)
    harness.acquire({"cpu": 1}, node="n1")
    harness.acquire({"cpu": 8}, priority="low", node="n2")  # n2 is full: requests may wait
    harness.wait({"cpu": 8})
    return harness


BAD_AMOUNTS = [
    ("memory", -1, "memory"),
    ("memory", math.nan, "memory"),
    ("memory", math.inf, "memory"),
    ("memory", 2**63, "memory"),
    ("memory", "1e30", "memory"),
    ("memory", True, "memory"),
    ("memory", "lots", "memory"),
    ("memory", "12 parsecs", "unknown unit"),
    ("cpu", -0.5, "cpu"),
    ("cpu", math.nan, "cpu"),
    ("cpu", -math.inf, "cpu"),
    ("cpu", 1e300, "cpu"),
    ("cpu", False, "cpu"),
    ("cpu", "two", "cpu"),
    ("gpu", [1], "gpu"),
]


@pytest.mark.parametrize(("resource", "value", "named"), BAD_AMOUNTS)
def test_bad_amounts_are_invalid_and_name_the_problem(
    h: Harness, resource: str, value: Any, named: str
) -> None:
    before = h.snap()
    with pytest.raises(InvalidRequest, match=named) as info:
        h.submit({resource: value})
    assert isinstance(info.value, ValueError)
    assert h.snap() == before


@pytest.mark.parametrize(
    ("resources", "named"),
    [
        ({"vram": 1}, "unknown resource 'vram'"),
        ({"pools": {"redis": 1}}, "unknown pool 'redis'"),
        ({"pools": {"default": 1.5}}, "'default'"),
        ({"pools": {"default": -1}}, "'default'"),
        ({"pools": ["default"]}, "pools"),
        ({"rpc": "x"}, "'rpc'"),
        ({}, "asks for nothing"),
        ({"cpu": 0}, "asks for nothing"),
        ("cpu=1", "expected a mapping"),
    ],
)
def test_bad_resource_maps_are_invalid(h: Harness, resources: Any, named: str) -> None:
    before = h.snap()
    with pytest.raises(InvalidRequest, match=named):
        h.submit(resources)
    assert h.snap() == before


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"priority": "urgent"}, "priority"),
        ({"priority": True}, "priority"),
        ({"priority": 2.5}, "priority"),
        ({"priority": 10**400}, "priority"),  # would overflow the aging arithmetic
        ({"priority": -(10**9)}, "priority"),
        ({"ttl": 0}, "ttl"),
        ({"ttl": -5}, "ttl"),
        ({"ttl": math.nan}, "ttl"),
        ({"ttl": math.inf}, "ttl"),
        ({"ttl": 10**9}, "ttl"),
        ({"ttl": "60"}, "ttl"),
        ({"ttl": True}, "ttl"),
        ({"timeout": -1}, "timeout"),
        ({"timeout": math.nan}, "timeout"),
        ({"timeout": math.inf}, "timeout"),
        ({"timeout": 10**12}, "timeout"),
        ({"timeout": "3"}, "timeout"),
        ({"timeout": False}, "timeout"),
        ({"tenant": ""}, "tenant"),
        ({"tenant": 7}, "tenant"),
        ({"node": ""}, "node"),
        ({"idempotency_key": ""}, "idempotency_key"),
        ({"preemptible": "yes"}, "preemptible"),
        ({"detached": 1}, "detached"),
    ],
)
def test_bad_options_are_invalid(h: Harness, kwargs: dict[str, Any], named: str) -> None:
    before = h.snap()
    with pytest.raises(InvalidRequest, match=named):
        h.submit({"cpu": 1}, **kwargs)
    assert h.snap() == before
    check_invariants(h.s.state)


def test_unknown_node_is_invalid_and_names_the_alive_ones(h: Harness) -> None:
    before = h.snap()
    with pytest.raises(InvalidRequest, match=r"'ffee'.*\['n1', 'n2'\]"):
        h.submit({"cpu": 1}, node="ffee")
    assert h.snap() == before


def test_valid_requests_are_normalised_to_core_units(h: Harness) -> None:
    request = build_request(
        h.policy,
        {"memory": "1.5GiB", "cpu": 0.25, "gpu": 0, "pools": {"rpc": 2}, "default": 1},
        priority="high",
        timeout=0,
    )
    assert request.resources == {"memory": 3 * GIB // 2, "cpu": 250}
    assert request.pools == {"rpc": 2, "default": 1}
    assert (request.priority, request.priority_name, request.timeout) == (75, "high", 0.0)
    assert request.ttl == h.policy.lease.default_ttl
    assert build_request(h.policy, {"cpu": 1}, priority=-(10**6)).priority == -(10**6)


@pytest.mark.parametrize(
    ("resources", "kwargs", "named"),
    [
        ({"cpu": 9}, {}, "larger than any node"),  # the biggest node has 8
        ({"cpu": 5, "memory": 5 * GIB}, {}, "larger than any node"),  # no node has both
        ({"gpu": 2}, {}, "larger than any node"),
        ({"cpu": 5}, {"node": "n1"}, "node n1"),
        ({"pools": {"rpc": 4}}, {}, "pool 'rpc' has 3 slots"),
        ({"cpu": 3}, {"tenant": "tx"}, "tenant 'tx' has a hard limit"),
        ({"pools": {"rpc": 3}}, {"tenant": "tx"}, "tenant 'tx' has a hard limit"),
    ],
)
def test_infeasible_requests_raise_at_once_and_are_never_queued(
    h: Harness, resources: dict[str, Any], kwargs: dict[str, Any], named: str
) -> None:
    before = h.snap()
    waiting = len(h.s.queue)
    with pytest.raises(Infeasible, match=named):
        h.submit(resources, timeout=None, **kwargs)
    assert len(h.s.queue) == waiting
    assert h.snap() == before


def test_infeasible_is_judged_on_capacity_minus_reserve() -> None:
    h = Harness(make_policy(reserve={"cpu": 1, "memory": "25%"}))
    h.node("n1", cpu=4, memory=8 * GIB)
    with pytest.raises(Infeasible):
        h.submit({"cpu": 3.5})
    with pytest.raises(Infeasible):
        h.submit({"memory": "7GiB"})
    assert h.acquire({"cpu": 3, "memory": "6GiB"}).lease.node_id == "n1"


def test_pools_only_request_with_no_node_alive_is_infeasible() -> None:
    h = Harness()
    with pytest.raises(Infeasible, match="no node is alive"):
        h.submit({"pools": {"default": 1}})
    assert h.snap()["queue"]["waiting"] == 0


def test_feasible_but_busy_request_waits_instead(h: Harness) -> None:
    request_id = h.wait({"cpu": 4}, tenant="job-9")
    assert h.snap()["queue"]["waiting"] == 2
    assert request_id in h.s.queue
