"""Helpers for tests that run a real Ray: start, check loopback, wait for conditions."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import ray
from ray.cluster_utils import Cluster

from anya_resource import ResourceManager, SyncResourceManager
from anya_resource.actors import deploy

T = TypeVar("T")
GiB = 1024**3
FAST_FAILURE = {"health_check_period_ms": 100, "health_check_failure_threshold": 10}


def assert_loopback() -> None:
    addresses = {node["NodeManagerAddress"] for node in ray.nodes()}
    assert addresses == {"127.0.0.1"}, f"Ray is not on loopback: {addresses}"


@contextmanager
def local_ray(
    num_cpus: int = 4, memory: int = 8 * GiB, system_config: Mapping[str, Any] | None = None
) -> Iterator[None]:
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=False,
        logging_level="ERROR",
        _memory=memory,
        _system_config=dict(system_config) if system_config else None,
    )
    assert_loopback()
    try:
        yield
    finally:
        deploy.forget_handles()
        ray.shutdown()


@contextmanager
def sync_manager(policy: Mapping[str, Any], num_cpus: int = 2) -> Iterator[SyncResourceManager]:
    """A private one-node Ray (8 GiB) with the manager deployed by ``policy``, blocking."""
    with local_ray(num_cpus=num_cpus, memory=8 * GiB):
        manager = SyncResourceManager.connect(policy=policy)
        try:
            yield manager
        finally:
            manager.close()


def wait_until_idle(sync: SyncResourceManager, timeout: float = 15) -> dict[str, Any]:
    """Every lease back with the coordinator (warm ones after the policy's idle time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snap = sync.snapshot()
        if snap["leases"] == 0:
            return snap
        time.sleep(0.05)
    raise AssertionError(f"leases still held: {sync.leases()}")


@contextmanager
def local_cluster(
    workers: int = 3, cpus: int = 2, memory: int = 4 * GiB, dashboard: bool = False
) -> Iterator[Cluster]:
    """A 1 head + ``workers`` cluster; node ``i`` carries custom resource ``node{i}``.

    ``dashboard``: the head also runs Ray's dashboard (its job server) on 127.0.0.1.
    """
    head: dict[str, Any] = {"include_dashboard": dashboard}
    if dashboard:
        head["dashboard_host"] = "127.0.0.1"
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": cpus,
            "memory": memory,
            "resources": {"node0": 1},
            "_system_config": FAST_FAILURE,
            **head,
        },
    )
    for index in range(1, workers + 1):
        cluster.add_node(num_cpus=cpus, memory=memory, resources={f"node{index}": 1})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="ERROR")
    assert_loopback()
    try:
        yield cluster
    finally:
        deploy.forget_handles()
        ray.shutdown()
        cluster.shutdown()


class Loop:
    """One event loop in a thread for the whole module, as a long-lived client would have."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


def deployed(
    loop: Loop, policy: Mapping[str, Any], nodes: int, timeout: float = 60
) -> ResourceManager:
    """A manager on a fresh deployment of ``policy``, once the agents of ``nodes`` report."""
    manager = loop.run(ResourceManager.new(policy=policy))

    async def agents_report() -> bool:
        return len((await manager.check_resource_health()).nodes) == nodes

    loop.run(eventually(agents_report, timeout=timeout))
    return manager


async def eventually(
    check: Callable[[], Awaitable[Any]], timeout: float = 20.0, interval: float = 0.1
) -> Any:
    """Poll ``check`` until it returns something truthy; fail with its last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s; last value: {last!r}")


def node_of(resource: str) -> str:
    """The node id carrying a custom resource (``node1`` ...)."""
    for node in ray.nodes():
        if node["Alive"] and resource in node["Resources"]:
            return str(node["NodeID"])
    raise LookupError(resource)


def run_benchmark(script: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a benchmark script as a user would, with a private Ray of its own on loopback
    (no RAY_ADDRESS to join), and fail with its output if it did not exit 0."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    done = subprocess.run(
        [sys.executable, str(script), *args],
        cwd=script.resolve().parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr[-4000:]}"
    return done
