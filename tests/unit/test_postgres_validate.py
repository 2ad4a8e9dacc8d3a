"""The blocking Postgres check is bounded by ``connect_timeout_s``, as the async one is."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest

from anya_resource.config import PoolPolicy
from anya_resource.pools.postgres import BlockingPostgres


class StuckConnection:
    """A psycopg ``Connection`` stand-in whose query runs until it is cancelled."""

    def __init__(self, seconds: float = 60.0) -> None:
        self.autocommit = False
        self.seconds = seconds
        self.cancelled = threading.Event()
        self.queries: list[str] = []

    def execute(self, query: str) -> None:
        self.queries.append(query)
        assert self.autocommit  # the check never opens a transaction of its own
        if self.cancelled.wait(self.seconds):
            raise psycopg.errors.QueryCanceled("canceling statement due to user request")

    def cancel_safe(self, *, timeout: float = 30.0) -> None:
        self.cancelled.set()


def _postgres(connect_timeout_s: float) -> BlockingPostgres:
    policy = PoolPolicy(kind="postgres", size=1, connect_timeout_s=connect_timeout_s)
    return BlockingPostgres("db", policy)


def test_a_stuck_check_is_cancelled_at_the_deadline_and_times_out() -> None:
    connection: Any = StuckConnection()
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="db"):
        _postgres(0.3).validate(connection)
    assert 0.25 <= time.monotonic() - started < 5
    assert connection.cancelled.is_set() and not connection.autocommit


def test_a_quick_check_is_not_cancelled() -> None:
    connection: Any = StuckConnection(seconds=0.0)
    _postgres(0.3).validate(connection)
    time.sleep(0.4)
    assert connection.queries and not connection.cancelled.is_set()
