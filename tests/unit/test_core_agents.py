"""core/agents.py: when silence loses a node, a stall forgiven, capacity capped."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from anya_resource.config import Policy
from anya_resource.core.agents import (
    AGENT_START_GRACE_S,
    LOST_AFTER_MIN_S,
    STALL_S,
    AgentWatch,
    capped_capacity,
    lost_after,
    stall,
)
from anya_resource.quantities import MILLI

POLICY = Policy.default()
LIMIT = lost_after(POLICY)


def test_lost_after_follows_the_policy_with_a_floor() -> None:
    slow = Policy.from_dict({"heartbeat_s": 5, "health": {"missed_heartbeats": 2}})
    assert lost_after(slow) == 30.0
    fast = Policy.from_dict({"heartbeat_s": 0.1})
    assert lost_after(fast) == LOST_AFTER_MIN_S


def test_silence_counts_from_the_last_beat() -> None:
    watch = AgentWatch()
    watch.agent_started("n", 0.0)
    watch.beat("n", 100.0)
    assert watch.lost(["n"], 100.0 + LIMIT, POLICY) == set()
    assert watch.lost(["n"], 100.0 + LIMIT + 0.01, POLICY) == {"n"}
    assert watch.silence(105.0) == {"n": 5.0}


def test_an_agent_that_never_beat_has_the_start_grace() -> None:
    watch = AgentWatch()
    watch.agent_started("n", 10.0)
    assert watch.lost(["n"], 10.0 + LIMIT + AGENT_START_GRACE_S, POLICY) == set()
    assert watch.lost(["n"], 10.0 + LIMIT + AGENT_START_GRACE_S + 0.01, POLICY) == {"n"}
    assert watch.lost(["unknown"], 1e9, POLICY) == set()  # no agent yet: it is started now


@given(st.floats(0, 1e4), st.floats(0, 1e4))
def test_a_forgiven_stall_never_makes_a_node_lost(silent: float, stalled: float) -> None:
    watch = AgentWatch()
    watch.beat("n", 0.0)
    watch.agent_started("m", 0.0)
    before = watch.lost(["n", "m"], silent, POLICY)
    watch.forgive(stalled)
    assert watch.lost(["n", "m"], silent + stalled, POLICY) == before


def test_forget_drops_both_clocks() -> None:
    watch = AgentWatch()
    watch.agent_started("n", 0.0)
    watch.beat("n", 1.0)
    watch.forget("n")
    assert watch.silence(5.0) == {} and watch.started == {}


def test_a_stall_is_lateness_past_the_threshold() -> None:
    assert stall(0.0, 1.0 + STALL_S, 1.0) == 0.0
    assert stall(0.0, 1.0 + STALL_S + 1.0, 1.0) == STALL_S + 1.0


def test_capacity_is_rays_figure_capped_by_the_machine() -> None:
    reported = {"memory": 100, "cpu": 8 * MILLI, "gpu": 2 * MILLI, "disk": 0}
    assert capped_capacity(reported) == reported
    capped = capped_capacity(reported, memory_total=50, gpus=1)
    # Ray's logical CPUs stand: Ray schedules (and a lease reserves) by them.
    assert capped == {"memory": 50, "cpu": 8 * MILLI, "gpu": MILLI, "disk": 0}
    # Never raised above Ray's figure; no GPUs measured may only mean NVML is missing.
    assert capped_capacity(reported, memory_total=500, gpus=0) == reported
