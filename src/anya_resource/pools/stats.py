"""What a process pool has done and holds now, as a frozen snapshot (anyio's style)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PoolStatistics:
    """One process's pool at one moment. Counts since the pool was created."""

    pool: str
    kind: str
    size: int  # the pool's cluster-wide cap (every process together)
    open: int  # connections this process holds open, each on one slot: idle + in_use
    idle: int  # open, warm, waiting for the next caller
    in_use: int  # handed out (or being checked, reset or replaced)
    opening: int  # slot granted, connection being opened
    waiting: int  # callers of this process waiting for a connection now
    requesting: int  # slot requests of this process waiting at the coordinator now
    checkouts: int  # connections handed out
    waits: int  # hand-outs that had to wait (no idle connection at hand)
    wait_time_s: float  # their total wait
    max_wait_s: float  # the longest of them
    timeouts: int  # callers that gave up (their timeout passed)
    validation_failures: int  # connections found broken before hand-out, and replaced
    connections_opened: int
    connections_closed: int
    connect_errors: int  # attempts to open a connection that failed
    leaks: int  # hand-outs held past leak_threshold_s (each warned about once)

    @property
    def mean_wait_s(self) -> float:
        """The mean wait of the hand-outs that waited (0 when none did)."""
        return self.wait_time_s / self.waits if self.waits else 0.0


@dataclass
class Counters:
    """The running totals behind ``PoolStatistics``."""

    checkouts: int = 0
    waits: int = 0
    wait_time_s: float = 0.0
    max_wait_s: float = 0.0
    timeouts: int = 0
    validation_failures: int = 0
    connections_opened: int = 0
    connections_closed: int = 0
    connect_errors: int = 0
    leaks: int = 0

    def checked_out(self, waited: bool, seconds: float) -> None:
        self.checkouts += 1
        if waited:
            self.waits += 1
            self.wait_time_s += seconds
            self.max_wait_s = max(self.max_wait_s, seconds)
