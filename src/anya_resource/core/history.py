"""A bounded ring of compact cluster snapshots: utilisation over time, for plots.

The coordinator offers the ring one entry per heartbeat (``due`` says when one is
wanted) and answers ``history(seconds)`` from it. Each entry is::

    {"at": t,
     "resources": {r: {"capacity", "granted", "free", "waiting"}},
     "pools": {name: {"size", "in_use", "waiting"}},
     "nodes": {node_id: {"memory_percent", "cpu_percent", "pressured", "granted": {r: n}}},
     "leases": n, "waiting": n}

in the core's units (bytes; thousandths of a core or device; slots), like the
snapshot. ``memory_percent``/``cpu_percent`` are the figures pressure acts on (None
before a node's first heartbeat).

Three bounds, whichever bites first: the time window (an hour by default), a number
of entries (with a fast heartbeat the ring samples less often, so that it still
covers the window), and a byte budget (entries are kept JSON-encoded, about a third of
the memory of the dicts: ~1 KB for 4 nodes, ~18 KB for 100 (test_history measures both), so an hour of 100 nodes
fits the 64 MiB budget and a larger cluster keeps a shorter history rather than grow
the coordinator). Pure: the caller passes the time in.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any

from anya_resource.core.state import ClusterState
from anya_resource.core.views import ledgers
from anya_resource.errors import InvalidRequest

DEFAULT_WINDOW_S = 3600.0
MAX_ENTRIES = 3600
MAX_BYTES = 64 * 1024 * 1024


def _percent(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def compact(state: ClusterState, now: float) -> dict[str, Any]:
    """One history entry: the snapshot's ledger figures, without the queue's demand split
    (which walks every waiter)."""
    nodes, totals = ledgers(state)
    demand = state.waiting_demand
    keep = ("capacity", "granted", "free")
    return {
        "at": now,
        "resources": {
            r: {**{k: row[k] for k in keep}, "waiting": demand.get(r, 0)}
            for r, row in totals.items()
        },
        "pools": {
            name: {"size": pool.size, "in_use": pool.in_use, "waiting": demand.get(name, 0)}
            for name, pool in state.pools.items()
        },
        "nodes": {
            node_id: {
                "memory_percent": _percent(row["memory_percent"]),
                "cpu_percent": _percent(row["cpu_percent"]),
                "pressured": row["pressured"],
                "granted": {r: figures["granted"] for r, figures in row["resources"].items()},
            }
            for node_id, row in nodes.items()
        },
        "leases": len(state.leases),
        "waiting": len(state.queue),
    }


class HistoryRing:
    """The last ``window_s`` of entries, at most one per ``interval`` seconds."""

    def __init__(
        self,
        heartbeat_s: float,
        window_s: float = DEFAULT_WINDOW_S,
        max_entries: int = MAX_ENTRIES,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        if not (heartbeat_s > 0 and window_s > 0 and max_entries > 0 and max_bytes > 0):
            raise ValueError("heartbeat_s, window_s, max_entries and max_bytes must be > 0")
        self.window_s = window_s
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        # One per heartbeat, unless that many would not cover the window.
        self.interval = max(heartbeat_s, window_s / max_entries)
        self.bytes = 0
        self._entries: deque[tuple[float, bytes]] = deque()
        self._next_at: float | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def due(self, now: float) -> bool:
        """Whether an entry is wanted at ``now``."""
        return self._next_at is None or now >= self._next_at

    def add(self, entry: dict[str, Any], now: float) -> None:
        blob = json.dumps(entry, separators=(",", ":")).encode()
        self._entries.append((now, blob))
        self.bytes += len(blob)
        # Scheduled from the last slot, not from ``now``: a loop that wakes a little
        # late every time would otherwise miss every other slot. After a stall, no burst.
        slot = now if self._next_at is None else self._next_at
        self._next_at = max(slot + self.interval, now + self.interval / 2)
        self._trim(now)

    def _trim(self, now: float) -> None:
        oldest = now - self.window_s
        entries = self._entries
        while entries and (
            len(entries) > self.max_entries or self.bytes > self.max_bytes or entries[0][0] < oldest
        ):
            self.bytes -= len(entries.popleft()[1])

    def since(self, now: float, seconds: float | None = None) -> list[bytes]:
        """The encoded entries of the last ``seconds`` (None: all), oldest first."""
        if seconds is None:
            return [blob for _, blob in self._entries]
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds >= 0:
            raise InvalidRequest(f"seconds: got {seconds!r}, expected a number >= 0 or None")
        cutoff = now - seconds
        picked: list[bytes] = []
        for at, blob in reversed(self._entries):
            if at < cutoff:
                break
            picked.append(blob)
        picked.reverse()
        return picked


def decode(blobs: list[bytes]) -> list[dict[str, Any]]:
    """Entries as ``HistoryRing.since`` returns them, back to dicts."""
    return [json.loads(blob) for blob in blobs]
