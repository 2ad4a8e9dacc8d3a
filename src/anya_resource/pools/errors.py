"""Errors of the connection pools and of the services behind them.

They extend the one hierarchy of ``anya_resource.errors``: every one is a
``ResourceError``, and each also subclasses the builtin exception a caller would
naturally catch (``ConnectionError`` for a service that cannot be reached).
"""

from __future__ import annotations

from anya_resource.errors import ResourceError


class ConnectionFailed(ResourceError, ConnectionError):
    """A connection to the pool's service could not be opened, or broke in use."""


class RpcError(ResourceError):
    """A Bitcoin Core JSON-RPC call failed (base class of the errors below)."""


class RpcAuthError(RpcError, PermissionError):
    """HTTP 401/403: wrong rpcuser/rpcpassword or cookie, or an address not in rpcallowip."""


class RpcWorkQueueExceeded(RpcError):
    """HTTP 503 "Work queue depth exceeded": more calls in flight than ``-rpcworkqueue``.

    Through a pool sized within ``-rpcthreads`` + ``-rpcworkqueue`` this does not happen;
    it means something else calls the node too, or the pool is larger than the node allows.
    """


class RpcCallError(RpcError):
    """The node answered the call with a JSON-RPC error object (``code``, ``message``)."""

    def __init__(self, method: str, code: int, message: str) -> None:
        super().__init__(f"{method}: JSON-RPC error {code}: {message}")
        self.method = method
        self.code = code
        self.message = message


__all__ = [
    "ConnectionFailed",
    "RpcAuthError",
    "RpcCallError",
    "RpcError",
    "RpcWorkQueueExceeded",
]
