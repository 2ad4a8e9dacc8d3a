"""The Ray part of ``gang_bench.py``: gang grants and reservations on a real cluster.

A private 1 head + 3 worker ``ray.cluster_utils.Cluster`` (2 CPUs each, 127.0.0.1), the
coordinator deployed on it, and interleaved rounds of, one operation at a time:

* ``raw``: a no-op call of a ``num_cpus=0`` async actor (the floor of one Ray call);
* ``plain``: ``acquire({"cpu": 1})`` + ``release``, reserved at first use (the default:
  no placement group is made, as none is used);
* ``reserved``: the same with ``reserve=True``: a placement group of one bundle made and
  ready before the grant is told, removed at the release;
* ``gang``: a 4-bundle ``STRICT_SPREAD`` gang of 1 CPU each (one bundle per node),
  reserved the same way.

Asked again at once after a release, ``reserved`` and ``gang`` find their group kept as
a spare (``core/spares.py``); ``reserved_new`` and ``gang_new`` are the same asked after
the cluster has been idle for a while (``IDLE_S``: spares gone, Ray's view caught up), so
that Ray makes a new group: what a lease that fits costs the first time.

Per operation: the grant's latency (the ``acquire`` alone) and the whole cycle's
(acquire + release, confirmed). Figures are medians over rounds of the per-round medians.
Targets: a gang grant at most 2x a one-node lease's (reserved alike), and a plain cycle at
least 0.3x the rate of raw calls.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray
from ray.cluster_utils import Cluster
from rich.console import Console
from rich.table import Table

from anya_resource import ResourceManager
from anya_resource.actors import deploy
from benchtools import on_loopback

POLICY = {"heartbeat_s": 0.5, "reserve": {"memory": 0, "cpu": 0}}
KINDS = ("raw", "plain", "reserved", "gang", "reserved_new", "gang_new")
IDLE_S = 1.3  # past core/spares.KEEP_S and Ray's view lag: nothing is reused
NEW_PER_ROUND = 4  # each waits IDLE_S first


@ray.remote(num_cpus=0)
class Echo:
    async def noop(self) -> None:
        return None


async def one(kind: str, manager: ResourceManager, echo: Any) -> tuple[float, float]:
    """One operation of ``kind``: (grant latency, whole cycle), seconds."""
    start = time.perf_counter()
    if kind == "raw":
        await echo.noop.remote()
        took = time.perf_counter() - start
        return took, took
    if kind.startswith("gang"):
        lease = await manager.acquire(bundles=[{"cpu": 1}] * 4, strategy="STRICT_SPREAD")
    else:
        lease = await manager.acquire({"cpu": 1}, reserve=kind != "plain")
    granted = time.perf_counter() - start
    await manager.release(lease)
    return granted, time.perf_counter() - start


async def rounds(
    manager: ResourceManager, echo: Any, count: int, per_round: int
) -> dict[str, list[tuple[float, float]]]:
    """Per kind, each round's median (grant, cycle); kinds interleaved within a round."""
    medians: dict[str, list[tuple[float, float]]] = {kind: [] for kind in KINDS}
    for _ in range(count):
        for kind in KINDS:
            fresh = kind.endswith("_new")
            samples = []
            for _ in range(NEW_PER_ROUND if fresh else per_round):
                if fresh:
                    await asyncio.sleep(IDLE_S)
                samples.append(await one(kind, manager, echo))
            medians[kind].append(
                (statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples))
            )
    return medians


def ray_bench(quick: bool = False) -> dict[str, Any]:
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False}
    )
    for _ in range(3):
        cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="ERROR")
    try:
        on_loopback()
        return asyncio.run(_measure(quick))
    finally:
        deploy.forget_handles()
        ray.shutdown()
        cluster.shutdown()


async def _measure(quick: bool) -> dict[str, Any]:
    manager = await ResourceManager.new(policy=POLICY)
    echo = Echo.remote()  # type: ignore[attr-defined]
    await _eventually(lambda: _nodes_ready(manager))
    await rounds(manager, echo, 1, 5)  # warm-up: workers, caches, the first groups
    count, per_round = (3, 10) if quick else (7, 30)
    medians = await rounds(manager, echo, count, per_round)
    await manager.close()
    grant = {k: statistics.median(m[0] for m in medians[k]) for k in KINDS}
    cycle = {k: statistics.median(m[1] for m in medians[k]) for k in KINDS}
    return {
        "rounds": count,
        "per_round": per_round,
        "grant_s": grant,
        "cycle_s": cycle,
        "gang_grant_vs_reserved_one_node": grant["gang"] / grant["reserved"],
        "new_gang_grant_vs_new_one_node": grant["gang_new"] / grant["reserved_new"],
        "gang_grant_vs_plain_one_node": grant["gang"] / grant["plain"],
        "plain_cycle_rate_vs_raw": cycle["raw"] / cycle["plain"],
        "reserved_cycle_rate_vs_raw": cycle["raw"] / cycle["reserved"],
        "targets": {"gang_grant_ratio_at_most": 2.0, "plain_cycle_rate_at_least": 0.3},
    }


async def _nodes_ready(manager: ResourceManager) -> bool:
    return len((await manager.check_resource_health()).nodes) == 4


async def _eventually(check: Callable[[], Awaitable[bool]], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise RuntimeError("the cluster's agents did not all report")
        await asyncio.sleep(0.2)


def show_ray(result: dict[str, Any], console: Console) -> None:
    table = Table(title="Grants on 1+3 nodes (medians, ms)")
    for column in ("operation", "grant", "acquire+release", "rate vs raw"):
        table.add_column(column, justify="left" if column == "operation" else "right")
    names = {
        "raw": "raw actor call",
        "plain": "one-node lease, reserved at first use",
        "reserved": "one-node lease, reserved at grant",
        "gang": "4-bundle STRICT_SPREAD gang",
        "reserved_new": "same, first time (new group)",
        "gang_new": "gang, first time (new group)",
    }
    raw = result["cycle_s"]["raw"]
    for kind in KINDS:
        table.add_row(
            names[kind],
            f"{result['grant_s'][kind] * 1e3:.2f}",
            f"{result['cycle_s'][kind] * 1e3:.2f}",
            f"{raw / result['cycle_s'][kind]:.2f}x",
        )
    console.print(table)
    console.print(
        f"gang grant / one-node grant reserved alike: "
        f"[bold]{result['gang_grant_vs_reserved_one_node']:.2f}x[/bold] again, "
        f"[bold]{result['new_gang_grant_vs_new_one_node']:.2f}x[/bold] the first time "
        "(target at most 2x); "
        f"plain cycle rate vs raw: [bold]{result['plain_cycle_rate_vs_raw']:.2f}x[/bold] "
        "(target at least 0.3x)"
    )
