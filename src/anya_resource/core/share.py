"""A process's warm leases: held between uses, for the next use of the same kind.

A lease acquired warm (``acquire(..., warm=True)``, every ``@leased`` task) is not given
back to the coordinator when its use ends: it stays here, *idle*, and the next use of
the same kind (the same request: resources, tenant, priority, preemptible, node) takes
it with no Ray call. It is still held (counted, renewed, reclaimed if this process
dies); what changes is only who uses it. It goes back to the coordinator

* after the policy's ``lease.warm_idle_s`` idle;
* at once when idle, and instead of being reused when busy, once the coordinator says
  that a request it does not outrank waits for it (``want``, core/warm.py);
* once idle for ``SPARE_IDLE_S`` when a request it outranks waits for it (``spare``);
* when it ends (revoked, expired) or its manager closes.

A use of a kind that finds nothing idle waits here (``Waiter``): for one of its own
kind's busy leases to come free, or for the coordinator to grant one more, whichever
comes first. At most one acquire per waiting use is sent, so a process that holds
all the capacity of a kind waits on its own leases, at no Ray call per use.

*Submitted ahead*: a use may say it can queue behind others of the same lease
(``depth`` > 1, ``@leased`` tasks whose Ray asks take their bundle whole, so that Ray
runs one at a time there, see ``queue_depth``): a busy lease then takes up to ``depth``
uses at once, the next one queued in Ray, which starts it the moment the one before
ends, with no round trip through this process. An idle lease is always taken first, then
the one with the fewest uses, and only while the lease's uses are short (its last one
ran at most ``SHORT_USE_S``: queueing ahead saves the driver's round trip, which matters
for short tasks only, and a long task queued ahead would hold up a waiter that outranks
the holder for as long). A use queued behind another is work that more capacity
would run now, as a waiting use is: while any is queued, one more acquire of the kind
is kept asking (``take``). A lease the coordinator wants back takes no new use at once;
what was queued in it is bounded by the depth.

Thread-safe: ``@leased`` ends a task's use from Ray's callback thread, while the
manager's event loop renews, hears events and gives leases back. No Ray, no asyncio
here: the manager carries out what these methods return.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from anya_resource.core import LeaseRecord

# An idle lease that a waiting request it outranks could use goes back after this long:
# long enough for its own process to take it again between two uses, short against
# the waiter's wait.
SPARE_IDLE_S = 0.05
# A lease takes uses ahead only while its uses are this short (the last one measured):
# queueing ahead saves the driver's round trip between two tasks, which matters for
# short ones only, and bounds what a waiter that outranks the holder waits for to
# submit_ahead x this (a long task queued ahead would hold it up for as long).
SHORT_USE_S = 0.05


def queue_depth(holds: Mapping[str, int], asks: Mapping[str, int], submit_ahead: int) -> int:
    """How many uses a lease may carry at once: ``submit_ahead`` when Ray runs no two
    of them at the same time in its bundle, 1 otherwise.

    ``holds`` is what the lease's bundle reserves in Ray, ``asks`` what each use's task
    asks Ray for (core units, core names). Ray never runs two tasks in a bundle that
    together ask more of a resource than it holds: one ask over half of what is held of
    some resource is enough. With nothing reserved in Ray (pool slots only) nothing stops
    a queued task from running beside the first, so there is no queueing ahead.
    """
    if submit_ahead <= 1:
        return 1
    for resource, held in holds.items():
        if held > 0 and 2 * asks.get(resource, 0) > held:
            return submit_ahead
    return 1


class TooManyWaiting(Exception):
    """As many uses of a kind wait as the caller allows (``@leased(max_pending=)``)."""


@dataclass(eq=False)
class WarmEntry:
    """One warm lease: its record, kind, and how many uses it carries now (one running,
    the others queued behind it in Ray)."""

    record: LeaseRecord
    kind: str
    uses: int = 0
    idle_since: float = 0.0
    running_since: float | None = None  # when its running use started (None: unknown)
    pace: float | None = None  # how long its last use ran (None: none measured yet)
    lease: Any = None  # the caller's Lease object while an async caller uses it
    shipped: Any = None  # what a @leased task receives (built once per lease)

    @property
    def busy(self) -> bool:
        return self.uses > 0


@dataclass(eq=False)
class Waiter:
    """A use of ``kind`` waiting in this process; ``deliver`` is called under the lock."""

    kind: str
    deliver: Callable[[WarmEntry | None, BaseException | None], None]
    depth: int = 1  # the most uses it may share a lease with, itself included
    done: bool = False


@dataclass(frozen=True)
class WarmCounts:
    """A manager's warm leases at one moment (``manager.warm_statistics()``)."""

    idle: int = 0
    busy: int = 0
    waiting: int = 0
    queued: int = 0  # uses queued in Ray behind another of the same lease


@dataclass
class WarmShare:
    """The warm leases of one manager (see the module's doc)."""

    _lock: threading.Lock = field(default_factory=threading.Lock)
    _entries: dict[str, WarmEntry] = field(default_factory=dict)
    _idle: dict[str, list[str]] = field(default_factory=dict)  # kind -> ids, newest last
    # kind -> ids of leases with at least one use (an insertion-ordered set)
    _open: dict[str, dict[str, None]] = field(default_factory=dict)
    _waiters: dict[str, deque[Waiter]] = field(default_factory=dict)
    _asking: dict[str, int] = field(default_factory=dict)  # kind -> acquires in flight
    _wanted: set[str] = field(default_factory=set)
    _spare: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self._entries) or any(self._waiters.values())

    # -- using -------------------------------------------------------------------------

    def use(self, kind: str, depth: int = 1, now: float | None = None) -> WarmEntry | None:
        """A lease of ``kind`` with room for one more use (idle first, then the one with
        the fewest uses, up to ``depth`` while its uses are short), its use counted; None
        if there is none. ``now`` times the use if it starts at once."""
        with self._lock:
            return self._use(kind, depth, now)

    def take(
        self, kind: str, depth: int, now: float | None = None
    ) -> tuple[WarmEntry | None, bool]:
        """As ``use``, and whether to ask for one more lease of ``kind``: the use was
        queued behind another, and fewer acquires of the kind are in flight than uses
        wait or are queued."""
        with self._lock:
            entry = self._use(kind, depth, now)
            return entry, entry is not None and self._ask_for_queued(entry)

    def use_or_wait(
        self, waiter: Waiter, max_waiting: int | None = None, now: float | None = None
    ) -> tuple[WarmEntry | None, bool]:
        """An idle lease now, or ``waiter`` queued: (entry, whether to ask for one more).

        One more is asked for while fewer acquires of this kind are in flight than
        uses wait for it or are queued behind others. ``TooManyWaiting`` if ``max_waiting`` uses of this kind wait
        already (then nothing changed).
        """
        with self._lock:
            entry = self._use(waiter.kind, waiter.depth, now)
            if entry is not None:
                return entry, self._ask_for_queued(entry)
            waiters = self._waiters.setdefault(waiter.kind, deque())
            if max_waiting is not None:
                waiting = sum(1 for w in waiters if not w.done)
                if waiting >= max_waiting:
                    raise TooManyWaiting(waiting)
            waiters.append(waiter)
            asking = self._asking.get(waiter.kind, 0)
            if asking < self._wanting(waiter.kind):
                self._asking[waiter.kind] = asking + 1
                return None, True
            return None, False

    def give_up(self, waiter: Waiter) -> None:
        """``waiter`` stops waiting (timed out, cancelled): it gets nothing more."""
        with self._lock:
            waiter.done = True

    def add(self, record: LeaseRecord, kind: str, now: float, asked: bool = False) -> bool:
        """A lease granted for ``kind`` joins the share (busy, for the caller, if not
        ``asked``; else handed to a waiter or kept idle). False if it must go back."""
        with self._lock:
            if asked:
                self._asking[kind] = max(0, self._asking.get(kind, 0) - 1)
            entry = WarmEntry(record, kind, uses=0 if asked else 1)
            entry.running_since = None if asked else now
            self._entries[record.lease_id] = entry
            if asked:
                return self._free(entry, now)
            self._open.setdefault(kind, {})[record.lease_id] = None
            return True

    def done(self, lease_id: str, now: float) -> LeaseRecord | None:
        """The use of ``lease_id`` ended: handed to a waiter, or idle; or returned, to go
        back to the coordinator (wanted by someone else, or no longer warm)."""
        with self._lock:
            entry = self._entries.get(lease_id)
            if entry is None or not entry.busy:
                return None
            entry.uses -= 1
            entry.lease = None
            if entry.running_since is not None:
                entry.pace = now - entry.running_since
            # The next use queued behind it (in Ray) starts now.
            entry.running_since = now if entry.uses else None
            if self._free(entry, now):
                return None
            return entry.record

    def busy_of(self, kind: str) -> int:
        """How many leases of ``kind`` are in use now."""
        with self._lock:
            return sum(1 for e in self._entries.values() if e.busy and e.kind == kind)

    def still_asking(self, kind: str) -> bool:
        """Is the ask about to go out still wanted? If no use of ``kind`` waits or is
        queued any more (a lease of its own came free first), it is dropped and counted
        as gone."""
        with self._lock:
            if self._needs_more(kind):
                return True
            self._asking[kind] = max(0, self._asking.get(kind, 0) - 1)
            return False

    def needless_asks(self) -> set[str]:
        """Kinds with acquires in flight and no use waiting any more (their waiters were
        served by leases of their own): those acquires are to be cancelled; counted as
        gone from now on."""
        with self._lock:
            needless = {
                kind
                for kind, asking in self._asking.items()
                if asking and not self._needs_more(kind)
            }
            for kind in needless:
                self._asking[kind] = 0
                self._waiters.pop(kind, None)
            return needless

    def asked_failed(self, kind: str, error: BaseException, permanent: bool) -> None:
        """An acquire for ``kind``'s waiters failed: the oldest waiter (all of them if
        the answer would be the same for each) gets ``error``."""
        with self._lock:
            self._asking[kind] = max(0, self._asking.get(kind, 0) - 1)
            waiters = self._waiters.get(kind)
            while waiters:
                waiter = waiters.popleft()
                if waiter.done:
                    continue
                waiter.done = True
                waiter.deliver(None, error)
                if not permanent:
                    break

    # -- the coordinator's word ----------------------------------------------------------

    def want(self, lease_ids: list[str], spare: list[str], now: float) -> list[LeaseRecord]:
        """Waiting requests want these back: the idle ones to give back now."""
        with self._lock:
            self._wanted.update(i for i in lease_ids if i in self._entries)
            self._spare.update(i for i in spare if i in self._entries)
            return self._take_idle(lambda e: e.record.lease_id in self._wanted)

    def stale(self, now: float, idle_s: float, spare_idle_s: float) -> list[LeaseRecord]:
        """Idle ones to give back: idle past ``idle_s``, or past ``spare_idle_s`` when
        another request waits for what they hold."""

        def stale(entry: WarmEntry) -> bool:
            limit = spare_idle_s if entry.record.lease_id in self._spare else idle_s
            return now - entry.idle_since >= limit

        with self._lock:
            return self._take_idle(stale)

    def drop(self, lease_id: str) -> WarmEntry | None:
        """``lease_id`` ended (revoked, expired, reclaimed): forget it."""
        with self._lock:
            entry = self._entries.get(lease_id)
            if entry is not None:
                self._forget(entry)
            return entry

    def revoking(self, lease_id: str) -> tuple[WarmEntry | None, LeaseRecord | None]:
        """``lease_id`` is being revoked: never reused; returned at once if idle."""
        with self._lock:
            entry = self._entries.get(lease_id)
            if entry is None:
                return None, None
            self._wanted.add(lease_id)
            if entry.busy:
                return entry, None
            self._forget(entry)
            return entry, entry.record

    def close(self) -> list[LeaseRecord]:
        """Everything goes back; waiting uses fail with ``error`` set by the caller."""
        with self._lock:
            records = [entry.record for entry in self._entries.values()]
            self._entries.clear()
            self._idle.clear()
            self._open.clear()
            self._wanted.clear()
            self._spare.clear()
            return records

    def fail_waiters(self, error: BaseException) -> None:
        with self._lock:
            for waiters in self._waiters.values():
                for waiter in waiters:
                    if not waiter.done:
                        waiter.done = True
                        waiter.deliver(None, error)
            self._waiters.clear()
            self._asking.clear()

    # -- reading -----------------------------------------------------------------------

    def get(self, lease_id: str) -> WarmEntry | None:
        return self._entries.get(lease_id)

    def entries(self) -> list[WarmEntry]:
        with self._lock:
            return list(self._entries.values())

    def counts(self) -> WarmCounts:
        with self._lock:
            busy = sum(1 for e in self._entries.values() if e.busy)
            uses = sum(e.uses for e in self._entries.values())
            waiting = sum(1 for ws in self._waiters.values() for w in ws if not w.done)
            return WarmCounts(
                idle=len(self._entries) - busy, busy=busy, waiting=waiting, queued=uses - busy
            )

    def uses(self) -> tuple[frozenset[str], frozenset[str]]:
        """(idle lease ids, busy lease ids)."""
        with self._lock:
            idle = frozenset(i for i, e in self._entries.items() if not e.busy)
            return idle, frozenset(self._entries.keys() - idle)

    # -- inside the lock -----------------------------------------------------------------

    def _use(self, kind: str, depth: int, now: float | None = None) -> WarmEntry | None:
        ids = self._idle.get(kind)
        while ids:
            entry = self._entries.get(ids.pop())
            if entry is not None and not entry.busy:
                self._count_use(entry)
                entry.running_since = now
                return entry
        if depth <= 1:
            return None
        fewest: WarmEntry | None = None
        for lease_id in self._open.get(kind, ()):
            entry = self._entries[lease_id]
            if lease_id in self._wanted or entry.uses >= self._room(entry, depth):
                continue  # going back, or full
            if fewest is None or entry.uses < fewest.uses:
                fewest = entry
        if fewest is not None:
            self._count_use(fewest)
        return fewest

    @staticmethod
    def _room(entry: WarmEntry, depth: int) -> int:
        """How many uses ``entry`` may carry: ``depth`` while its uses are short."""
        short = entry.pace is not None and entry.pace <= SHORT_USE_S
        return depth if short else 1

    def _ask_for_queued(self, entry: WarmEntry) -> bool:
        """A use queued behind another: ask for one more lease while fewer are asked for
        than uses wait or are queued (each could run now on one more)."""
        asking = self._asking.get(entry.kind, 0)
        if entry.uses < 2 or asking >= self._wanting(entry.kind):
            return False
        self._asking[entry.kind] = asking + 1
        return True

    def _wanting(self, kind: str) -> int:
        """Uses of ``kind`` that more leases would run now: those waiting here, and those
        queued in Ray behind another use of their lease."""
        waiting = sum(1 for w in self._waiters.get(kind, ()) if not w.done)
        queued = sum(self._entries[i].uses - 1 for i in self._open.get(kind, ()))
        return waiting + queued

    def _needs_more(self, kind: str) -> bool:
        """Whether uses of ``kind`` wait here, or are queued behind others in Ray."""
        return self._wanting(kind) > 0

    def _count_use(self, entry: WarmEntry) -> None:
        entry.uses += 1
        self._open.setdefault(entry.kind, {})[entry.record.lease_id] = None

    def _free(self, entry: WarmEntry, now: float) -> bool:
        """A use of ``entry`` ended (or it was just granted): its room to waiters, else
        idle once no use is left; False if it must go back (only once no use is left)."""
        lease_id = entry.record.lease_id
        if lease_id in self._wanted:
            if entry.busy:
                return True  # what was queued in it runs out; then it goes back
            self._forget(entry)
            return False
        waiters = self._waiters.get(entry.kind)
        while waiters:  # in their order: one that has no room here is not passed over
            waiter = waiters[0]
            if not waiter.done and entry.uses >= self._room(entry, waiter.depth):
                break
            waiters.popleft()
            if not waiter.done:
                waiter.done = True
                self._count_use(entry)
                if entry.uses == 1:
                    entry.running_since = now  # it starts at once
                waiter.deliver(entry, None)
        if entry.busy:
            return True
        self._open.get(entry.kind, {}).pop(lease_id, None)
        entry.idle_since = now
        self._idle.setdefault(entry.kind, []).append(lease_id)
        return True

    def _take_idle(self, which: Callable[[WarmEntry], bool]) -> list[LeaseRecord]:
        taken = [e for e in self._entries.values() if not e.busy and which(e)]
        for entry in taken:
            self._forget(entry)
        return [entry.record for entry in taken]

    def _forget(self, entry: WarmEntry) -> None:
        lease_id = entry.record.lease_id
        self._entries.pop(lease_id, None)
        self._wanted.discard(lease_id)
        self._spare.discard(lease_id)
        self._open.get(entry.kind, {}).pop(lease_id, None)
        ids = self._idle.get(entry.kind)
        if ids and lease_id in ids:
            ids.remove(lease_id)


__all__ = [
    "SHORT_USE_S",
    "SPARE_IDLE_S",
    "TooManyWaiting",
    "Waiter",
    "WarmCounts",
    "WarmEntry",
    "WarmShare",
    "queue_depth",
]
