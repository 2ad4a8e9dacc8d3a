"""Cluster-wide connection caps on a 1 head + 3 worker cluster, against real servers.

PostgreSQL (pgserver, ``max_connections = 8``): 60 Ray tasks spread over the four
nodes run queries through ``acquire_connection("pg")`` while a monitor samples
``pg_stat_activity``; the same tasks connecting directly run into "too many clients".
A Bitcoin Core-like node (``-rpcthreads=2 -rpcworkqueue=2``): 100 concurrent callers
through the pool get no 503, the same callers straight to the node do.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import ray
from ray.cluster_utils import Cluster

from anya_resource import ResourceManager, SyncResourceManager
from anya_resource.pools import AsyncBitcoinRpc, RpcWorkQueueExceeded, pool_statistics
from anya_resource.pools.credentials import CookieAuth
from anya_resource.pools.http_client import tls_context
from tests.integration.test_pools_bitcoind import FakeBitcoind
from tests.integration.test_pools_postgres import Postgres
from tests.raytools import GiB, Loop, deployed, local_cluster

pytestmark = [pytest.mark.ray, pytest.mark.cluster]

PG_SIZE = 4  # the server allows 8: the pool, the monitor, and room to spare
PG_APP = "anya-resource:pg"
TASKS = 60
THREADS_PER_TASK = 3


@pytest.fixture(scope="module")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    server = Postgres(tmp_path_factory.mktemp("pg"), max_connections=8)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeBitcoind]:
    server = FakeBitcoind(rpcthreads=2, rpcworkqueue=2, work_s=0.01)
    server.write_cookie(tmp_path_factory.mktemp("bitcoind"))
    yield server.start()
    server.stop()


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with local_cluster(workers=3, cpus=2, memory=2 * GiB) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def loop(cluster: Cluster) -> Loop:
    return Loop()


@pytest.fixture(scope="module")
def manager(loop: Loop, pg: Postgres, node: FakeBitcoind, tmp_path_factory: Any) -> ResourceManager:
    cookie_file = next(Path(tmp_path_factory.getbasetemp()).glob("bitcoind*/.cookie"))
    policy = {
        "heartbeat_s": 0.2,
        "reserve": {"memory": 0, "cpu": 0},
        "lease": {"default_ttl": 20.0, "renew_every": 5.0},
        "pools": {
            "pg": {
                "kind": "postgres",
                "dsn": pg.uri,
                "size": PG_SIZE,
                "idle_timeout_s": 30.0,
                "validate_idle_s": 0.5,
            },
            "rpc": {
                "kind": "bitcoin-rpc",
                "url": node.url,
                "cookie_file": str(cookie_file),
                "size": node.rpcthreads + node.rpcworkqueue,
            },
        },
    }
    return deployed(loop, policy, nodes=4)


# -- what runs in the Ray tasks ------------------------------------------------------------

_in_this_worker: dict[str, SyncResourceManager] = {}


def _manager_here() -> SyncResourceManager:
    """One blocking manager per worker process: its pool outlives a single task."""
    if "sync" not in _in_this_worker:
        _in_this_worker["sync"] = SyncResourceManager.connect()
    return _in_this_worker["sync"]


def _query_pooled(sync: SyncResourceManager) -> None:
    with sync.acquire_connection("pg", timeout=60) as conn:
        conn.connection.execute("SELECT pg_sleep(0.02)")
        conn.connection.commit()


def _query_direct(uri: str) -> None:
    with psycopg.connect(uri) as conn:
        conn.execute("SELECT pg_sleep(0.02)")


@ray.remote(num_cpus=1, scheduling_strategy="SPREAD")
def pg_task(uri: str, direct: bool) -> dict[str, Any]:
    """Three threads, each running two queries: through the pool, or straight to the server."""
    sync = None if direct else _manager_here()
    errors: list[str] = []
    barrier = threading.Barrier(THREADS_PER_TASK)

    def worker() -> None:
        barrier.wait()
        for _ in range(2):
            try:
                _query_direct(uri) if sync is None else _query_pooled(sync)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=worker) for _ in range(THREADS_PER_TASK)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    stats = None if sync is None else pool_statistics(sync, "pg")
    return {
        "node": ray.get_runtime_context().get_node_id(),
        "pid": os.getpid(),
        "errors": errors,
        "stats": None if stats is None else stats.__dict__,
    }


async def _rpc_callers(url: str, cookie_path: str, callers: int, direct: bool) -> list[str]:
    manager = None if direct else await ResourceManager.new()
    auth = CookieAuth("rpc", cookie_path)

    async def one() -> str:
        try:
            if manager is None:
                http = httpx.AsyncClient(auth=auth, verify=tls_context(), timeout=60)
                async with http:
                    await AsyncBitcoinRpc(http, url).call("getblockcount")
            else:
                async with manager.acquire_connection("rpc", timeout=60) as conn:
                    await conn.connection.call("getblockcount")
            return "ok"
        except RpcWorkQueueExceeded:
            return "503"

    try:
        return list(await asyncio.gather(*(one() for _ in range(callers))))
    finally:
        if manager is not None:
            await manager.close()


@ray.remote(num_cpus=0.5, scheduling_strategy="SPREAD")
def rpc_task(url: str, cookie_path: str, callers: int, direct: bool) -> list[str]:
    return asyncio.run(_rpc_callers(url, cookie_path, callers, direct))


# -- the monitor ----------------------------------------------------------------------------


class Sampler:
    """Samples, in a thread, how many connections the server has: the pool's, and all."""

    def __init__(self, pg: Postgres) -> None:
        self.pg = pg
        self.max_pool = 0
        self.max_clients = 0
        self.samples = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self.monitor = psycopg.connect(self.pg.uri, autocommit=True, application_name="sampler")
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(timeout=10)
        self.monitor.close()

    def _run(self) -> None:
        query = (
            "SELECT count(*) FILTER (WHERE application_name = %s), count(*) "
            "FROM pg_stat_activity WHERE backend_type = 'client backend'"
        )
        while not self.stopping.is_set():
            row = self.monitor.execute(query, (PG_APP,)).fetchone()
            assert row is not None
            self.max_pool = max(self.max_pool, row[0])
            self.max_clients = max(self.max_clients, row[1])
            self.samples += 1
            time.sleep(0.005)


def _run_pg_tasks(pg: Postgres, count: int, direct: bool) -> tuple[list[dict[str, Any]], Sampler]:
    with Sampler(pg) as sampler:
        results = ray.get([pg_task.remote(pg.uri, direct) for _ in range(count)], timeout=240)
    return results, sampler


def _errors(results: list[dict[str, Any]]) -> list[str]:
    return [error for result in results for error in result["errors"]]


# -- the tests ---------------------------------------------------------------------------------


def test_connecting_directly_runs_into_too_many_clients(
    manager: ResourceManager, pg: Postgres
) -> None:
    results, sampler = _run_pg_tasks(pg, TASKS, direct=True)
    errors = _errors(results)
    print(
        f"\ndirect: {len(errors)} of {TASKS * THREADS_PER_TASK * 2} queries refused, "
        f"up to {sampler.max_clients} clients on the server"
    )
    assert any("too many clients already" in error for error in errors), errors[:3]


def test_sixty_tasks_through_the_pool_never_pass_its_size(
    manager: ResourceManager, pg: Postgres
) -> None:
    started = time.monotonic()
    results, sampler = _run_pg_tasks(pg, TASKS, direct=False)
    took = time.monotonic() - started
    print(
        f"\npooled: {TASKS} tasks in {took:.1f} s on {len({r['node'] for r in results})} "
        f"nodes; at most {sampler.max_pool} pool connections (size {PG_SIZE}) in "
        f"{sampler.samples} samples"
    )
    assert _errors(results) == []
    assert len({result["node"] for result in results}) == 4
    assert sampler.samples > 20
    assert 0 < sampler.max_pool <= PG_SIZE


@ray.remote(num_cpus=1, scheduling_strategy="SPREAD")
def warm_task() -> int:
    """One query, one connection left warm in this worker's pool."""
    _query_pooled(_manager_here())
    return os.getpid()


def test_server_restarted_under_the_pool(manager: ResourceManager, pg: Postgres) -> None:
    # Leave warm connections in the workers' pools, one task at a time so that nobody
    # waits (waiting elsewhere would make the pools give their slots back), then
    # restart the server under them.
    time.sleep(1.2)  # past the last "others wait" hint: what is given back stays warm
    for _ in range(PG_SIZE):
        ray.get(warm_task.remote(), timeout=60)
    assert pg.connections(PG_APP) > 0
    pg.restart()
    started = time.monotonic()
    results, sampler = _run_pg_tasks(pg, 24, direct=False)
    took = time.monotonic() - started
    # Counts since each worker's pool began; nothing failed a check before the restart.
    replaced = sum({r["pid"]: r["stats"]["validation_failures"] for r in results}.values())
    print(
        f"\nrestart: 24 tasks in {took:.1f} s, {replaced} dead connections replaced, "
        f"at most {sampler.max_pool} pool connections"
    )
    assert _errors(results) == []
    assert took < 60 and sampler.max_pool <= PG_SIZE


def test_hundred_rpc_callers_get_no_503_through_the_pool_and_503s_without(
    manager: ResourceManager, node: FakeBitcoind, tmp_path_factory: Any
) -> None:
    cookie_file = str(next(Path(tmp_path_factory.getbasetemp()).glob("bitcoind*/.cookie")))

    def run(direct: bool) -> list[str]:
        node.reset_counts()
        batches = [rpc_task.remote(node.url, cookie_file, 10, direct) for _ in range(10)]
        return [outcome for batch in ray.get(batches, timeout=240) for outcome in batch]

    pooled = run(direct=False)
    pooled_peak = node.max_arrived  # calls at the node at once, refused ones too
    direct = run(direct=True)
    print(
        f"\nrpc: through the pool {pooled.count('503')} x 503 of {len(pooled)} "
        f"(at most {pooled_peak} calls at the node at once); direct {direct.count('503')} "
        f"x 503 of {len(direct)} (at most {node.max_arrived} at once)"
    )
    assert pooled.count("ok") == 100 and pooled_peak <= node.rpcthreads + node.rpcworkqueue
    assert direct.count("503") > 0
