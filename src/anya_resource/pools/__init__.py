"""Process-local pools of real connections, each connection standing on a slot lease.

``manager.acquire_connection("postgres")`` hands out a live connection whose slot of
the pool is held, cluster-wide, for as long as the connection is open: the sum of open
connections over every process never passes the pool's size. See docs/pools.md.
"""

from __future__ import annotations

from typing import Protocol

from anya_resource.pools.bitcoin import AsyncBitcoinRpc, BitcoinRpc
from anya_resource.pools.errors import (
    ConnectionFailed,
    RpcAuthError,
    RpcCallError,
    RpcError,
    RpcWorkQueueExceeded,
)
from anya_resource.pools.handle import PooledConnection
from anya_resource.pools.stats import PoolStatistics


class HasPools(Protocol):
    """A manager: ``ResourceManager`` or ``SyncResourceManager``."""

    def pool_statistics(self, pool: str) -> PoolStatistics | None: ...


def pool_statistics(manager: HasPools, pool: str) -> PoolStatistics | None:
    """This process's pool ``pool`` of ``manager``, or None before its first use."""
    return manager.pool_statistics(pool)


__all__ = [
    "AsyncBitcoinRpc",
    "BitcoinRpc",
    "ConnectionFailed",
    "PoolStatistics",
    "PooledConnection",
    "RpcAuthError",
    "RpcCallError",
    "RpcError",
    "RpcWorkQueueExceeded",
    "pool_statistics",
]
