"""``http`` pools: an httpx client on the pool's base URL (``AsyncClient``, or ``Client``
for the blocking twin).

One slot is one client limited to one socket, so a slot really is one connection to
the service, whatever the caller does with the client while it holds it.
"""

from __future__ import annotations

import ssl
from functools import cache
from typing import Any

import certifi
import httpx

from anya_resource.config import PoolPolicy
from anya_resource.errors import ConfigError
from anya_resource.pools import credentials
from anya_resource.pools.errors import ConnectionFailed

# One keep-alive socket per client: the pool's slot is that socket.
ONE_SOCKET = httpx.Limits(max_connections=1, max_keepalive_connections=1)


def base_url(name: str, policy: PoolPolicy) -> str:
    if not policy.url:
        raise ConfigError(f"pool {name!r} (kind {policy.kind}): expected a url, got none")
    return policy.url


@cache
def tls_context() -> ssl.SSLContext:
    """One TLS context for every client: building one (loading the CA bundle) takes
    ~0.1 s of CPU, which httpx would otherwise spend on each new client."""
    return ssl.create_default_context(cafile=certifi.where())


def client_options(name: str, policy: PoolPolicy, read_timeout: float | None) -> dict[str, Any]:
    """What every client of the pool is built with (credentials read afresh each time)."""
    options: dict[str, Any] = {
        "verify": tls_context(),
        "limits": ONE_SOCKET,
        # Connecting is bounded by the policy; how long one request may take is the
        # caller's business (httpx takes a timeout per request).
        "timeout": httpx.Timeout(read_timeout, connect=policy.connect_timeout_s),
    }
    auth = credentials.http_auth(name, policy)
    if auth is not None:
        options["auth"] = auth
    return options


def _check_status(name: str, response: httpx.Response) -> None:
    if response.status_code >= 500:
        raise ConnectionFailed(
            f"pool {name!r}: validation GET {response.url} answered {response.status_code}"
        )


class AsyncHttp:
    """``Connector`` of ``httpx.AsyncClient``s on the pool's URL."""

    settle_s = 0.0  # the server frees a closed socket at once

    def __init__(self, name: str, policy: PoolPolicy) -> None:
        self._name = name
        self._policy = policy
        self._url = base_url(name, policy)

    async def open(self) -> httpx.AsyncClient:
        options = client_options(self._name, self._policy, read_timeout=None)
        return httpx.AsyncClient(base_url=self._url, **options)

    def usable(self, connection: Any) -> bool:
        return not connection.is_closed

    async def validate(self, connection: Any) -> None:
        if self._policy.validate_query:
            response = await connection.get(
                self._policy.validate_query, timeout=self._policy.connect_timeout_s
            )
            _check_status(self._name, response)

    async def reset(self, connection: Any) -> bool:
        return not connection.is_closed

    async def close(self, connection: Any) -> None:
        await connection.aclose()

    async def shutdown(self) -> None:
        return None


class BlockingHttp:
    """``BlockingConnector`` of ``httpx.Client``s on the pool's URL."""

    settle_s = 0.0  # the server frees a closed socket at once

    def __init__(self, name: str, policy: PoolPolicy) -> None:
        self._name = name
        self._policy = policy
        self._url = base_url(name, policy)

    def open(self) -> httpx.Client:
        options = client_options(self._name, self._policy, read_timeout=None)
        return httpx.Client(base_url=self._url, **options)

    def usable(self, connection: Any) -> bool:
        return not connection.is_closed

    def validate(self, connection: Any) -> None:
        if self._policy.validate_query:
            response = connection.get(
                self._policy.validate_query, timeout=self._policy.connect_timeout_s
            )
            _check_status(self._name, response)

    def reset(self, connection: Any) -> bool:
        return not connection.is_closed

    def close(self, connection: Any) -> None:
        connection.close()
