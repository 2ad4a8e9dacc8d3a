"""Which connector opens a pool's connections, by the pool's ``kind`` and the client's flavour.

``async`` is for ``ResourceManager``; ``sync`` for ``SyncResourceManager``, whose
callers use blocking connections from their own threads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from anya_resource.config import PoolPolicy
from anya_resource.errors import InvalidRequest
from anya_resource.pools.bitcoin import AsyncBitcoin, BlockingBitcoin
from anya_resource.pools.connectors import BlockingConnector, Connector, ThreadedConnector
from anya_resource.pools.http_client import AsyncHttp, BlockingHttp
from anya_resource.pools.postgres import AsyncPostgres, BlockingPostgres

Flavour = Literal["async", "sync"]
MAX_THREADS = 8  # per blocking pool: enough for opens and resets, not one per slot

# Each kind with connections: its async connector and its blocking twin.
KINDS: dict[
    str,
    tuple[Callable[[str, PoolPolicy], Connector], Callable[[str, PoolPolicy], BlockingConnector]],
] = {
    "postgres": (AsyncPostgres, BlockingPostgres),
    "bitcoin-rpc": (AsyncBitcoin, BlockingBitcoin),
    "http": (AsyncHttp, BlockingHttp),
}


def connector_for(name: str, policy: PoolPolicy, flavour: Flavour) -> Connector:
    """The connector of pool ``name``; ``slot`` pools have no connections."""
    if policy.kind not in KINDS:
        raise InvalidRequest(f"pool {name!r}: kind {policy.kind!r} has no connections")
    make_async, make_blocking = KINDS[policy.kind]
    if flavour == "async":
        return make_async(name, policy)
    blocking = make_blocking(name, policy)
    return ThreadedConnector(blocking, name, workers=min(policy.size, MAX_THREADS))
