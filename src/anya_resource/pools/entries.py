"""The records a process pool keeps: open connections, callers' requests, waiting callers."""

from __future__ import annotations

import asyncio
import random
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from anya_resource.config import Priority

if TYPE_CHECKING:
    from anya_resource.lease import Lease
    from anya_resource.pools.handle import PooledConnection

# A connection lives up to this fraction less than max_lifetime_s, at random, so that
# connections opened together (a burst at start) are not all closed together (HikariCP).
LIFETIME_JITTER = 0.05
STACK_LIMIT = 40


def end_of_life(opened_at: float, max_lifetime_s: float, draw: float | None = None) -> float:
    """When a connection opened at ``opened_at`` is to be replaced."""
    fraction = random.random() if draw is None else draw
    return opened_at + max_lifetime_s * (1.0 - LIFETIME_JITTER * fraction)


def caller_stack(skip: int = 2) -> traceback.StackSummary:
    """The stack of the code calling our caller, for leak reports.

    Source lines are looked up only if the stack is ever printed: this runs on every
    hand-out, a leak report is rare.
    """
    frames = traceback.walk_stack(sys._getframe(skip))
    stack = traceback.StackSummary.extract(frames, limit=STACK_LIMIT, lookup_lines=False)
    stack.reverse()
    return stack


@dataclass(frozen=True)
class Checkout:
    """One caller's ask for a connection: the options of ``acquire_connection``."""

    priority: Priority | str | int = "normal"
    tenant: str | None = None
    timeout: float | None = None
    ttl: float | None = None
    preemptible: bool = False
    node: str | None = None
    detached: bool = False
    on_revoked: Callable[[Lease], None] | None = None
    level: int = 0  # the priority as an integer (orders this process's waiters)
    stack: traceback.StackSummary | None = None  # where the caller asked from


@dataclass(eq=False)
class Entry:
    """One open connection and the slot lease it stands on."""

    lease: Lease
    connection: Any
    end_of_life: float
    granted_at: float = 0.0  # when its slot was granted (connections may be replaced on it)
    last_used: float = 0.0  # when it last went idle (read only while it is idle)
    handle: PooledConnection | None = None  # who has it now (None: idle, or being checked)
    taken_at: float = 0.0
    stack: traceback.StackSummary | None = None
    leak_warned: bool = False


@dataclass(eq=False)
class Waiter:
    """A caller waiting for a connection; higher priority first, then first come."""

    checkout: Checkout
    seq: int
    future: asyncio.Future[Entry]

    def __lt__(self, other: Waiter) -> bool:
        return (-self.checkout.level, self.seq) < (-other.checkout.level, other.seq)

    def give(self, entry: Entry) -> bool:
        """Hand ``entry`` over; False when the caller has already given up (keep it then)."""
        if self.future.done():
            return False
        self.future.set_result(entry)
        return True

    def fail(self, error: BaseException) -> bool:
        if self.future.done():
            return False
        self.future.set_exception(error)
        return True
