"""The process pool's state machine, without Ray: slots from an in-memory source.

The slot source stands in for the coordinator (a semaphore of the pool's size) and the
connector opens in-memory connections that count how many are open at once; the pool
itself is the real one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

from anya_resource import AcquireTimeout, Lease, ManagerUnavailable
from anya_resource.config import PoolPolicy
from anya_resource.pools import ConnectionFailed, PooledConnection
from anya_resource.pools.entries import LIFETIME_JITTER, Checkout, caller_stack, end_of_life
from anya_resource.pools.pool import FAIR_TURN_S, WANTED_HOLD_S, ConnectionPool
from tests.raytools import eventually

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout=20))


class Slots:
    """A cluster-wide cap of ``size`` slots, as the coordinator would keep it."""

    def __init__(self, size: int) -> None:
        self.semaphore = asyncio.Semaphore(size)
        self.held: dict[str, Lease] = {}
        self.on_ended: dict[str, Callable[[Lease], None]] = {}
        self.ids = itertools.count(1)
        self.granted = 0

    async def acquire(
        self, pool: str, checkout: Checkout, on_ended: Callable[[Lease], None]
    ) -> Lease:
        await self.semaphore.acquire()
        number = next(self.ids)
        lease = Lease(
            lease_id=f"lease-{number}",
            token="secret",
            fencing_token=number,
            node_id="node",
            resources={"pools": {pool: 1}},
            priority=str(checkout.priority),
            tenant="default",
            expires_at=time.time() + 60,
        )
        self.held[lease.lease_id] = lease
        self.on_ended[lease.lease_id] = on_ended
        self.granted += 1
        return lease

    def holds(self, lease: Lease) -> bool:
        return lease.valid and self.held.get(lease.lease_id) is lease

    def release(self, lease: Lease) -> None:
        if self.held.pop(lease.lease_id, None) is not None:
            lease.released = True
            self.semaphore.release()

    def revoke(self, lease: Lease) -> None:
        lease.revoked, lease.reason = True, "preempted"
        self.on_ended[lease.lease_id](lease)


@dataclasses.dataclass(eq=False)
class Conn:
    number: int
    closed: bool = False
    broken: bool = False  # known broken (a local check sees it)
    dead: bool = False  # broken, but only a round trip finds out
    queries: int = 0


class Connector:
    settle_s = 0.0

    def __init__(self) -> None:
        self.numbers = itertools.count(1)
        self.open_now = 0
        self.max_open = 0
        self.opened: list[Conn] = []
        self.refuse = False

    async def open(self) -> Conn:
        await asyncio.sleep(0.001)
        if self.refuse:
            raise OSError("connection refused")
        conn = Conn(next(self.numbers))
        self.opened.append(conn)
        self.open_now += 1
        self.max_open = max(self.max_open, self.open_now)
        return conn

    def usable(self, connection: Conn) -> bool:
        return not (connection.closed or connection.broken)

    async def validate(self, connection: Conn) -> None:
        if connection.dead:
            raise OSError("server closed the connection unexpectedly")

    async def reset(self, connection: Conn) -> bool:
        return self.usable(connection)

    async def close(self, connection: Conn) -> None:
        if not connection.closed:
            connection.closed = True
            self.open_now -= 1

    async def shutdown(self) -> None:
        return None


class Clock:
    """A clock the test moves by hand: what the pool decides by time, without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_pool(
    size: int = 3, clock: Callable[[], float] = time.monotonic, **settings: Any
) -> tuple[ConnectionPool, Slots, Connector]:
    policy = PoolPolicy(size=size, kind="postgres", **settings)
    slots, connector = Slots(size), Connector()
    return ConnectionPool("db", policy, connector, slots, clock), slots, connector


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0.005)


def test_many_callers_never_open_more_than_the_size() -> None:
    async def scenario() -> None:
        pool, slots, connector = make_pool(size=3)

        async def caller() -> None:
            conn = await pool.get(Checkout(timeout=10))
            conn.connection.queries += 1
            await asyncio.sleep(0.002)
            await conn.return_to_pool()

        await asyncio.gather(*(caller() for _ in range(50)))
        stats = pool.statistics()
        assert connector.max_open == 3 and len(slots.held) == 3
        assert sum(c.queries for c in connector.opened) == 50
        assert stats.checkouts == 50 and stats.waits >= 47 and stats.max_wait_s > 0
        assert stats.open == stats.idle == 3 and stats.in_use == stats.waiting == 0
        await pool.close()
        assert connector.open_now == 0 and slots.held == {}

    run(scenario())


def test_a_released_connection_stays_warm_on_its_slot_then_idles_out() -> None:
    async def scenario() -> None:
        pool, slots, connector = make_pool(size=2, idle_timeout_s=0.3)
        conn = await pool.get(Checkout())
        first = conn.connection
        assert isinstance(conn, PooledConnection) and conn.lease_id in slots.held
        await conn.return_to_pool()
        assert conn.released and conn.connection is None
        # Given back, but the slot is still held: the connection is open and warm.
        assert len(slots.held) == 1 and connector.open_now == 1
        again = await pool.get(Checkout())
        assert again.connection is first and pool.statistics().connections_opened == 1
        await again.return_to_pool()

        async def idled_out() -> bool:
            return connector.open_now == 0 and slots.held == {}

        await eventually(idled_out, timeout=5, interval=0.02)
        assert pool.statistics().connections_closed == 1
        await pool.close()

    run(scenario())


def test_giving_back_twice_changes_nothing() -> None:
    async def scenario() -> None:
        pool, _slots, _connector = make_pool(size=1)
        conn = await pool.get(Checkout())
        await conn.return_to_pool()
        other = await pool.get(Checkout())
        await conn.return_to_pool()  # a stale handle: must not give back `other`'s connection
        assert other.connection is not None and pool.statistics().in_use == 1
        await other.return_to_pool()
        await pool.close()

    run(scenario())


def test_a_broken_idle_connection_is_replaced_not_handed_out() -> None:
    async def scenario() -> None:
        pool, _slots, connector = make_pool(size=1, validate_idle_s=0.0)
        conn = await pool.get(Checkout())
        old = conn.connection
        await conn.return_to_pool()
        old.dead = True  # the server restarted: only a round trip can tell
        fresh = await pool.get(Checkout())
        assert fresh.connection is not old and not fresh.connection.dead
        assert old.closed and connector.open_now == 1
        assert fresh.lease_id == conn.lease_id  # replaced on the same slot
        assert pool.statistics().validation_failures == 1
        await fresh.return_to_pool()
        await pool.close()

    run(scenario())


def test_recently_used_connections_skip_the_round_trip() -> None:
    async def scenario() -> None:
        pool, _slots, _connector = make_pool(size=1, validate_idle_s=60.0)
        conn = await pool.get(Checkout())
        await conn.return_to_pool()
        assert conn.connection is None  # given back: the handle lets go of it
        again = await pool.get(Checkout())
        again.connection.dead = True
        await again.return_to_pool()
        third = await pool.get(Checkout())
        assert third.connection.dead  # not checked: used less than validate_idle_s ago
        third.connection.broken = True  # but a local check is free, and always done
        await third.return_to_pool()  # (here on return: a broken connection is not kept)
        fourth = await pool.get(Checkout())
        assert not fourth.connection.broken
        await fourth.return_to_pool()
        await pool.close()

    run(scenario())


def test_lifetime_jitter_spreads_expiry_below_max_lifetime() -> None:
    ends = {end_of_life(100.0, 1000.0) for _ in range(200)}
    assert len(ends) > 150
    assert all(100.0 + 1000.0 * (1 - LIFETIME_JITTER) <= e <= 1100.0 for e in ends)
    assert end_of_life(0.0, 1000.0, draw=1.0) == pytest.approx(1000.0 * (1 - LIFETIME_JITTER))


def test_a_connection_past_its_lifetime_is_replaced() -> None:
    async def scenario() -> None:
        clock = Clock()
        pool, _slots, _connector = make_pool(
            size=1, clock=clock, max_lifetime_s=0.2, idle_timeout_s=60
        )
        conn = await pool.get(Checkout())
        old = conn.connection
        await conn.return_to_pool()
        clock.advance(0.2)
        fresh = await pool.get(Checkout())
        assert fresh.connection is not old and old.closed
        assert fresh.lease_id == conn.lease_id  # replaced on the same slot
        await fresh.return_to_pool()
        await pool.close()

    run(scenario())


def test_timeout_leaves_no_slot_and_no_request_behind() -> None:
    async def scenario() -> None:
        pool, slots, _connector = make_pool(size=1)
        held = await pool.get(Checkout())
        with pytest.raises(AcquireTimeout, match=r"no connection within 0\.1 s"):
            await pool.get(Checkout(timeout=0.1))
        stats = pool.statistics()
        assert stats.timeouts == 1 and stats.waiting == 0 and stats.requesting == 0
        await held.return_to_pool()
        await settle()
        assert len(slots.held) == 1 and slots.granted == 1
        await pool.close()

    run(scenario())


def test_a_connection_handed_over_as_the_waiter_gives_up_is_not_lost() -> None:
    async def scenario() -> None:
        pool, _slots, connector = make_pool(size=1)
        held = await pool.get(Checkout())
        waiter = asyncio.create_task(pool.get(Checkout(timeout=30)))
        await settle()
        await held.return_to_pool()  # hands the connection to the waiter ...
        waiter.cancel()  # ... which is cancelled before it could resume
        with pytest.raises(asyncio.CancelledError):
            await waiter
        stats = pool.statistics()
        assert stats.idle == 1 and stats.in_use == 0 and connector.open_now == 1
        again = await pool.get(Checkout(timeout=1))
        assert again.connection is connector.opened[0] and len(connector.opened) == 1
        await again.return_to_pool()
        await pool.close()

    run(scenario())


def test_local_waiters_are_served_by_priority() -> None:
    async def scenario() -> None:
        pool, _slots, _connector = make_pool(size=1)
        held = await pool.get(Checkout())
        order: list[str] = []

        async def caller(name: str, level: int) -> None:
            conn = await pool.get(Checkout(priority=name, level=level))
            order.append(name)
            await conn.return_to_pool()

        tasks = [asyncio.create_task(caller(n, lvl)) for n, lvl in [("low", 25), ("high", 75)]]
        await settle()
        await held.return_to_pool()
        await asyncio.gather(*tasks)
        assert order == ["high", "low"]
        await pool.close()

    run(scenario())


def test_a_connection_held_too_long_is_reported_with_the_takers_stack(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def take(pool: ConnectionPool) -> Coroutine[Any, Any, PooledConnection]:
        return pool.get(Checkout(stack=caller_stack(skip=1)))

    async def scenario() -> None:
        pool, _slots, _connector = make_pool(size=1, leak_threshold_s=0.2)
        conn = await take(pool)

        async def reported() -> int:
            return pool.statistics().leaks

        await eventually(reported, timeout=5, interval=0.02)
        pool.sweep()
        pool.sweep()
        assert pool.statistics().leaks == 1  # once per hand-out, however many sweeps
        await conn.return_to_pool()
        await pool.close()

    with caplog.at_level(logging.WARNING, logger="anya_resource.pools.pool"):
        run(scenario())
    (record,) = [r for r in caplog.records if "leak_threshold_s" in r.getMessage()]
    assert "held for" in record.getMessage()
    assert "in take" in record.getMessage()  # the frame that took it


def test_wanted_gives_idle_slots_back_at_once_and_returned_ones_for_a_while() -> None:
    async def scenario() -> None:
        clock = Clock()
        pool, slots, connector = make_pool(size=2, clock=clock, idle_timeout_s=60)
        a, b = await pool.get(Checkout()), await pool.get(Checkout())
        await a.return_to_pool()
        assert len(slots.held) == 2
        pool.wanted()
        await settle()
        assert len(slots.held) == 1 and connector.open_now == 1
        await b.return_to_pool()  # within WANTED_HOLD_S: closed, not kept
        await settle()
        assert slots.held == {} and connector.open_now == 0
        clock.advance(WANTED_HOLD_S)
        c = await pool.get(Checkout())
        await c.return_to_pool()  # the hint has lapsed: kept warm again
        assert len(slots.held) == 1
        await pool.close()

    run(scenario())


def test_while_others_wait_a_slot_serves_callers_here_only_for_its_turn() -> None:
    async def scenario() -> None:
        clock = Clock()
        pool, slots, connector = make_pool(size=1, clock=clock, idle_timeout_s=60)
        held = await pool.get(Checkout())
        pool.wanted()  # another process waits for this pool (the hint lasts WANTED_HOLD_S)
        first = asyncio.create_task(pool.get(Checkout()))
        await settle()
        await held.return_to_pool()  # within the slot's turn: straight to the caller waiting here
        served = await first
        assert served.lease_id == held.lease_id and slots.granted == 1
        real = served.connection
        clock.advance(FAIR_TURN_S)  # the turn is over, and the others still wait
        second = asyncio.create_task(pool.get(Checkout()))
        await settle()
        await served.return_to_pool()  # closed, and the slot goes back to the coordinator
        again = await second  # which grants a slot anew (here: to the same process)
        assert real.closed and again.lease_id != held.lease_id and slots.granted == 2
        assert connector.open_now == 1
        await again.return_to_pool()
        await pool.close()

    run(scenario())


def test_revoked_slot_closes_idle_connection_and_tells_the_user_of_a_busy_one() -> None:
    async def scenario() -> None:
        pool, slots, connector = make_pool(size=2)
        a, b = await pool.get(Checkout()), await pool.get(Checkout(on_revoked=told.append))
        a_conn = a.connection
        await a.return_to_pool()
        slots.revoke(slots.held[a.lease_id])
        await settle()
        assert a_conn.closed and a.lease_id not in slots.held
        slots.revoke(slots.held[b.lease_id])
        assert told == [b] and b.revoked and not b.connection.closed  # not closed under it
        with pytest.raises(Exception, match="revoked"):
            b.check()
        await b.return_to_pool()
        await settle()
        assert slots.held == {} and connector.open_now == 0
        await pool.close()

    told: list[Lease] = []
    run(scenario())


def test_releasing_the_slot_itself_closes_the_connection_first() -> None:
    async def scenario() -> None:
        pool, _slots, connector = make_pool(size=1)
        conn = await pool.get(Checkout())
        real = conn.connection
        conn.released = True  # what ResourceManager.release(conn) does before it sends
        await settle()
        assert real.closed and connector.open_now == 0
        await conn.return_to_pool()  # nothing left to give back
        assert pool.statistics().open == 0
        await pool.close()

    run(scenario())


def test_a_refused_connect_fails_the_caller_at_once_and_frees_the_slot() -> None:
    async def scenario() -> None:
        pool, slots, connector = make_pool(size=2)
        connector.refuse = True
        started = time.monotonic()
        with pytest.raises(ConnectionFailed, match="connection refused"):
            await pool.get(Checkout(timeout=10))
        assert time.monotonic() - started < 1
        await settle()
        assert slots.held == {} and pool.statistics().connect_errors == 1
        connector.refuse = False
        conn = await pool.get(Checkout(timeout=10))
        await conn.return_to_pool()
        await pool.close()

    run(scenario())


def test_close_closes_everything_and_fails_waiters() -> None:
    async def scenario() -> None:
        pool, slots, connector = make_pool(size=1)
        held = await pool.get(Checkout())
        waiter = asyncio.create_task(pool.get(Checkout()))
        await settle()
        await pool.close()
        with pytest.raises(ManagerUnavailable, match="closed"):
            await waiter
        assert held.connection is None and connector.open_now == 0 and slots.held == {}
        with pytest.raises(ManagerUnavailable):
            await pool.get(Checkout())

    run(scenario())


def test_statistics_are_a_frozen_snapshot() -> None:
    async def scenario() -> None:
        pool, _, _ = make_pool()
        stats = pool.statistics()
        with pytest.raises(dataclasses.FrozenInstanceError):
            stats.open = 5  # type: ignore[misc]
        assert stats.mean_wait_s == 0.0 and stats.pool == "db" and stats.size == 3
        await pool.close()

    run(scenario())
