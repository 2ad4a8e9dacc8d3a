"""Where the workload runs: an embedded multi-node Ray on loopback, or a real cluster.

The embedded cluster is a ``ray.cluster_utils.Cluster``: one head and ``nodes - 1``
workers on this machine, all equal (the same logical CPUs and memory), every
process bound to 127.0.0.1.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from anya_resource.actors.deploy import bind_to_loopback

if TYPE_CHECKING:
    from anya_resource.client import SyncResourceManager

GiB = 1024**3
OBJECT_STORE_BYTES = 256 * 1024**2  # per node; the workload ships ~1 MiB of inputs
AGENTS_TIMEOUT_S = 90.0  # agents start slowly on a loaded machine


@dataclass(frozen=True)
class NodeShape:
    """What each embedded node offers Ray (equal nodes: the balance is comparable)."""

    cpus: int = 2
    memory: int = 4 * GiB


def loopback_only() -> None:
    """Fail loudly rather than let a demo or benchmark listen beyond this machine."""
    import ray

    addresses = {node["NodeManagerAddress"] for node in ray.nodes()}  # type: ignore[no-untyped-call]
    if addresses != {"127.0.0.1"}:
        raise RuntimeError(f"Ray is not bound to loopback: {sorted(addresses)}")


def node_labels() -> dict[str, str]:
    """Node id -> "head" / "worker N" (alive nodes, in Ray's order)."""
    import ray

    labels: dict[str, str] = {}
    workers = 0
    for node in ray.nodes():  # type: ignore[no-untyped-call]
        if not node.get("Alive"):
            continue
        if "node:__internal_head__" in node.get("Resources", {}):
            labels[node["NodeID"]] = "head"
        else:
            workers += 1
            labels[node["NodeID"]] = f"worker {workers}"
    return labels


def wait_for_agents(manager: SyncResourceManager, nodes: int) -> None:
    """Until the agent of every node has reported once (their readings fill the tables)."""
    deadline = time.monotonic() + AGENTS_TIMEOUT_S
    while len(manager.snapshot().get("health", {})) < nodes:
        if time.monotonic() > deadline:
            raise TimeoutError(f"not every node agent reported within {AGENTS_TIMEOUT_S:g} s")
        time.sleep(0.2)


@contextmanager
def embedded_cluster(
    nodes: int, shape: NodeShape | None = None, dashboard: bool = False
) -> Iterator[str]:
    """Start 1 head + ``nodes - 1`` workers, connect to it; yield its address; shut all down.

    ``dashboard``: the head also runs Ray's dashboard, the job server the job queue
    submits to, on 127.0.0.1.
    """
    bind_to_loopback()
    import ray
    from ray.cluster_utils import Cluster

    from anya_resource.actors import deploy

    shape = shape or NodeShape()
    # Ray logs each node's start at INFO before ray.init() could quieten it.
    logging.getLogger("ray").setLevel(logging.WARNING)
    node_args: dict[str, Any] = {
        "num_cpus": shape.cpus,
        "memory": shape.memory,
        "object_store_memory": OBJECT_STORE_BYTES,
    }
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            **node_args,
            "include_dashboard": dashboard,
            **({"dashboard_host": "127.0.0.1"} if dashboard else {}),
        },
    )
    try:
        for _ in range(nodes - 1):
            cluster.add_node(**node_args)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level=logging.ERROR, log_to_driver=False)
        loopback_only()
        yield str(cluster.address)
    finally:
        deploy.forget_handles()
        ray.shutdown()
        cluster.shutdown()  # type: ignore[no-untyped-call]


@contextmanager
def existing_cluster(address: str) -> Iterator[str]:
    """Join a running cluster; leave it running (and the manager deployed) afterwards."""
    if address.rsplit(":", 1)[0] in ("127.0.0.1", "localhost"):
        bind_to_loopback()  # or this driver would advertise the machine's address to it
    import ray

    from anya_resource.actors import deploy

    ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
    try:
        yield address
    finally:
        deploy.forget_handles()
        ray.shutdown()
