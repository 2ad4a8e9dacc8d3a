"""A real PostgreSQL for the pool tests (``pgserver``: no system install, unix socket
only), and the postgres connectors checked against it directly, without Ray.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pgserver
import psycopg
import pytest

from anya_resource.config import PoolPolicy
from anya_resource.pools.postgres import AsyncPostgres, BlockingPostgres


class Postgres:
    """A private server whose ``max_connections`` is low enough to run out of."""

    def __init__(self, directory: Path, max_connections: int = 8) -> None:
        self.directory = directory
        server = pgserver.get_server(directory, cleanup_mode="stop")
        server.psql(f"ALTER SYSTEM SET max_connections = {max_connections};")
        server.cleanup()  # stops it: max_connections only changes at a start
        self.server = pgserver.get_server(directory, cleanup_mode="stop")
        self.monitor: psycopg.Connection[Any] | None = None

    @property
    def uri(self) -> str:
        return str(self.server.get_uri())

    def stop(self) -> None:
        self._close_monitor()
        self.server.cleanup()

    def start(self) -> None:
        self.server = pgserver.get_server(self.directory, cleanup_mode="stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def connections(self, application_name: str) -> int:
        """How many connections the server has with this application_name, now."""
        if self.monitor is None or self.monitor.closed or self.monitor.broken:
            self.monitor = psycopg.connect(self.uri, autocommit=True, application_name="monitor")
        row = self.monitor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
            (application_name,),
        ).fetchone()
        assert row is not None
        return int(row[0])

    def _close_monitor(self) -> None:
        if self.monitor is not None:
            self.monitor.close()
            self.monitor = None


@pytest.fixture(scope="module")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    server = Postgres(tmp_path_factory.mktemp("pg"))
    yield server
    server.stop()


def policy_for(pg: Postgres, **settings: Any) -> PoolPolicy:
    return PoolPolicy(size=2, kind="postgres", dsn=pg.uri, **settings)


def test_too_many_clients_is_what_the_pool_prevents(pg: Postgres) -> None:
    opened: list[psycopg.Connection[Any]] = []
    with pytest.raises(psycopg.OperationalError, match="too many clients already"):
        for _ in range(20):
            opened.append(psycopg.connect(pg.uri))
    assert len(opened) == 8
    for conn in opened:
        conn.close()


def test_async_connector_names_its_connections_and_resets_them(
    pg: Postgres, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        connector = AsyncPostgres("ledger", policy_for(pg))
        conn = await connector.open()
        assert pg.connections("anya-resource:ledger") == 1
        await conn.execute("SELECT 1")  # a transaction is open now (not autocommit)
        assert await connector.reset(conn)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        await connector.validate(conn)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        await connector.close(conn)
        assert not connector.usable(conn) and not await connector.reset(conn)

    with caplog.at_level(logging.WARNING):
        asyncio.run(scenario())
    assert "rolling back" in caplog.text


def test_a_connection_killed_by_the_server_is_found_out(pg: Postgres) -> None:
    connector = BlockingPostgres("ledger", policy_for(pg, validate_query="SELECT 1"))
    conn = connector.open()
    connector.validate(conn)
    assert connector.usable(conn)
    killer = psycopg.connect(pg.uri, autocommit=True)
    killer.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
    killer.close()
    deadline = time.monotonic() + 5
    while connector.usable(conn) and time.monotonic() < deadline:
        time.sleep(0.01)
    # No round trip needed: the server's last words wait unread on the idle socket.
    assert not connector.usable(conn)
    with pytest.raises(psycopg.OperationalError):
        connector.validate(conn)  # and a round trip fails, of course
    connector.close(conn)
