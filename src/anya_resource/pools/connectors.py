"""What a pool needs from a kind of connection: open, check, reset, close.

A pool runs on an event loop, so it speaks to connections through the async
``Connector``. The blocking twin (``SyncResourceManager`` hands out psycopg's sync
``Connection``, httpx's ``Client``) is a ``BlockingConnector`` run on a small thread
pool of its own by ``ThreadedConnector``: one pool implementation serves both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Connector(Protocol):
    """One kind of connection, as a pool drives it."""

    # How long the service may still count a connection the client has closed: its slot
    # is given back only after this, so that the service never sees more than the size.
    settle_s: float

    async def open(self) -> Any:
        """A new connection; bounded by the pool's ``connect_timeout_s``."""

    def usable(self, connection: Any) -> bool:
        """A local check, no I/O: False when the connection is known to be closed or broken."""

    async def validate(self, connection: Any) -> None:
        """A round trip that raises when the connection no longer works."""

    async def reset(self, connection: Any) -> bool:
        """Make a returned connection ready for the next caller; False: close it instead."""

    async def close(self, connection: Any) -> None:
        """Close, never raising: a connection being closed may already be broken."""

    async def shutdown(self) -> None:
        """The pool is closing: free what the connector itself holds."""


class BlockingConnector(Protocol):
    """The same, for connections used from plain threads."""

    settle_s: float

    def open(self) -> Any: ...

    def usable(self, connection: Any) -> bool: ...

    def validate(self, connection: Any) -> None: ...

    def reset(self, connection: Any) -> bool: ...

    def close(self, connection: Any) -> None: ...


class ThreadedConnector:
    """A ``BlockingConnector`` made async by running its calls on a private thread pool.

    Private, so that slow connects cannot starve ``asyncio.to_thread`` users of the
    default executor (which has only a handful of threads on a small machine).
    """

    def __init__(self, blocking: BlockingConnector, name: str, workers: int) -> None:
        self._blocking = blocking
        self.settle_s = blocking.settle_s
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"pool-{name}")

    async def _run(self, call: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, call, *args)

    async def open(self) -> Any:
        # No asyncio timeout around a blocking connect: giving up on it would leave a
        # thread that may still open a connection, one the pool holds no slot for. The
        # driver's own connect timeout bounds it.
        return await self._run(self._blocking.open)

    def usable(self, connection: Any) -> bool:
        return self._blocking.usable(connection)

    async def validate(self, connection: Any) -> None:
        await self._run(self._blocking.validate, connection)

    async def reset(self, connection: Any) -> bool:
        return await self._run(self._blocking.reset, connection)

    async def close(self, connection: Any) -> None:
        await self._run(self._blocking.close, connection)

    async def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=False)
