"""Who is asked to give back what others wait for, and how often.

Two kinds of asking, both through a manager's watch (``anya_resource.messages``):

* **Pool slots.** A process keeps the connections it is done with warm, each on its
  slot, until their idle timeout. While requests from *other* managers wait for a pool,
  every manager holding its slots hears ``pool_wanted`` for it, and its pool closes
  idle connections and gives their slots back. A manager is told once until it has
  read the hint (``read``); the hint is repeated each ``repeat`` while waiters remain,
  and a request queued on a pool tells its holders at once, at most every
  ``POOL_HINT_MIN_S`` per pool.
* **Warm leases.** ``core/warm.py`` decides which held leases the waiting requests want
  back; each manager hears ``wanted`` once per lease and level.

Pure: the coordinator passes the clock's reading and sends what is returned.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from anya_resource.core.model import LeaseRecord, Request, channel_of
from anya_resource.core.state import ClusterState
from anya_resource.core.warm import wanted_back
from anya_resource.messages import PoolWantedEvent, WantedEvent

POOL_HINT_MIN_S = 0.05  # a queued request re-tells its pools' holders at most this often

Tell = tuple[str, PoolWantedEvent | WantedEvent]  # (listener channel, event)


@dataclass
class GiveBack:
    hinted: dict[str, set[str]] = field(default_factory=dict)  # channel -> pools told, unread
    hinted_at: dict[str, float] = field(default_factory=dict)  # pool -> last told
    asked_back: set[str] = field(default_factory=set)  # leases told "wanted"
    asked_spare: set[str] = field(default_factory=set)  # ... told "spare"

    # -- pools ------------------------------------------------------------------------

    def queued(self, request: Request, state: ClusterState, now: float) -> list[Tell]:
        """``request`` was queued: its pools' holders hear it now, unless just told."""
        pools = {p for p in request.pools if now - self.hinted_at.get(p, -1e18) >= POOL_HINT_MIN_S}
        if not pools:
            return []
        self.hinted_at.update(dict.fromkeys(pools, now))
        return self._pool_tells({pool: {_asker(request)} for pool in pools}, state.leases)

    def repeat(self, state: ClusterState) -> list[Tell]:
        """Every pool that still has waiters: tell its holders who have not heard yet."""
        waiting: dict[str, set[str | None]] = {}
        for waiter in state.queue.by_id.values():
            for pool in waiter.request.pools:
                waiting.setdefault(pool, set()).add(_asker(waiter.request))
        return self._pool_tells(waiting, state.leases) if waiting else []

    def read(self, channel: str, unread: Iterable[str]) -> None:
        """``channel``'s manager has read every hint but ``unread`` (the pools of the
        hints still pending for it): the others may be told again."""
        self.hinted[channel] = set(unread)

    def _pool_tells(
        self, waiting: Mapping[str, set[str | None]], leases: Iterable[LeaseRecord]
    ) -> list[Tell]:
        tells: list[Tell] = []
        for lease in leases:
            listener = lease.listener
            if listener is None:
                continue
            told = self.hinted.setdefault(listener, set())
            for pool in lease.pools:
                # Not when the holder is the only one waiting: it would give slots back
                # to itself. Once is enough until it has read the hint.
                if waiting.get(pool, set()) - {listener} and pool not in told:
                    told.add(pool)
                    tells.append((listener, {"kind": "pool_wanted", "pool": pool}))
        return tells

    # -- warm leases ------------------------------------------------------------------

    def warm(self, state: ClusterState, now: float) -> list[Tell]:
        """Ask managers for the warm leases waiting requests want (each once per level)."""
        active = state.leases.active
        self.asked_back &= active.keys()
        self.asked_spare &= active.keys()
        found = wanted_back(state, now)
        tells: list[Tell] = []
        for listener in sorted(found.wanted.keys() | found.spare.keys()):
            wanted = found.wanted.get(listener, set()) - self.asked_back
            spare = found.spare.get(listener, set()) - self.asked_spare - self.asked_back
            if wanted or spare:
                self.asked_back |= wanted
                self.asked_spare |= spare
                event: WantedEvent = {
                    "kind": "wanted",
                    "leases": sorted(wanted),
                    "spare": sorted(spare),
                }
                tells.append((listener, event))
        return tells


def _asker(request: Request) -> str | None:
    """The channel (else holder process) that waits on ``request``."""
    return channel_of(request.idempotency_key) or request.holder.key
