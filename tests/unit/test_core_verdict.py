"""The health verdict: pressure, silent agents and long waits make the cluster unhealthy."""

from __future__ import annotations

from anya_resource.core import NodeSample
from anya_resource.core.verdict import judge_health
from tests.unit.core_support import GIB, Harness, make_policy


def harness() -> Harness:
    h = Harness(make_policy(heartbeat_s=1.0, health={"missed_heartbeats": 3}))
    h.node("a" * 56, cpu=4, memory=8 * GIB)
    h.node("b" * 56, cpu=4, memory=8 * GIB)
    return h


def verdict(h: Harness, silent_s: dict[str, float] | None = None) -> list[str]:
    return judge_health(h.s.state, h.snap(), silent_s or {}, h.policy).reasons


def test_a_quiet_cluster_is_healthy_and_nobody_missed_a_heartbeat() -> None:
    h = harness()
    result = judge_health(h.s.state, h.snap(), {"a" * 56: 0.4}, h.policy)
    assert result.reasons == []
    assert result.missed == {"a" * 56: 0, "b" * 56: 0}


def test_memory_pressure_names_the_node() -> None:
    h = harness()
    h.s.health("a" * 56, NodeSample(memory_percent=97.0, cpu_percent=10.0), h.now)
    assert verdict(h) == ["node aaaaaaaaaaaa under memory pressure"]


def test_a_silent_agent_counts_missed_heartbeats_from_the_threshold_on() -> None:
    h = harness()
    assert verdict(h, {"b" * 56: 2.9}) == []  # 2 missed, 3 are needed
    result = judge_health(h.s.state, h.snap(), {"b" * 56: 3.5}, h.policy)
    assert result.missed["b" * 56] == 3
    assert result.reasons == ["node bbbbbbbbbbbb missed 3 heartbeats"]


def test_a_long_wait_names_the_binding_resource() -> None:
    h = harness()
    h.acquire({"cpu": 4}, node="a" * 56)
    h.acquire({"cpu": 4}, node="b" * 56)
    h.wait({"cpu": 1})
    h.clock.advance(h.policy.health.wait_threshold_s - 1)
    assert verdict(h) == []  # not waited long enough yet
    h.clock.advance(2)
    (reason,) = verdict(h)
    assert reason.startswith(f"requests waiting {h.policy.health.wait_threshold_s + 1:.1f} s")
    assert "cpu" in reason
