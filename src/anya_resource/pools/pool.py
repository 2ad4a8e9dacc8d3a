"""One process's pool of real connections to one service, each standing on a slot lease.

Every open connection holds one slot of its pool, a lease granted by the coordinator,
for as long as it is open, idle or busy. So the connections to the service, summed
over every process of the cluster, never outnumber the pool's size. Closing comes
before giving the slot back, opening after getting it, never the other way round.

A connection given back goes, in this order of preference:

1. nowhere, if its slot is gone (revoked, expired) or its lifetime is over: closed;
2. back to the coordinator, if another process waits for this pool (``wanted``) and this
   slot has had its turn here (``FAIR_TURN_S`` since it was granted): closed, slot
   released, so that the coordinator's priorities and aging, not this process's luck,
   decide who is served next;
3. to the most urgent caller of this process waiting for one;
4. back to the coordinator if another process waits for this pool, else to the idle
   list, warm for the next caller, until ``idle_timeout_s``.

Without the turn, a process with a steady stream of callers would keep its slots for
ever; without letting a slot serve a few local callers in a row, every hand-out under
contention would cost a new connection.

Callers that find no idle connection wait; for each of them that nothing is already
coming for, the pool asks the coordinator for a slot (never more slots than the pool's
size in one process) and withdraws the ask when the caller is served otherwise or
gives up. State changes happen in plain functions between awaits; I/O (open, check,
reset, close) happens after them, as in psycopg_pool and httpcore.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from anya_resource.config import PoolPolicy
from anya_resource.errors import AcquireTimeout, ManagerUnavailable, ResourceError
from anya_resource.lease import Lease
from anya_resource.pools.connectors import Connector
from anya_resource.pools.entries import Checkout, Entry, Waiter, end_of_life
from anya_resource.pools.errors import ConnectionFailed
from anya_resource.pools.handle import PooledConnection
from anya_resource.pools.slots import SlotSource
from anya_resource.pools.stats import Counters, PoolStatistics

log = logging.getLogger(__name__)

# After the coordinator says another process waits for this pool, connections given
# back are closed (not kept idle) for this long. It repeats the hint while anyone waits.
WANTED_HOLD_S = 1.0
# While others wait, a slot keeps serving this process's callers this long after it was
# granted, then goes back to the coordinator: a slot changes hands at least this often.
FAIR_TURN_S = 0.25
MAX_SWEEP_S = 1.0


class ConnectionPool:
    """Connections of one pool, in one process, for one flavour (async or blocking)."""

    def __init__(
        self,
        name: str,
        policy: PoolPolicy,
        connector: Connector,
        slots: SlotSource,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.policy = policy
        self._connector = connector
        self._slots = slots
        self._clock = clock
        self._idle: deque[Entry] = deque()  # right end: most recently used
        self._busy: set[Entry] = set()  # handed out, or being handed, checked, reset
        self._by_lease: dict[str, Entry] = {}
        self._opening = 0  # slots granted whose connection is being opened
        self._requests: list[asyncio.Task[None]] = []  # slot asks waiting at the coordinator
        self._openers: set[asyncio.Task[None]] = set()
        self._closers: set[asyncio.Task[None]] = set()
        self._closing: dict[str, asyncio.Task[None]] = {}  # slot lease id -> its closer
        self._waiters: list[Waiter] = []  # a heap; callers that gave up are skipped lazily
        self._waiting = 0
        self._sequence = itertools.count()
        self._wanted_until = float("-inf")
        self._closed = False
        self._maintenance: asyncio.Task[None] | None = None
        self._counters = Counters()

    # -- handing out -------------------------------------------------------------------

    async def get(self, checkout: Checkout) -> PooledConnection:
        """A connection, checked and ready, on a slot of this pool."""
        if self._closed:
            raise ManagerUnavailable(f"pool {self.name!r} is closed")
        self._start_maintenance()
        started = self._clock()
        entry = self._pop_idle()
        waited = entry is None
        if entry is None:
            entry = await self._wait(checkout)
        else:
            try:
                await self._prepare(entry)
            except BaseException:
                self._discard(entry)
                raise
        self._counters.checked_out(waited, self._clock() - started)
        return self._hand_out(entry, checkout)

    def _pop_idle(self) -> Entry | None:
        while self._idle:
            entry = self._idle.pop()
            if self._slots.holds(entry.lease):
                self._busy.add(entry)
                return entry
            self._discard(entry)
        return None

    async def _prepare(self, entry: Entry) -> None:
        """Check an idle connection before handing it out; replace it when it fails.

        A round trip is spent only on connections idle for ``validate_idle_s``: one
        used a moment ago is as good as a check would say.
        """
        now = self._clock()
        if now >= entry.end_of_life:
            await self._reopen(entry)
            return
        if not self._connector.usable(entry.connection):
            self._counters.validation_failures += 1
            await self._reopen(entry)
            return
        if now - entry.last_used < self.policy.validate_idle_s:
            return
        try:
            await self._connector.validate(entry.connection)
        except Exception as exc:
            log.info("pool %s: idle connection failed its check (%s): replacing it", self.name, exc)
            self._counters.validation_failures += 1
            await self._reopen(entry)

    def _hand_out(self, entry: Entry, checkout: Checkout) -> PooledConnection:
        handle = PooledConnection.on_slot(entry.lease, self, entry, checkout.on_revoked)
        entry.handle = handle
        entry.taken_at = self._clock()
        entry.stack = checkout.stack
        entry.leak_warned = False
        return handle

    # -- waiting -----------------------------------------------------------------------

    async def _wait(self, checkout: Checkout) -> Entry:
        waiter = Waiter(checkout, next(self._sequence), asyncio.get_running_loop().create_future())
        heapq.heappush(self._waiters, waiter)
        self._waiting += 1
        timer = None
        if checkout.timeout is not None:
            timer = asyncio.get_running_loop().call_later(checkout.timeout, self._time_out, waiter)
        self._grow()
        try:
            return await waiter.future
        except BaseException:
            # The documented race (psycopg_pool): a connection may have been handed to
            # this caller just as it timed out or was cancelled. It must not be lost.
            future = waiter.future
            if future.done() and not future.cancelled() and future.exception() is None:
                self._deliver(future.result())
            raise
        finally:
            if timer is not None:
                timer.cancel()
            self._waiting -= 1
            self._compact_waiters()
            self._grow()  # one caller fewer may need one slot ask fewer

    def _time_out(self, waiter: Waiter) -> None:
        timeout = waiter.checkout.timeout
        error = AcquireTimeout(
            f"pool {self.name!r}: no connection within {timeout:g} s "
            f"(size {self.policy.size}; this process has {self._open_count()} open, "
            f"{self._waiting} waiting)"
        )
        if waiter.fail(error):
            self._counters.timeouts += 1

    def _pop_waiter(self) -> Waiter | None:
        while self._waiters:
            waiter = heapq.heappop(self._waiters)
            if not waiter.future.done():
                return waiter
        return None

    def _compact_waiters(self) -> None:
        if len(self._waiters) > 2 * self._waiting + 64:
            self._waiters = [w for w in self._waiters if not w.future.done()]
            heapq.heapify(self._waiters)

    def _most_urgent(self) -> Checkout:
        while self._waiters and self._waiters[0].future.done():
            heapq.heappop(self._waiters)
        return self._waiters[0].checkout if self._waiters else Checkout()

    def _fail_one(self, error: Exception) -> None:
        """Tell the most urgent caller why no connection came (so nobody waits on in vain)."""
        waiter = self._pop_waiter()
        if waiter is None or not waiter.fail(error):
            log.warning("pool %s: %s", self.name, error)

    # -- new slots, new connections -------------------------------------------------------

    def _open_count(self) -> int:
        return len(self._idle) + len(self._busy) + self._opening

    def _grow(self) -> None:
        """Ask the coordinator for as many slots as waiting callers lack, within the size.

        Slot asks out and connections being opened count as coming; a connection in use
        may come back before a new slot does, and then the extra ask is withdrawn.
        """
        if self._closed:
            return
        lacking = self._waiting - len(self._requests) - self._opening
        while lacking < 0 and self._requests:
            # Withdrawn at once (not when the task gets to run) so that it stops counting
            # as coming; the manager's acquire cancels it at the coordinator too.
            self._requests.pop().cancel()
            lacking += 1
        room = self.policy.size - self._open_count() - len(self._requests)
        for _ in range(min(lacking, room)):
            task = asyncio.get_running_loop().create_task(self._open_on_new_slot())
            self._requests.append(task)
            self._openers.add(task)
            task.add_done_callback(self._openers.discard)

    async def _open_on_new_slot(self) -> None:
        try:
            lease = await self._slots.acquire(self.name, self._most_urgent(), self._slot_ended)
        except asyncio.CancelledError:
            self._no_longer_requesting()
            return  # withdrawn, or the pool is closing
        except Exception as exc:
            self._no_longer_requesting()
            self._fail_one(exc)
            self._grow()  # the callers still waiting each get an attempt of their own
            return
        self._no_longer_requesting()
        self._opening += 1
        try:
            connection = await self._open_connection()
        except BaseException as exc:
            self._opening -= 1
            self._slots.release(lease)
            if not isinstance(exc, Exception):
                raise
            self._fail_one(exc)
            self._grow()
            return
        self._opening -= 1
        now = self._clock()
        entry = Entry(lease, connection, self._end_of_life(now), granted_at=now)
        self._busy.add(entry)
        self._by_lease[lease.lease_id] = entry
        self._deliver(entry)

    def _no_longer_requesting(self) -> None:
        me = asyncio.current_task()
        if me in self._requests:
            self._requests.remove(me)  # type: ignore[arg-type]

    async def _open_connection(self) -> Any:
        try:
            connection = await self._connector.open()
        except ResourceError:
            self._counters.connect_errors += 1
            raise
        except Exception as exc:
            self._counters.connect_errors += 1
            raise ConnectionFailed(
                f"pool {self.name!r}: cannot open a {self.policy.kind} connection: {exc}"
            ) from exc
        self._counters.connections_opened += 1
        return connection

    async def _reopen(self, entry: Entry) -> None:
        """A new connection on the same slot (the old one is broken or too old)."""
        old, entry.connection = entry.connection, None
        await self._close_connection(old)
        await asyncio.sleep(self._connector.settle_s)  # the server lets go of the old one
        entry.connection = await self._open_connection()
        entry.end_of_life = self._end_of_life(self._clock())

    def _end_of_life(self, opened_at: float) -> float:
        return end_of_life(opened_at, self.policy.max_lifetime_s)

    # -- giving back -----------------------------------------------------------------------

    async def put(self, handle: PooledConnection) -> None:
        """``handle`` is given back; giving back twice changes nothing."""
        entry = self._take_back(handle)
        if entry is None:
            return
        if not self._keepable(entry):
            self._discard(entry)
            return
        try:
            ready = await self._connector.reset(entry.connection)
        except asyncio.CancelledError:
            self._discard(entry)
            raise
        except Exception as exc:
            log.info("pool %s: returned connection could not be reset: %s", self.name, exc)
            ready = False
        if not ready:
            self._discard(entry)
            return
        self._deliver(entry)

    def slot_given_back(self, handle: PooledConnection) -> None:
        """``manager.release(conn)`` gives the slot itself back: close the connection now."""
        entry = self._take_back(handle)
        if entry is not None:
            self._discard(entry)

    def _take_back(self, handle: PooledConnection) -> Entry | None:
        entry = handle._entry
        if entry is None or entry.handle is not handle:
            return None
        entry.handle = None
        entry.stack = None
        handle.detach()
        return entry

    def _keepable(self, entry: Entry) -> bool:
        return (
            not self._closed
            and self._slots.holds(entry.lease)
            and self._clock() < entry.end_of_life
            and self._connector.usable(entry.connection)
        )

    def _deliver(self, entry: Entry) -> None:
        """A usable connection is free (new, or given back): who gets it (module doc).

        A new one stands on a slot the coordinator has just granted, by its priorities,
        for a caller waiting here: its turn has just begun, so that caller gets it even
        while others wait elsewhere.
        """
        wanted = self._is_wanted()
        turn_over = self._clock() - entry.granted_at >= FAIR_TURN_S
        if self._closed or not self._slots.holds(entry.lease) or (wanted and turn_over):
            self._discard(entry)
            return
        while (waiter := self._pop_waiter()) is not None:
            if waiter.give(entry):
                return  # still busy: now that caller's
        if wanted:
            self._discard(entry)  # not needed here, and needed elsewhere
            return
        self._busy.discard(entry)
        entry.last_used = self._clock()
        self._idle.append(entry)

    def _is_wanted(self) -> bool:
        return self._clock() < self._wanted_until

    def _discard(self, entry: Entry) -> None:
        """Close the connection, then give its slot back (in that order)."""
        self._forget(entry)
        task = asyncio.get_running_loop().create_task(self._close_and_release(entry))
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)
        lease_id = entry.lease.lease_id
        self._closing[lease_id] = task
        task.add_done_callback(lambda _: self._closing.pop(lease_id, None))
        self._grow()

    async def closed(self, lease_id: str) -> None:
        """Wait until the connection on slot ``lease_id``, if it is closing, is closed."""
        task = self._closing.get(lease_id)
        if task is not None:
            await asyncio.shield(task)

    def _forget(self, entry: Entry) -> None:
        if entry in self._idle:
            self._idle.remove(entry)
        self._busy.discard(entry)
        if self._by_lease.get(entry.lease.lease_id) is entry:
            del self._by_lease[entry.lease.lease_id]
        if entry.handle is not None:
            entry.handle.detach()
            entry.handle = None

    async def _close_and_release(self, entry: Entry) -> None:
        try:
            if entry.connection is not None:
                await self._close_connection(entry.connection)
                await asyncio.sleep(self._connector.settle_s)
        finally:
            self._slots.release(entry.lease)

    async def _close_connection(self, connection: Any) -> None:
        if connection is None:
            return
        await self._connector.close(connection)
        self._counters.connections_closed += 1

    # -- what the coordinator and the slot leases tell us ------------------------------------

    def wanted(self) -> None:
        """Another process waits for this pool: give idle slots back now, returned ones soon."""
        self._wanted_until = self._clock() + WANTED_HOLD_S
        while self._idle:
            self._discard(self._idle[0])

    def _slot_ended(self, lease: Lease) -> None:
        """The coordinator took a slot back (revoked, expired, holder or node lost)."""
        entry = self._by_lease.get(lease.lease_id)
        if entry is None:
            return  # still being opened: _deliver will see the slot gone
        if entry in self._idle:
            self._discard(entry)
        elif entry.handle is not None:
            # In use: closing a connection under a running query could leave the caller
            # waiting on a dead socket. It is told instead, and the connection is closed
            # when given back.
            entry.handle.slot_ended(lease)

    # -- upkeep ----------------------------------------------------------------------------

    def _start_maintenance(self) -> None:
        if self._maintenance is None or self._maintenance.done():
            loop = asyncio.get_running_loop()
            self._maintenance = loop.create_task(self._maintain())

    async def _maintain(self) -> None:
        policy = self.policy
        period = max(0.05, min(MAX_SWEEP_S, policy.idle_timeout_s / 4, policy.leak_threshold_s / 4))
        while not self._closed:
            await asyncio.sleep(period)
            self.sweep()

    def sweep(self) -> None:
        """Close idle connections past their idle timeout or lifetime; report leaks."""
        now = self._clock()
        for entry in list(self._idle):
            idle_for = now - entry.last_used
            if (
                idle_for >= self.policy.idle_timeout_s
                or now >= entry.end_of_life
                or not self._slots.holds(entry.lease)
            ):
                self._discard(entry)
        for entry in self._busy:
            if entry.handle is not None and not entry.leak_warned:
                held_for = now - entry.taken_at
                if held_for >= self.policy.leak_threshold_s:
                    self._report_leak(entry, held_for)

    def _report_leak(self, entry: Entry, held_for: float) -> None:
        entry.leak_warned = True
        self._counters.leaks += 1
        where = "".join(entry.stack.format()) if entry.stack else "  (stack not recorded)\n"
        log.warning(
            "pool %s: a connection (slot %s) has been held for %.1f s, past leak_threshold_s=%g; "
            "it was taken here:\n%s",
            self.name,
            entry.lease.lease_id,
            held_for,
            self.policy.leak_threshold_s,
            where.rstrip("\n"),
        )

    def statistics(self) -> PoolStatistics:
        return PoolStatistics(
            pool=self.name,
            kind=self.policy.kind,
            size=self.policy.size,
            open=len(self._idle) + len(self._busy),
            idle=len(self._idle),
            in_use=len(self._busy),
            opening=self._opening,
            waiting=self._waiting,
            requesting=len(self._requests),
            **asdict(self._counters),
        )

    async def close(self) -> None:
        """Close every connection (in use too) and give every slot back; fail waiters."""
        if self._closed:
            return
        self._closed = True
        # Slot asks are withdrawn; connects under way are waited for, not cancelled: a
        # blocking connect goes on in its thread whatever we do, and its connection
        # must be closed before its slot goes back (_deliver does that once closed).
        stopping = [*self._requests, *([self._maintenance] if self._maintenance else [])]
        for task in stopping:
            task.cancel()
        error = ManagerUnavailable(f"pool {self.name!r} was closed")
        for waiter in self._waiters:
            waiter.fail(error)
        for entry in [*self._idle, *self._busy]:
            self._discard(entry)
        await _settle([*stopping, *self._openers])
        await _settle(list(self._closers))
        await self._connector.shutdown()


async def _settle(tasks: list[asyncio.Task[None]]) -> None:
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, Exception):
            log.warning("pool task failed while closing: %r", result)
