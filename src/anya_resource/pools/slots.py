"""Where a process pool gets its slots: leases of the pool from the coordinator.

A slot is a normal lease, held by this process (never detached): the manager renews
it, and it is reclaimed if the process dies, as any lease is. The pool only sees this
narrow interface, which keeps it testable without Ray; and it sees the manager only
through ``SlotManager``, the few public calls it needs (no import of the client).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from anya_resource.config import Priority
from anya_resource.lease import Lease
from anya_resource.pools.entries import Checkout


class SlotSource(Protocol):
    async def acquire(
        self, pool: str, checkout: Checkout, on_ended: Callable[[Lease], None]
    ) -> Lease:
        """One slot of ``pool``, waiting as long as it takes (cancel to give up)."""

    def holds(self, lease: Lease) -> bool:
        """Whether ``lease`` is still ours and may be used (not revoked, expired, released)."""

    def release(self, lease: Lease) -> None:
        """Give the slot back, without waiting for the round trip (it is still delivered)."""


class SlotManager(Protocol):
    """What ``ManagerSlots`` needs of a manager: ``ResourceManager``'s public calls."""

    def acquire(
        self,
        resources: Mapping[str, Any],
        *,
        priority: Priority | str | int = ...,
        tenant: str | None = ...,
        ttl: float | None = ...,
        preemptible: bool = ...,
        node: str | None = ...,
        on_revoked: Callable[[Lease], None] | None = ...,
    ) -> Awaitable[Lease]: ...

    def holds(self, lease: Lease) -> bool: ...

    def release_soon(self, lease: Lease) -> None: ...


class ManagerSlots:
    """Slots as leases of a ``ResourceManager``."""

    def __init__(self, manager: SlotManager) -> None:
        self._manager = manager

    async def acquire(
        self, pool: str, checkout: Checkout, on_ended: Callable[[Lease], None]
    ) -> Lease:
        # No timeout: the pool withdraws the request (cancels it) when nobody needs it.
        return await self._manager.acquire(
            {"pools": {pool: 1}},
            priority=checkout.priority,
            tenant=checkout.tenant,
            ttl=checkout.ttl,
            preemptible=checkout.preemptible,
            node=checkout.node,
            on_revoked=on_ended,
        )

    def holds(self, lease: Lease) -> bool:
        return lease.valid and self._manager.holds(lease)

    def release(self, lease: Lease) -> None:
        if self._manager.holds(lease):
            self._manager.release_soon(lease)
