"""Whether the cluster is healthy, and why not: the decision behind ``check_resource_health``.

Unhealthy while a node is under measured pressure, a node's agent has missed
``health.missed_heartbeats`` heartbeats, or a request has waited longer than
``health.wait_threshold_s`` (the reason then names the binding bottleneck). Pure: the
caller passes how long each node's agent has been silent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from anya_resource.config import Policy
from anya_resource.core.bottleneck import binding
from anya_resource.core.state import ClusterState
from anya_resource.messages import Snapshot


@dataclass(frozen=True, slots=True)
class HealthVerdict:
    reasons: list[str]  # empty: healthy
    missed: dict[str, int]  # node id -> heartbeats missed


def judge_health(
    state: ClusterState,
    snapshot: Snapshot,
    silent_s: Mapping[str, float],
    policy: Policy,
) -> HealthVerdict:
    """``snapshot`` is ``Scheduler.snapshot(now)``; ``silent_s``, seconds since each
    node's last heartbeat (a node not in it counts as just heard)."""
    reasons: list[str] = []
    missed: dict[str, int] = {}
    for node_id, ledger in state.nodes.items():
        missed[node_id] = int(silent_s.get(node_id, 0.0) / policy.heartbeat_s)
        if ledger.pressured:
            pressure = "/".join(sorted(ledger.pressured))
            reasons.append(f"node {node_id[:12]} under {pressure} pressure")
        if missed[node_id] >= policy.health.missed_heartbeats:
            reasons.append(f"node {node_id[:12]} missed {missed[node_id]} heartbeats")
    oldest = max(snapshot["queue"]["oldest_wait"].values(), default=0.0)
    threshold = policy.health.wait_threshold_s
    if oldest > threshold:
        top = binding(snapshot["bottlenecks"])
        what = top["text"] if top else "capacity"
        reasons.append(f"requests waiting {oldest:.1f} s (> {threshold:g} s): {what}")
    return HealthVerdict(reasons, missed)
