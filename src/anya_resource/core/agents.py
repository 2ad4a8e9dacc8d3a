"""The node agents as the coordinator hears them: when silence makes a node lost, and
what a node may grant at most.

A node is lost when its agent has not beaten for ``lost_after(policy)`` seconds: since
its last beat, or, if it never beat for this coordinator, since its agent was started
(or found), plus ``AGENT_START_GRACE_S`` (an agent starting on a loaded machine needs
a while, but one that was paused or wedged before a restart must not count forever).
Time in which the coordinator itself could hear nobody (a stalled event loop) is never
counted as an agent's silence (``forgive``).

Grantable capacity follows the machine (docs/architecture.md, "Adaptive allocation"):
what Ray reports for the node, capped by what its agent measured of it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from anya_resource.config import Policy
from anya_resource.quantities import MILLI

AGENT_START_GRACE_S = 15.0  # an agent that never beat yet may be starting: this much more
LOST_AFTER_MIN_S = 10.0  # never lose a node sooner, however short the heartbeat
STALL_S = 0.5  # a wake-up of the node loop this much late is the coordinator's own stall


def lost_after(policy: Policy) -> float:
    """Seconds of an agent's silence after which its node counts as lost."""
    return max(LOST_AFTER_MIN_S, policy.heartbeat_s * 3 * policy.health.missed_heartbeats)


@dataclass
class AgentWatch:
    """When each node's agent was started (or found) and last heard, on one clock."""

    started: dict[str, float] = field(default_factory=dict)
    heard: dict[str, float] = field(default_factory=dict)

    def agent_started(self, node_id: str, now: float) -> None:
        self.started[node_id] = now

    def beat(self, node_id: str, now: float) -> None:
        self.heard[node_id] = now

    def forget(self, node_id: str) -> None:
        self.started.pop(node_id, None)
        self.heard.pop(node_id, None)

    def forgive(self, seconds: float) -> None:
        """The coordinator could hear nobody for ``seconds``: nobody was silent then."""
        for table in (self.heard, self.started):
            for node_id in table:
                table[node_id] += seconds

    def lost(self, node_ids: Iterable[str], now: float, policy: Policy) -> set[str]:
        """The nodes among ``node_ids`` whose agent has been silent too long."""
        limit = lost_after(policy)
        return {node_id for node_id in node_ids if now - self._heard(node_id, now) > limit}

    def silence(self, now: float) -> dict[str, float]:
        """Seconds since each node's agent last beat (the nodes that ever beat)."""
        return {node_id: now - heard for node_id, heard in self.heard.items()}

    def _heard(self, node_id: str, now: float) -> float:
        heard = self.heard.get(node_id)
        if heard is not None:
            return heard
        return self.started.get(node_id, now) + AGENT_START_GRACE_S


def stall(woke: float, now: float, interval: float) -> float:
    """How long a loop that slept ``interval`` from ``woke`` was held up, if past
    ``STALL_S`` (else 0): time in which nobody could be heard."""
    late = now - woke - interval
    return late if late > STALL_S else 0.0


def outside_use(
    limits: Mapping[str, int], available: Mapping[str, int], ours: Mapping[str, int]
) -> dict[str, int]:
    """What others take of what a node may grant (its ``limits``): the part of the
    limits that is neither available in Ray nor held by our placement groups.

    Work placed in a group uses the group's own resources, not the node's, so it is not
    counted; plain Ray tasks and actors, and other people's groups, are. What Ray counts
    on top of our limits (Ray's logical CPUs past the machine's, the reserve) is not ours
    to grant anyway, and takes nothing from them.
    """
    return {
        r: max(0, limits.get(r, 0) - available.get(r, 0) - ours.get(r, 0))
        for r in ("cpu", "gpu", "memory")
    }


def capped_capacity(
    reported: Mapping[str, int],
    memory_total: int | None = None,
    gpus: int = 0,
) -> dict[str, int]:
    """A node's grantable capacity: Ray's figure, never more memory or GPUs than the
    machine measured.

    CPUs are Ray's logical ones as they are: Ray schedules by them, a lease reserves
    them in Ray (a placement group), and a node started with more than its cores (for
    work that waits on I/O) is meant to run that many; the machine's measured CPU load
    weighs on placement and pressure instead (``health_factor``, ``pressure.cpu_high``).
    ``None`` for a measure the agent has not sent yet; ``gpus`` 0 may only mean NVML is
    missing, so then Ray's GPU figure stands.
    """
    capacity = dict(reported)
    if memory_total is not None:
        capacity["memory"] = min(capacity.get("memory", 0), memory_total)
    if gpus > 0:
        capacity["gpu"] = min(capacity.get("gpu", 0), gpus * MILLI)
    return capacity
