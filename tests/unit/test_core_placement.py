"""Placement: spread and pack, health weighting, and a flat cost at 1,000 nodes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping

import pytest

from anya_resource.core import NodeSample, check_invariants
from anya_resource.core.ledger import NodeLedger
from tests.unit.core_support import GIB, Harness, caps, grants, make_policy


@pytest.fixture
def fits_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts every check of one node (``fits``, ``headroom_if_fits``): a placement's work."""
    calls = [0]
    fits, headroom_if_fits = NodeLedger.fits, NodeLedger.headroom_if_fits

    def counting_fits(
        self: NodeLedger, demand: Mapping[str, int], held: Mapping[str, int] | None = None
    ) -> bool:
        calls[0] += 1
        return fits(self, demand, held)

    def counting_headroom(
        self: NodeLedger, demand: Mapping[str, int], held: Mapping[str, int] | None = None
    ) -> float | None:
        calls[0] += 1
        return headroom_if_fits(self, demand, held)

    monkeypatch.setattr(NodeLedger, "fits", counting_fits)
    monkeypatch.setattr(NodeLedger, "headroom_if_fits", counting_headroom)
    yield calls


def cluster(nodes: int, placement: str, cpu: float = 4, **policy: object) -> Harness:
    h = Harness(make_policy(placement=placement, **policy))
    for i in range(nodes):
        h.node(f"n{i:04d}", cpu=cpu, memory=8 * GIB)
    return h


def test_spread_puts_equal_requests_on_different_nodes() -> None:
    h = cluster(10, "spread")
    nodes = [h.acquire({"cpu": 1}).lease.node_id for _ in range(10)]
    assert len(set(nodes)) == 10
    more = Counter(h.acquire({"cpu": 1}).lease.node_id for _ in range(10))
    assert max(more.values()) == 1  # the second round also lands one per node


def test_pack_fills_a_node_before_using_the_next() -> None:
    h = cluster(10, "pack")
    nodes = [h.acquire({"cpu": 1}).lease.node_id for _ in range(12)]
    counts = Counter(nodes)
    assert sorted(counts.values(), reverse=True) == [4, 4, 4]
    assert nodes[:4] == [nodes[0]] * 4
    snap = h.snap()
    full = [n for n, row in snap["nodes"].items() if row["resources"]["cpu"]["free"] == 0]
    assert len(full) == 3


def test_pack_prefers_the_fullest_node_that_fits() -> None:
    h = cluster(3, "pack")
    h.acquire({"cpu": 3}, node="n0001")
    h.acquire({"cpu": 1}, node="n0002")
    # n0001 is fullest but cannot take 2; n0002 (1 used) is fuller than n0000 (empty).
    assert h.acquire({"cpu": 2}).lease.node_id == "n0002"
    assert h.acquire({"cpu": 1}).lease.node_id == "n0002"  # the node it packed last, now full
    assert h.acquire({"cpu": 1}).lease.node_id == "n0001"  # then the fullest with room
    assert h.snap()["nodes"]["n0000"]["resources"]["cpu"]["granted"] == 0


def test_spread_prefers_headroom_and_healthy_nodes() -> None:
    h = cluster(2, "spread")
    h.acquire({"cpu": 2}, node="n0000")
    assert h.acquire({"cpu": 1}).lease.node_id == "n0001"  # more left after the grant
    h2 = cluster(2, "spread")
    h2.s.health("n0000", NodeSample(memory_percent=70.0, cpu_percent=95.0), h2.now)
    h2.s.health("n0001", NodeSample(memory_percent=10.0, cpu_percent=5.0), h2.now)
    assert h2.acquire({"cpu": 1}).lease.node_id == "n0001"  # same headroom, healthier


def test_placement_at_1000_nodes_does_not_scan_every_node(fits_calls: list[int]) -> None:
    for placement in ("spread", "pack"):
        h = cluster(1000, placement)
        fits_calls[0] = 0
        for _ in range(500):
            h.acquire({"cpu": 1})
        # Power-of-k choices: a handful of nodes per decision, never the 1,000.
        assert fits_calls[0] / 500 <= 8, (placement, fits_calls[0])
        check_invariants(h.s.state)


def test_a_request_that_fits_nowhere_costs_one_scan_then_nothing(
    fits_calls: list[int],
) -> None:
    h = cluster(1000, "spread")
    for i in range(1000):
        h.acquire({"cpu": 3.5}, node=f"n{i:04d}")  # every node keeps half a core
    fits_calls[0] = 0
    h.wait({"cpu": 1}, priority="low")
    first = fits_calls[0]
    assert first >= 1000  # one full scan tells there is no room anywhere ...
    fits_calls[0] = 0
    for _ in range(200):
        h.wait({"cpu": 1}, priority="low")
    assert fits_calls[0] == 0  # ... after which the free bound rejects in O(1)


def test_the_one_node_with_room_is_found_among_1000() -> None:
    h = cluster(1000, "spread")
    for i in range(1000):
        if i != 777:
            h.acquire({"cpu": 4}, node=f"n{i:04d}")
    assert h.acquire({"cpu": 2}).lease.node_id == "n0777"
    assert h.acquire({"cpu": 2}).lease.node_id == "n0777"
    request_id, decisions = h.submit({"cpu": 1})
    assert grants(decisions) == [] and request_id in h.s.queue


def test_node_constraint_is_honoured() -> None:
    h = cluster(5, "spread")
    for _ in range(4):
        assert h.acquire({"cpu": 1}, node="n0003").lease.node_id == "n0003"
    request_id = h.wait({"cpu": 1}, node="n0003")
    assert h.snap()["nodes"]["n0003"]["resources"]["cpu"]["free"] == 0
    assert request_id in h.s.queue


def test_pools_only_lease_is_recorded_on_its_holders_node() -> None:
    from anya_resource.core import Holder

    h = cluster(3, "spread")
    holder = Holder(pid=1, create_time=1.0, node_id="n0002")
    grant = h.acquire({"pools": {"default": 1}}, holder=holder)
    assert grant.lease.node_id == "n0002"
    assert h.snap()["pools"]["default"]["in_use"] == 1


def test_a_scarce_resource_is_searched_among_the_nodes_that_have_it(
    fits_calls: list[int],
) -> None:
    h = Harness(make_policy(placement="spread"))
    gpu_nodes = {f"n{i:04d}" for i in range(7, 1000, 200)}  # 5 of 1,000
    for i in range(1000):
        node_id = f"n{i:04d}"
        h.node(node_id, cpu=4, memory=8 * GIB, gpu=2 if node_id in gpu_nodes else 0)
    fits_calls[0] = 0
    placed = [h.acquire({"gpu": 1}).lease.node_id for _ in range(10)]
    assert set(placed) == gpu_nodes  # two each: spread over the five
    assert fits_calls[0] <= 10 * 5  # never a walk over the 995 nodes without a GPU
    h.s.node_up("n0007", caps(cpu=4, memory=8 * GIB, gpu=0), h.now)  # its GPUs went away
    assert "n0007" not in {n.node_id for n in h.s.state.placer.candidates({"gpu": 1000})}
    check_invariants(h.s.state)
