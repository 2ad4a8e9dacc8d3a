"""Connection pools through the real client and coordinator, on a private single-node Ray:
a real PostgreSQL (pgserver), a Bitcoin Core-like JSON-RPC server and an HTTP server,
all on 127.0.0.1 or unix sockets.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import psycopg
import pytest
import ray

from anya_resource import (
    AcquireTimeout,
    InvalidRequest,
    ResourceConnection,
    ResourceManager,
    SyncResourceManager,
)
from anya_resource.pools import (
    ConnectionFailed,
    PooledConnection,
    RpcCallError,
    RpcWorkQueueExceeded,
    pool_statistics,
)
from tests.integration.test_manager import Loop
from tests.integration.test_pools_bitcoind import FakeBitcoind, client
from tests.integration.test_pools_postgres import Postgres
from tests.raytools import GiB, eventually, local_ray

pytestmark = pytest.mark.ray

PASSWORD_ENV = "ANYA_TEST_RPC_PASSWORD"


class Health(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture(scope="module")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    server = Postgres(tmp_path_factory.mktemp("pg"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def node() -> Iterator[FakeBitcoind]:
    server = FakeBitcoind(rpcthreads=2, rpcworkqueue=2, work_s=0.005).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def web() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def loop() -> Iterator[Loop]:
    with local_ray(num_cpus=4, memory=8 * GiB):
        yield Loop()


@pytest.fixture(scope="module")
def manager(loop: Loop, pg: Postgres, node: FakeBitcoind, web: str) -> Iterator[ResourceManager]:
    os.environ[PASSWORD_ENV] = "hunter2"  # read by the pool when it connects, never the file
    pg_pool = {"kind": "postgres", "dsn": pg.uri}
    policy = {
        "heartbeat_s": 0.2,
        "reserve": {"memory": 0, "cpu": 0},
        "lease": {"default_ttl": 10.0, "renew_every": 3.0},
        "pools": {
            "pg": {**pg_pool, "size": 3, "idle_timeout_s": 1.5, "leak_threshold_s": 1.0},
            "pgwarm": {**pg_pool, "size": 1, "idle_timeout_s": 60.0},
            "pgr": {**pg_pool, "size": 3, "idle_timeout_s": 60.0, "validate_idle_s": 0.1},
            "rpc": {
                "kind": "bitcoin-rpc",
                "size": node.rpcthreads + node.rpcworkqueue,
                "url": node.url,
                "username": "anya",
                "password_env": PASSWORD_ENV,
                "validate_query": "getblockcount",
            },
            "web": {"kind": "http", "size": 2, "url": web, "validate_query": "/health"},
        },
    }
    manager = loop.run(ResourceManager.new(policy=policy))
    yield manager
    loop.run(manager.close())
    os.environ.pop(PASSWORD_ENV, None)


async def slots_in_use(manager: ResourceManager, pool: str) -> int:
    return int((await manager.snapshot())["pools"][pool]["in_use"])


def test_postgres_connection_keeps_its_slot_while_idle_then_gives_it_back(
    manager: ResourceManager, loop: Loop, pg: Postgres
) -> None:
    async def scenario() -> None:
        async with manager.acquire_connection("pg") as conn:
            assert isinstance(conn, ResourceConnection) and conn.pool == "pg"
            assert isinstance(conn.connection, psycopg.AsyncConnection)
            cursor = await conn.connection.execute("SELECT 40 + 2")
            assert await cursor.fetchone() == (42,)
        # Given back, still open and warm, still on its slot.
        assert await slots_in_use(manager, "pg") == 1
        assert pg.connections("anya-resource:pg") == 1
        stats = pool_statistics(manager, "pg")
        assert stats is not None and stats.idle == 1 and stats.in_use == 0
        async with manager.acquire_connection("pg") as again:
            assert again.lease_id == conn.lease_id  # the same slot, the same connection
        # After idle_timeout_s (1.5 s) it is closed and the slot goes back.
        await eventually(lambda: _none_in_use(manager, "pg"), timeout=10)
        assert pg.connections("anya-resource:pg") == 0

    loop.run(scenario())


async def _none_in_use(manager: ResourceManager, pool: str) -> bool:
    return await slots_in_use(manager, pool) == 0


def test_sync_twin_hands_out_blocking_connections(
    manager: ResourceManager, loop: Loop, pg: Postgres
) -> None:
    sync = SyncResourceManager.connect()
    with sync.acquire_connection("pg") as conn:
        assert isinstance(conn.connection, psycopg.Connection)
        assert conn.connection.execute("SELECT 7").fetchone() == (7,)
    stats = pool_statistics(sync, "pg")
    assert stats is not None and stats.checkouts == 1 and stats.idle == 1
    assert loop.run(slots_in_use(manager, "pg")) == 1
    sync.close()  # closes its connections, then gives their slots back
    assert pg.connections("anya-resource:pg") == 0
    loop.run(eventually(lambda: _none_in_use(manager, "pg")))


def test_restarted_server_connections_are_validated_and_replaced(
    manager: ResourceManager, loop: Loop, pg: Postgres
) -> None:
    async def take_three() -> list[ResourceConnection]:
        conns = [await manager.acquire_connection("pgr", timeout=10) for _ in range(3)]
        for conn in conns:
            await conn.connection.execute("SELECT 1")
            await conn.connection.commit()
        return conns

    async def give_back(conns: list[ResourceConnection]) -> None:
        for conn in conns:
            await conn.return_to_pool()

    first = loop.run(take_three())
    loop.run(give_back(first))
    pg.restart()  # the three idle connections are dead now
    time.sleep(0.2)
    second = loop.run(take_three())  # would raise if a dead one were handed out
    assert {c.lease_id for c in second} == {c.lease_id for c in first}  # same slots
    stats = pool_statistics(manager, "pgr")
    assert stats is not None and stats.validation_failures == 3
    loop.run(give_back(second))

    # With the server down, a caller gets a clear error at once, not a hang.
    pg.stop()
    time.sleep(0.2)
    started = time.monotonic()
    with pytest.raises(ConnectionFailed, match="pgr"):
        loop.run(take_three())
    assert time.monotonic() - started < 5
    pg.start()
    third = loop.run(take_three())
    loop.run(give_back(third))


def test_a_connection_held_too_long_is_reported_with_the_takers_stack(
    manager: ResourceManager, loop: Loop, caplog: pytest.LogCaptureFixture
) -> None:
    async def forgetful_caller() -> None:
        conn = await manager.acquire_connection("pg")  # leak_threshold_s is 1 s
        await asyncio.sleep(1.8)
        await conn.return_to_pool()

    with caplog.at_level(logging.WARNING, logger="anya_resource.pools.pool"):
        loop.run(forgetful_caller())
    leaks = [r.getMessage() for r in caplog.records if "leak_threshold_s" in r.getMessage()]
    assert len(leaks) == 1
    assert "forgetful_caller" in leaks[0] and __file__ in leaks[0]


def test_releasing_through_the_manager_closes_then_frees_the_slot(
    manager: ResourceManager, loop: Loop, pg: Postgres
) -> None:
    async def scenario() -> None:
        conn = await manager.acquire_connection("pgwarm")
        assert pg.connections("anya-resource:pgwarm") == 1
        raw = conn.connection
        close = raw.close

        async def slow_close() -> None:  # a slow server: the slot must still wait for it
            await asyncio.sleep(0.5)
            await close()

        raw.close = slow_close
        await manager.release(conn)  # the slot itself: the connection closes first
        assert raw.closed  # closed before the slot went back, not after
        assert await slots_in_use(manager, "pgwarm") == 0

    loop.run(scenario())
    loop.run(eventually(lambda: _none_on_server(pg, "anya-resource:pgwarm")))


async def _none_on_server(pg: Postgres, application_name: str) -> bool:
    return pg.connections(application_name) == 0


@ray.remote(num_cpus=0)
class WarmHolder:
    """Another process, keeping a connection warm (idle_timeout_s is 60 s)."""

    async def warm(self) -> None:
        self.manager = await ResourceManager.new()
        async with self.manager.acquire_connection("pgwarm") as conn:
            await conn.connection.execute("SELECT 1")

    async def statistics(self) -> dict[str, Any]:
        stats = pool_statistics(self.manager, "pgwarm")
        return {} if stats is None else stats.__dict__


def test_idle_slots_elsewhere_come_back_when_this_process_waits(
    manager: ResourceManager, loop: Loop
) -> None:
    holder = WarmHolder.remote()  # type: ignore[attr-defined]
    ray.get(holder.warm.remote())
    assert ray.get(holder.statistics.remote())["idle"] == 1

    async def scenario() -> float:
        started = time.monotonic()
        async with manager.acquire_connection("pgwarm", timeout=20) as conn:
            await conn.connection.execute("SELECT 1")
        return time.monotonic() - started

    waited = loop.run(scenario())
    assert waited < 5, f"waited {waited:.1f} s: the idle slot was not handed back"
    stats = ray.get(holder.statistics.remote())
    assert stats["idle"] == 0 and stats["connections_closed"] == 1
    ray.kill(holder)


def test_bitcoin_rpc_calls_and_errors(manager: ResourceManager, loop: Loop) -> None:
    async def scenario() -> None:
        async with manager.acquire_connection("rpc") as conn:
            assert await conn.connection.call("getblockcount") == 840_000
            assert await conn.connection.call("echo", "x", 2) == ["x", 2]
            with pytest.raises(RpcCallError) as caught:
                await conn.connection.call("nosuchmethod")
            assert caught.value.code == -32601

    loop.run(scenario())


def test_hundred_concurrent_rpc_callers_in_one_process(
    manager: ResourceManager, loop: Loop, node: FakeBitcoind
) -> None:
    node.reset_counts()

    async def caller() -> None:
        async with manager.acquire_connection("rpc", timeout=60) as conn:
            await conn.connection.call("getblockcount")

    async def through_the_pool() -> None:
        await asyncio.gather(*(caller() for _ in range(100)))

    loop.run(through_the_pool())  # raises RpcWorkQueueExceeded on any 503
    assert node.rejected == 0 and node.calls == 100
    assert node.max_arrived <= node.rpcthreads + node.rpcworkqueue  # the pool's size
    stats = pool_statistics(manager, "rpc")
    assert stats is not None and stats.connections_opened <= 4 and stats.waits > 0

    node.reset_counts()
    rejected = _direct_calls(node, 100)
    assert rejected > 0 and node.rejected == rejected


def _direct_calls(node: FakeBitcoind, callers: int) -> int:
    """``callers`` threads calling the node at once, each on its own connection."""
    barrier = threading.Barrier(callers)
    outcomes: list[str] = []

    def call() -> None:
        rpc = client(node)
        barrier.wait()
        try:
            rpc.call("getblockcount")
            outcomes.append("ok")
        except RpcWorkQueueExceeded:
            outcomes.append("503")
        finally:
            rpc.close()

    threads = [threading.Thread(target=call) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return outcomes.count("503")


def test_http_pool_hands_out_a_client_on_the_base_url(manager: ResourceManager, loop: Loop) -> None:
    async def scenario() -> None:
        async with manager.acquire_connection("web") as conn:
            assert isinstance(conn.connection, httpx.AsyncClient)
            response = await conn.connection.get("/health")
            assert response.status_code == 200 and response.text == "ok"

    loop.run(scenario())


def test_slot_pools_and_bad_options(manager: ResourceManager, loop: Loop) -> None:
    async def scenario() -> None:
        async with manager.acquire_connection() as slot:  # the default pool: a bare slot
            assert slot.connection is None and not isinstance(slot, PooledConnection)
        with pytest.raises(InvalidRequest, match="detached"):
            await manager.acquire_connection("pg", detached=True)
        with pytest.raises(TypeError):
            await manager.acquire_connection("pg", colour="blue")
        with pytest.raises(InvalidRequest):
            await manager.acquire_connection("pg", priority="urgent")
        conn = await manager.acquire_connection("pgwarm")
        with pytest.raises(AcquireTimeout):
            await manager.acquire_connection("pgwarm", timeout=0.3)
        await conn.return_to_pool()

    loop.run(scenario())
