"""``bitcoin-rpc`` pools: JSON-RPC to a Bitcoin Core node with httpx.

``connection.call(method, *params)`` sends one call and returns its ``result``
(awaitable in the async client, blocking in the twin). Failures are exceptions of
``pools.errors``: ``RpcWorkQueueExceeded`` for the node's 503, ``RpcCallError`` (with
``code`` and ``message``) for a JSON-RPC error, ``RpcAuthError`` for 401/403 and
``ConnectionFailed`` when the node cannot be reached. The url may name a wallet
(``http://127.0.0.1:8332/wallet/hot``); cookie or user/password auth as the policy says.
"""

from __future__ import annotations

import itertools
from typing import Any

import httpx

from anya_resource.config import PoolPolicy
from anya_resource.pools.errors import ConnectionFailed
from anya_resource.pools.http_client import base_url, client_options
from anya_resource.pools.jsonrpc import request_body, result_of

# bitcoin-cli's own -rpcclienttimeout: a getblock of a large block, or a rescan, is slow.
RPC_READ_TIMEOUT_S = 900.0
HEADERS = {"Content-Type": "application/json"}


def _unreachable(method: str, url: str, exc: httpx.TransportError) -> ConnectionFailed:
    return ConnectionFailed(f"{method}: cannot reach the node at {url}: {exc!r}")


class AsyncBitcoinRpc:
    """A Bitcoin Core JSON-RPC client over one keep-alive connection."""

    def __init__(self, client: httpx.AsyncClient, url: str) -> None:
        self.http = client
        self.url = url
        self._ids = itertools.count(1)

    async def call(self, method: str, *params: Any) -> Any:
        """Call ``method`` with positional ``params``; its ``result``."""
        body = request_body(next(self._ids), method, params)
        try:
            response = await self.http.post(self.url, content=body, headers=HEADERS)
        except httpx.TransportError as exc:
            raise _unreachable(method, self.url, exc) from exc
        return result_of(method, response.status_code, response.content)

    @property
    def closed(self) -> bool:
        return self.http.is_closed

    async def aclose(self) -> None:
        await self.http.aclose()


class BitcoinRpc:
    """The blocking twin of ``AsyncBitcoinRpc``."""

    def __init__(self, client: httpx.Client, url: str) -> None:
        self.http = client
        self.url = url
        self._ids = itertools.count(1)

    def call(self, method: str, *params: Any) -> Any:
        """Call ``method`` with positional ``params``; its ``result``."""
        body = request_body(next(self._ids), method, params)
        try:
            response = self.http.post(self.url, content=body, headers=HEADERS)
        except httpx.TransportError as exc:
            raise _unreachable(method, self.url, exc) from exc
        return result_of(method, response.status_code, response.content)

    @property
    def closed(self) -> bool:
        return self.http.is_closed

    def close(self) -> None:
        self.http.close()


class AsyncBitcoin:
    """``Connector`` of ``AsyncBitcoinRpc`` clients."""

    settle_s = 0.0  # the work queue counts requests, not sockets

    def __init__(self, name: str, policy: PoolPolicy) -> None:
        self._name = name
        self._policy = policy
        self._url = base_url(name, policy)

    async def open(self) -> AsyncBitcoinRpc:
        options = client_options(self._name, self._policy, RPC_READ_TIMEOUT_S)
        return AsyncBitcoinRpc(httpx.AsyncClient(**options), self._url)

    def usable(self, connection: Any) -> bool:
        return not connection.closed

    async def validate(self, connection: Any) -> None:
        if self._policy.validate_query:
            await connection.call(self._policy.validate_query)

    async def reset(self, connection: Any) -> bool:
        return not connection.closed

    async def close(self, connection: Any) -> None:
        await connection.aclose()

    async def shutdown(self) -> None:
        return None


class BlockingBitcoin:
    """``BlockingConnector`` of ``BitcoinRpc`` clients."""

    settle_s = 0.0  # the work queue counts requests, not sockets

    def __init__(self, name: str, policy: PoolPolicy) -> None:
        self._name = name
        self._policy = policy
        self._url = base_url(name, policy)

    def open(self) -> BitcoinRpc:
        options = client_options(self._name, self._policy, RPC_READ_TIMEOUT_S)
        return BitcoinRpc(httpx.Client(**options), self._url)

    def usable(self, connection: Any) -> bool:
        return not connection.closed

    def validate(self, connection: Any) -> None:
        if self._policy.validate_query:
            connection.call(self._policy.validate_query)

    def reset(self, connection: Any) -> bool:
        return not connection.closed

    def close(self, connection: Any) -> None:
        connection.close()
