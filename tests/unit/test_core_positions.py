"""core/positions.py: where a queued job stands, what holds it back, when it starts."""

from __future__ import annotations

from anya_resource.core import Holder
from tests.unit.core_support import Harness, make_policy


def job(actor: str) -> Holder:
    return Holder(pid=len(actor), create_time=1.0, node_id="n1", actor_id=actor)


def test_positions_follow_the_order_the_queue_serves_with_reasons_and_an_estimate() -> None:
    h = Harness(make_policy(lease={"preemption_grace_s": 5}, aging={"per_second": 0}))
    h.node("n1", cpu=4)
    h.acquire({"cpu": 4}, priority="low", preemptible=True, holder=job("running"))
    h.wait({"cpu": 4}, priority="high", holder=job("first"))
    h.wait({"cpu": 2}, priority="normal", holder=job("second"))
    h.wait({"cpu": 1}, priority="normal", holder=job("third"))
    found = h.s.queue_positions(["first", "second", "third", "running", "absent"], h.now)
    assert set(found) == {"first", "second", "third"}  # only those that wait
    assert [found[a]["position"] for a in ("first", "second", "third")] == [1, 2, 3]
    assert all(row["waiting"] == 3 for row in found.values())
    first = found["first"]
    assert first["effective_priority"] > found["second"]["effective_priority"]
    assert "being taken back for it" in first["held_back_by"]
    assert first["start_by"] == h.now + 5  # the revoked lease's grace runs out then
    assert found["second"]["start_by"] is None
    assert "cpu: the most free on any node is 0, 2 needed" in found["second"]["held_back_by"]


def test_a_waiter_that_would_fit_but_for_the_head_says_so() -> None:
    h = Harness(make_policy(aging={"per_second": 0}))
    h.node("n1", cpu=4)
    h.acquire({"cpu": 3}, holder=job("running"))
    h.wait({"cpu": 4}, priority="high", holder=job("head"))
    h.wait({"cpu": 1}, priority="low", holder=job("small"))
    found = h.s.queue_positions(["small"], h.now)
    assert "come before it" in found["small"]["held_back_by"]
    assert found["small"]["position"] == 2
