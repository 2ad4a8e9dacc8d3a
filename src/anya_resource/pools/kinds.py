"""Which connector opens a pool's connections, by the pool's ``kind`` and the client's flavour.

``async`` is for ``ResourceManager``; ``sync`` for ``SyncResourceManager``, whose
callers use blocking connections from their own threads.
"""

from __future__ import annotations

from typing import Literal

from anya_resource.config import PoolPolicy
from anya_resource.errors import InvalidRequest
from anya_resource.pools.bitcoin import AsyncBitcoin, BlockingBitcoin
from anya_resource.pools.connectors import BlockingConnector, Connector, ThreadedConnector
from anya_resource.pools.http_client import AsyncHttp, BlockingHttp
from anya_resource.pools.postgres import AsyncPostgres, BlockingPostgres

Flavour = Literal["async", "sync"]
MAX_THREADS = 8  # per blocking pool: enough for opens and resets, not one per slot


def connector_for(name: str, policy: PoolPolicy, flavour: Flavour) -> Connector:
    """The connector of pool ``name``; ``slot`` pools have no connections."""
    if flavour == "async":
        return _async_connector(name, policy)
    blocking = _blocking_connector(name, policy)
    return ThreadedConnector(blocking, name, workers=min(policy.size, MAX_THREADS))


def _async_connector(name: str, policy: PoolPolicy) -> Connector:
    if policy.kind == "postgres":
        return AsyncPostgres(name, policy)
    if policy.kind == "bitcoin-rpc":
        return AsyncBitcoin(name, policy)
    if policy.kind == "http":
        return AsyncHttp(name, policy)
    raise InvalidRequest(f"pool {name!r}: kind {policy.kind!r} has no connections")


def _blocking_connector(name: str, policy: PoolPolicy) -> BlockingConnector:
    if policy.kind == "postgres":
        return BlockingPostgres(name, policy)
    if policy.kind == "bitcoin-rpc":
        return BlockingBitcoin(name, policy)
    if policy.kind == "http":
        return BlockingHttp(name, policy)
    raise InvalidRequest(f"pool {name!r}: kind {policy.kind!r} has no connections")
