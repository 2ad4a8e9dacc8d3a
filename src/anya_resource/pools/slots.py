"""Where a process pool gets its slots: leases of the pool from the coordinator.

A slot is a normal lease, held by this process (never detached): the manager renews
it, and it is reclaimed if the process dies, as any lease is. The pool only sees this
narrow interface, which keeps it testable without Ray.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from anya_resource.lease import Lease
from anya_resource.pools.entries import Checkout

if TYPE_CHECKING:
    from anya_resource.client import ResourceManager


class SlotSource(Protocol):
    async def acquire(
        self, pool: str, checkout: Checkout, on_ended: Callable[[Lease], None]
    ) -> Lease:
        """One slot of ``pool``, waiting as long as it takes (cancel to give up)."""

    def holds(self, lease: Lease) -> bool:
        """Whether ``lease`` is still ours and may be used (not revoked, expired, released)."""

    def release(self, lease: Lease) -> None:
        """Give the slot back, without waiting for the round trip (it is still delivered)."""


class ManagerSlots:
    """Slots as leases of a ``ResourceManager``."""

    def __init__(self, manager: ResourceManager) -> None:
        self._manager = manager

    async def acquire(
        self, pool: str, checkout: Checkout, on_ended: Callable[[Lease], None]
    ) -> Lease:
        spec = self._manager._spec(
            {"pools": {pool: 1}},
            priority=checkout.priority,
            tenant=checkout.tenant,
            ttl=checkout.ttl,
            preemptible=checkout.preemptible,
            node=checkout.node,
        )
        # No timeout: the pool withdraws the request (cancels it) when nobody needs it.
        lease: Lease = await self._manager._acquire(spec, None, Lease, on_ended)
        return lease

    def holds(self, lease: Lease) -> bool:
        return lease.valid and self._manager.held.get(lease.lease_id) is lease

    def release(self, lease: Lease) -> None:
        if self._manager.held.get(lease.lease_id) is lease:
            self._manager.release_soon(lease)
