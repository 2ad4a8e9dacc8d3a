"""Spare placement groups (core/spares.py): reuse by layout, given up for room or time."""

from __future__ import annotations

from anya_resource.core.spares import Spare, SpareGroups, layout_of

A, B = "a" * 8, "b" * 8


def test_a_layout_is_one_bundle_a_node_of_what_ray_reserves() -> None:
    placed = [(A, {"cpu": 1000, "disk": 5}), (B, {"cpu": 1000}), (A, {"cpu": 500, "gpu": 0})]
    assert layout_of(placed) == ((A, (("cpu", 1500),)), (B, (("cpu", 1000),)))


def test_the_same_layout_takes_the_newest_spare_and_another_takes_none() -> None:
    spares = SpareGroups(keep_s=1.0)
    layout = layout_of([(A, {"cpu": 1000})])
    spares.put(Spare("g1", layout, 1.0))
    spares.put(Spare("g2", layout, 2.0))
    assert spares.take(layout_of([(A, {"cpu": 2000})])) is None
    assert spares.take(layout) == Spare("g2", layout, 2.0)
    assert len(spares) == 1


def test_spares_go_after_keep_s_and_when_a_grant_needs_their_room() -> None:
    spares = SpareGroups(keep_s=1.0)
    old = Spare("old", layout_of([(A, {"cpu": 1000})]), 1.0)
    new = Spare("new", layout_of([(A, {"cpu": 1000}), (B, {"cpu": 1000})]), 1.5)
    spares.put(old)
    spares.put(new)
    # A grant of 1 CPU on A with 1.5 free in the ledger: Ray has only -0.5 beside both
    # spares, so the oldest goes and that is enough.
    gone = spares.clear_for(layout_of([(A, {"cpu": 1000})]), {A: {"cpu": 1500}})
    assert gone == [old] and spares.held() == [new]
    # Enough room beside the spares: none goes.
    assert spares.clear_for(layout_of([(B, {"cpu": 500})]), {B: {"cpu": 2000}}) == []
    assert spares.expired(2.4) == []
    assert spares.expired(2.5) == [new] and len(spares) == 0
