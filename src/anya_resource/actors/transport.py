"""What the coordinator needs from outside its process, behind two small interfaces.

``Clock`` gives the time; ``Transport`` gives Ray's view of the cluster (alive nodes,
ended jobs), starts node agents, and keeps what must outlive the coordinator (the
policy, the epoch, the secret and the journal, in Ray's GCS store: ``actors/store.py``).
``RayTransport`` and ``SystemClock`` are the real ones; the tests also run the
coordinator on a fake transport and a fake clock, with no Ray at all
(tests/unit/test_coordinator_shell.py), since it decides nothing itself.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from anya_resource.actors import boundary, store
from anya_resource.actors.naming import NAMESPACE, agent_name
from anya_resource.actors.reservations import Groups
from anya_resource.core.journal import Write
from anya_resource.quantities import MILLI


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock seconds: lease expiries and deadlines, shared with clients."""
        ...

    def monotonic(self) -> float:
        """Seconds that never go back: how late a loop woke up."""
        ...


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class Transport(Groups, Protocol):
    def alive_nodes(self) -> dict[str, dict[str, int]]:
        """Every alive node's capacity as Ray reports it, in core units (blocking)."""
        ...

    def ended_jobs(self) -> set[str]:
        """The ids of Ray jobs that have ended (blocking)."""
        ...

    def start_agent(self, node_id: str, heartbeat_s: float) -> Any:
        """Start (or find) the node's agent; a handle that stands for it."""
        ...

    def available_nodes(self) -> dict[str, dict[str, int]]:
        """What Ray has available on each alive node now, in core units (blocking)."""
        ...

    def stored_policy(self) -> bytes | None: ...

    def keep_policy(self, policy_json: bytes) -> None: ...

    def next_epoch(self) -> int: ...

    def cluster_secret(self) -> bytes: ...

    def journal(self) -> dict[str, bytes]: ...

    def write_now(self, write: Write) -> None: ...

    async def write(self, write: Write) -> None:
        """``write``, retried until it is in the store (see ``store.write``)."""
        ...


def ray_capacity(node: dict[str, Any]) -> dict[str, int]:
    """A node's capacity in core units, from what ``ray.nodes()`` reports for it."""
    return ray_amounts(node.get("Resources", {}))


def ray_amounts(resources: dict[str, Any]) -> dict[str, int]:
    """Ray's figures of a node (``CPU``, ``GPU``, ``memory``) in core units."""
    return {
        "memory": int(resources.get("memory", 0)),
        "cpu": round(resources.get("CPU", 0) * MILLI),
        "gpu": round(resources.get("GPU", 0) * MILLI),
        "disk": 0,
    }


class RayTransport:
    """The coordinator's transport on a real Ray cluster."""

    def alive_nodes(self) -> dict[str, dict[str, int]]:
        import ray

        nodes = ray.nodes()  # type: ignore[no-untyped-call]
        return {n["NodeID"]: ray_capacity(n) for n in nodes if n.get("Alive")}

    def ended_jobs(self) -> set[str]:
        import ray

        return {
            job["JobID"]
            for job in ray._private.state.jobs()  # type: ignore[no-untyped-call]
            if job.get("IsDead")
        }

    def start_agent(self, node_id: str, heartbeat_s: float) -> Any:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from anya_resource.actors.agent import NodeAgent

        return boundary.send(
            lambda: NodeAgent.options(  # type: ignore[attr-defined]
                name=agent_name(node_id),
                namespace=NAMESPACE,
                lifetime="detached",
                get_if_exists=True,
                num_cpus=0,
                max_restarts=-1,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
            ).remote(node_id, heartbeat_s),
            f"the agent of node {node_id}",
        )

    def available_nodes(self) -> dict[str, dict[str, int]]:
        import ray._private.state

        per_node = ray._private.state.available_resources_per_node()  # type: ignore[no-untyped-call]
        return {node_id: ray_amounts(resources) for node_id, resources in per_node.items()}

    def create_group(
        self,
        name: str,
        bundles: list[dict[str, float]],
        selectors: list[dict[str, str]],
        strategy: str,
    ) -> tuple[str, Any]:
        from ray.util.placement_group import placement_group

        group = placement_group(
            bundles,
            strategy=strategy,
            name=name,
            lifetime="detached",
            bundle_label_selector=selectors,
        )
        return group.id.hex(), group

    async def group_ready(self, handle: Any) -> None:
        await handle.ready()

    def remove_group(self, handle: Any) -> None:
        from ray.util.placement_group import remove_placement_group

        remove_placement_group(handle)

    def our_groups(self) -> dict[str, tuple[str, Any]]:
        from ray._raylet import PlacementGroupID
        from ray.util.placement_group import PlacementGroup, placement_group_table

        from anya_resource.actors.reservations import GROUP_PREFIX

        found: dict[str, tuple[str, Any]] = {}
        for group_id, row in placement_group_table().items():
            name = row.get("name") or ""
            if name.startswith(GROUP_PREFIX) and row.get("state") != "REMOVED":
                handle = PlacementGroup(PlacementGroupID.from_hex(group_id))
                found[name] = (group_id, handle)
        return found

    def stored_policy(self) -> bytes | None:
        return store.stored_policy()

    def keep_policy(self, policy_json: bytes) -> None:
        store.keep_policy(policy_json)

    def next_epoch(self) -> int:
        return store.next_epoch()

    def cluster_secret(self) -> bytes:
        return store.cluster_secret()

    def journal(self) -> dict[str, bytes]:
        return store.journal()

    def write_now(self, write: Write) -> None:
        store.write_now(write)

    async def write(self, write: Write) -> None:
        await store.write(write)


__all__ = ["Clock", "RayTransport", "SystemClock", "Transport", "ray_capacity"]
