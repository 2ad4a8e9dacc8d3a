"""``PooledConnection``: what ``acquire_connection`` hands out for pools with connections.

It is a ``ResourceConnection`` (so a ``Lease``): its fields are those of the slot lease
the connection stands on. Giving it back (``async with``/``with`` ending, or
``await conn.return_to_pool()``) returns the connection to this process's pool, still on
its slot; the slot goes back to the coordinator only when the pool closes the connection
(or ``await manager.release(conn)`` gives the slot itself back).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

from anya_resource.lease import Lease, ResourceConnection

if TYPE_CHECKING:
    from anya_resource.pools.entries import Entry
    from anya_resource.pools.pool import ConnectionPool

log = logging.getLogger(__name__)


@dataclass(eq=False)
class PooledConnection(ResourceConnection):
    """A live connection (``.connection``) on one slot of its pool (``.pool``)."""

    _pool: ConnectionPool | None = field(default=None, repr=False)
    _entry: Entry | None = field(default=None, repr=False)
    _given_back: bool = field(default=False, init=False, repr=False)

    @classmethod
    def on_slot(
        cls,
        slot: Lease,
        pool: ConnectionPool,
        entry: Entry,
        on_revoked: Callable[[Lease], None] | None,
    ) -> PooledConnection:
        return cls(
            lease_id=slot.lease_id,
            token=slot.token,
            fencing_token=slot.fencing_token,
            node_id=slot.node_id,
            resources=dict(slot.resources),
            priority=slot.priority,
            tenant=slot.tenant,
            expires_at=slot.expires_at,
            on_revoked=on_revoked,
            _record=slot._record,
            _manager=slot._manager,
            pool=pool.name,
            connection=entry.connection,
            _pool=pool,
            _entry=entry,
        )

    # ``ResourceManager.release(conn)`` sets ``released`` just before it gives the slot
    # itself back to the coordinator. Hearing of it here lets the pool close the real
    # connection at once: a slot given back with its connection still open would let
    # the service see more connections than the pool's size.
    @property  # type: ignore[misc]  # a property over Lease's field, on purpose (above)
    def released(self) -> bool:
        return self._given_back

    @released.setter
    def released(self, value: bool) -> None:
        first = value and not getattr(self, "_given_back", False)
        self._given_back = value
        pool = getattr(self, "_pool", None)
        if first and pool is not None:
            pool.slot_given_back(self)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_pool"] = state["_entry"] = None  # this process's pool stays here
        return state

    def detach(self) -> None:
        """The pool took the connection back: this hand-out is over."""
        self._given_back = True
        self.connection = None
        self._entry = None

    def slot_ended(self, slot: Lease) -> None:
        """The coordinator took the slot back while this was handed out."""
        self.revoked, self.expired, self.reason = slot.revoked, slot.expired, slot.reason
        if self.on_revoked is not None:
            try:
                self.on_revoked(self)
            except Exception:
                log.exception("on_revoked callback of %s failed", self.lease_id)

    async def closed(self) -> None:
        """Once the slot itself was given back: wait until the connection is closed."""
        if self._pool is not None:
            await self._pool.closed(self.lease_id)

    async def return_to_pool(self) -> None:
        """Give the connection back to this process's pool: it stays open, on its slot.

        (``await manager.release(conn)`` gives the slot itself back.)
        """
        if self._pool is not None:
            await self._pool.put(self)

    async def release(self) -> None:
        """Deprecated name of ``return_to_pool()``, which it calls: unlike
        ``Lease.release()``, it keeps the slot."""
        warnings.warn(
            "PooledConnection.release() keeps the slot: call return_to_pool() "
            "(or manager.release(conn) to give the slot back)",
            DeprecationWarning,
            stacklevel=2,
        )
        await self.return_to_pool()

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.return_to_pool()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._manager is None or not self._manager.blocking:
            raise TypeError("this connection came from the async ResourceManager: use 'async with'")
        self._manager.run_from_thread(self.return_to_pool())
