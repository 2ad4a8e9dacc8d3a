"""``postgres`` pools: psycopg 3 connections (``AsyncConnection``, or ``Connection`` for
the blocking twin).

A returned connection is made ready for the next caller as psycopg_pool does it: an
open transaction is rolled back (with a warning: the caller forgot to commit), and a
connection in the middle of a query, or broken, is closed rather than reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import select
import threading
from typing import Any

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict

from anya_resource.config import PoolPolicy
from anya_resource.pools import credentials

log = logging.getLogger(__name__)

_ROLL_BACK = (pq.TransactionStatus.INTRANS, pq.TransactionStatus.INERROR)
# A client's close does not wait for the server: the backend process exits a moment
# later and counts against max_connections until then (measured with pgserver on a
# loaded 2-core machine: median 0.6 ms, p99 5 ms, max 10 ms). Without this wait, the
# process granted the freed slot could connect while the old backend is still there.
SETTLE_S = 0.05


def connect_arguments(name: str, policy: PoolPolicy) -> tuple[str, dict[str, Any]]:
    """The conninfo string and keyword overrides for ``psycopg.connect``."""
    conninfo = policy.dsn or policy.url or ""
    given = conninfo_to_dict(conninfo)
    kwargs: dict[str, Any] = {
        # libpq counts whole seconds and treats anything below 2 as 2.
        "connect_timeout": max(2, math.ceil(policy.connect_timeout_s)),
    }
    if "application_name" not in given:
        # Lets pg_stat_activity tell the pool's connections from everyone else's.
        kwargs["application_name"] = f"anya-resource:{name}"
    if policy.username is not None:
        kwargs["user"] = policy.username
    secret = credentials.password(name, policy)
    if secret is not None:
        kwargs["password"] = secret
    return conninfo, kwargs


def _usable(connection: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """No round trip: closed or broken as psycopg knows it, or a server that has spoken.

    An idle connection has nothing to read. If its socket is readable, the server sent
    something unasked, in practice its last words ("terminating connection due to
    administrator command" on a restart) before hanging up (httpcore checks kept-alive
    sockets the same way).
    """
    if connection.closed or connection.broken:
        return False
    readable, _, _ = select.select([connection.fileno()], [], [], 0)
    return not readable


def _needs_rollback(name: str, connection: Any) -> bool | None:
    """True: roll back first; False: ready as it is; None: close it."""
    status = connection.info.transaction_status
    if status == pq.TransactionStatus.IDLE:
        return False
    if status in _ROLL_BACK:
        log.warning("pool %s: connection returned inside a transaction: rolling back", name)
        return True
    return None  # ACTIVE (a query still running) or UNKNOWN (broken)


class AsyncPostgres:
    """``Connector`` of psycopg ``AsyncConnection``s."""

    settle_s = SETTLE_S

    def __init__(self, name: str, policy: PoolPolicy) -> None:
        self._name = name
        self._policy = policy

    async def open(self) -> psycopg.AsyncConnection[Any]:
        conninfo, kwargs = connect_arguments(self._name, self._policy)
        return await psycopg.AsyncConnection.connect(conninfo, **kwargs)

    def usable(self, connection: Any) -> bool:
        return _usable(connection)

    async def validate(self, connection: Any) -> None:
        check = self._check(connection, self._policy.validate_query or "")
        await asyncio.wait_for(check, timeout=self._policy.connect_timeout_s)

    @staticmethod
    async def _check(connection: Any, query: str) -> None:
        if connection.autocommit:
            await connection.execute(query)
            return
        # Outside autocommit the query would open a transaction the caller then owns.
        await connection.set_autocommit(True)
        try:
            await connection.execute(query)
        finally:
            await connection.set_autocommit(False)

    async def reset(self, connection: Any) -> bool:
        if not _usable(connection):
            return False
        rollback = _needs_rollback(self._name, connection)
        if rollback is None:
            return False
        if rollback:
            await connection.rollback()
        return True

    async def close(self, connection: Any) -> None:
        try:
            await connection.close()
        except Exception as exc:  # closing a broken connection may fail; it is gone anyway
            log.debug("pool %s: close failed: %s", self._name, exc)

    async def shutdown(self) -> None:
        return None


class BlockingPostgres:
    """``BlockingConnector`` of psycopg ``Connection``s."""

    settle_s = SETTLE_S

    def __init__(self, name: str, policy: PoolPolicy) -> None:
        self._name = name
        self._policy = policy

    def open(self) -> psycopg.Connection[Any]:
        conninfo, kwargs = connect_arguments(self._name, self._policy)
        return psycopg.Connection.connect(conninfo, **kwargs)

    def usable(self, connection: Any) -> bool:
        return _usable(connection)

    def validate(self, connection: Any) -> None:
        """The check, bounded by ``connect_timeout_s`` as ``AsyncPostgres.validate`` is.

        A blocking call cannot be abandoned (libpq must not run one connection in two
        threads), so at the deadline the query is cancelled at the server and the check
        fails with ``TimeoutError``, as ``asyncio.wait_for`` fails the async one.
        """
        timeout = self._policy.connect_timeout_s
        late = threading.Event()

        def cancel() -> None:
            late.set()
            with contextlib.suppress(Exception):  # unreachable: the query fails anyway
                connection.cancel_safe(timeout=timeout)

        timer = threading.Timer(timeout, cancel)
        timer.daemon = True
        timer.start()
        try:
            self._check(connection, self._policy.validate_query or "")
        except psycopg.errors.QueryCanceled:
            if late.is_set():
                raise TimeoutError(
                    f"pool {self._name}: the check took longer than {timeout:g} s"
                ) from None
            raise
        finally:
            timer.cancel()
            timer.join()  # a cancel under way must not hit the caller's next query

    @staticmethod
    def _check(connection: Any, query: str) -> None:
        if connection.autocommit:
            connection.execute(query)
            return
        # Outside autocommit the query would open a transaction the caller then owns.
        connection.autocommit = True
        try:
            connection.execute(query)
        finally:
            connection.autocommit = False

    def reset(self, connection: Any) -> bool:
        if not _usable(connection):
            return False
        rollback = _needs_rollback(self._name, connection)
        if rollback is None:
            return False
        if rollback:
            connection.rollback()
        return True

    def close(self, connection: Any) -> None:
        try:
            connection.close()
        except Exception as exc:
            log.debug("pool %s: close failed: %s", self._name, exc)
