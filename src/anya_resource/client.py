"""``ResourceManager`` (async) and ``SyncResourceManager`` (its blocking twin).

An uncontended acquire is one Ray call to the coordinator. Everything else
happens beside it: held leases renew themselves in one background task per
manager; one long-poll ``watch`` call per process hears of revocations at once
and, when it fails because the coordinator restarted, gives the new coordinator
the manager's account (``claim``: the leases it holds, with their tokens, and the
acquires it still waits on), so that leases it no longer holds go back at once;
releases on leaving ``async with`` are sent without waiting, and a background task
makes sure each one arrives.

Every request carries an idempotency key, so a call interrupted by a
coordinator restart is retried with the same key and is never granted twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import logging
import os
import threading
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import asdict
from typing import Any, TypeVar

import psutil
import ray

from anya_resource.actors import deploy
from anya_resource.actors.translate import RETRYABLE, translate
from anya_resource.actors.wire import lease_from_wire
from anya_resource.config import Policy, Priority
from anya_resource.core import Holder
from anya_resource.core.history import decode as decode_history
from anya_resource.core.requests import check_timing
from anya_resource.errors import (
    AcquireTimeout,
    InvalidRequest,
    LeaseExpired,
    LeaseRevoked,
    ManagerUnavailable,
    NotLeaseHolder,
    ResourceError,
)
from anya_resource.health import ResourceHealth
from anya_resource.lease import AcquireContext, Lease, ResourceConnection, lease_fields
from anya_resource.pools.entries import caller_stack
from anya_resource.pools.kinds import Flavour
from anya_resource.pools.registry import ProcessPools
from anya_resource.pools.stats import PoolStatistics

log = logging.getLogger(__name__)

T = TypeVar("T")
RESTART_PATIENCE_S = 60.0  # how long a call waits for a restarting coordinator
RENEW_CHECK_S = 0.5
# A restarting coordinator answers within a second or two; polling it every quarter
# second at most finds it back soon after (each try fails at once while it restarts).
RETRY_MAX_S = 0.25


def _same_token(expected: str, presented: object) -> bool:
    return isinstance(presented, str) and hmac.compare_digest(expected, presented)


def current_holder() -> Holder:
    """This process, as the agent on its node can check that it is still alive."""
    context = ray.get_runtime_context()
    process = psutil.Process()
    actor_id = None
    with contextlib.suppress(Exception):
        actor_id = context.get_actor_id()
    worker_id = None
    with contextlib.suppress(Exception):
        worker_id = context.get_worker_id()
    return Holder(
        pid=process.pid,
        create_time=process.create_time(),
        node_id=context.get_node_id(),
        job_id=context.get_job_id(),
        worker_id=worker_id,
        actor_id=actor_id,
    )


class ResourceManager:
    """The async client. Create it with ``await ResourceManager.new()``."""

    def __init__(self, coordinator: Any, policy: Policy | None = None) -> None:
        self._coordinator = coordinator
        self._policy = policy
        self._holder = current_holder()
        self._holder_fields = asdict(self._holder)
        # Idempotency keys: unique per manager (a random prefix), then a counter.
        self._key_prefix = uuid.uuid4().hex + "-"
        self._key_count = itertools.count()
        # Releases not sent yet: they ride along with the next acquire, or go out
        # together one loop turn later (one Ray call for many).
        # Lists, not tuples: Ray sends a dict of lists and strings as msgpack, and pickles
        # anything holding a tuple.
        self._outgoing: list[list[str]] = []
        self._flush_scheduled = False
        self._watch_cursor = 0
        self.held: dict[str, Lease] = {}
        self._waiting_keys: set[str] = set()  # acquires sent and not answered yet
        self._pending_releases: set[asyncio.Task[None]] = set()
        self._background: list[asyncio.Task[None]] = []
        self._epoch: int | None = None
        self._pools = ProcessPools(self, policy)  # real connections, made on first use

    @classmethod
    async def new(
        cls,
        policy: Policy | str | os.PathLike[str] | Mapping[str, Any] | None = None,
        address: str | None = None,
    ) -> ResourceManager:
        """Connect (``address``, ``RAY_ADDRESS``, or an embedded local Ray) and find or deploy."""
        resolved = Policy.coerce(policy) if policy is not None else None
        await asyncio.to_thread(deploy.ensure_ray, address)
        try:
            handle = await asyncio.to_thread(deploy.coordinator, resolved)
        except ResourceError:
            raise
        except Exception as exc:  # Ray's own, untranslated: never the caller's to see
            raise translate(exc) from None
        manager = cls(handle, resolved)
        info = await manager._call(lambda c: c.ping.remote())
        manager._epoch = info["epoch"]
        return manager

    # -- calls, with restart handling and error translation ------------------------------

    async def _call(
        self, send: Callable[[Any], Awaitable[T]], patience: float = RESTART_PATIENCE_S
    ) -> T:
        deadline = time.monotonic() + patience
        delay = 0.05
        while True:
            try:
                return await send(self._coordinator)
            except RETRYABLE as exc:
                if time.monotonic() + delay > deadline:
                    raise ManagerUnavailable(
                        f"the coordinator did not come back within {patience:g} s: {exc}"
                    ) from None
            except Exception as exc:
                raise translate(exc) from None
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)

    # -- acquiring -------------------------------------------------------------------------

    def acquire(
        self,
        resources: Mapping[str, Any],
        *,
        priority: Priority | str | int = "normal",
        tenant: str | None = None,
        timeout: float | None = None,
        ttl: float | None = None,
        preemptible: bool = False,
        node: str | None = None,
        detached: bool = False,
        on_revoked: Callable[[Lease], None] | None = None,
    ) -> AcquireContext[Lease]:
        """Ask for ``resources`` (``{"memory": "2GiB", "gpu": 1, "pools": {"postgres": 1}}``)."""
        spec = self._spec(resources, priority, tenant, timeout, ttl, preemptible, node, detached)
        return AcquireContext(lambda: self._acquire(spec, timeout, Lease, on_revoked))

    def allocate_memory(self, nbytes: int | str, **options: Any) -> AcquireContext[Lease]:
        """A lease on ``nbytes`` of memory, on the caller's own node unless ``node=`` says."""
        options.setdefault("node", self._holder.node_id)
        return self.acquire({"memory": nbytes}, **options)

    def acquire_connection(
        self, pool: str | None = None, **options: Any
    ) -> AcquireContext[ResourceConnection]:
        """A slot of ``pool`` (the policy's ``default_pool`` when None).

        For ``postgres``, ``bitcoin-rpc`` and ``http`` pools it comes with a live
        connection (``.connection``) from this process's pool, which keeps it warm,
        on its slot, after you give it back (docs/pools.md). ``slot`` pools give a bare
        lease (``.connection`` is None), released when you give it back.
        """
        stack = caller_stack()
        return AcquireContext(lambda: self._connection(pool, options, "async", stack))

    async def _connection(
        self,
        pool: str | None,
        options: Mapping[str, Any],
        flavour: Flavour,
        stack: traceback.StackSummary,
    ) -> ResourceConnection:
        pooled = await self._pools.pool(pool, flavour)
        if pooled is not None:
            return await self._pools.checkout(pooled, options, stack)
        return await self._slot_connection(pool, dict(options))

    async def _slot_connection(
        self, pool: str | None, options: dict[str, Any]
    ) -> ResourceConnection:
        """A bare slot lease (``slot`` pools): nothing to keep warm, so no process pool."""
        on_revoked = options.pop("on_revoked", None)
        timeout = options.get("timeout")
        spec = self._spec({"pools": {pool: 1}} if pool else {}, **options)
        spec["default_pool"] = pool is None
        slot: ResourceConnection = await self._acquire(
            spec, timeout, ResourceConnection, on_revoked
        )
        return slot

    def _spec(
        self,
        resources: Mapping[str, Any],
        priority: Priority | str | int = "normal",
        tenant: str | None = None,
        timeout: float | None = None,
        ttl: float | None = None,
        preemptible: bool = False,
        node: str | None = None,
        detached: bool = False,
    ) -> dict[str, Any]:
        check_timing(timeout, ttl)
        return {
            "resources": resources,
            "priority": priority.value if isinstance(priority, Priority) else priority,
            "tenant": tenant,
            "timeout": timeout,
            "ttl": ttl,
            "preemptible": preemptible,
            "node": node,
            "detached": detached,
            "holder": self._holder_fields,
        }

    async def _acquire(
        self,
        spec: dict[str, Any],
        timeout: float | None,
        kind: type[Any],
        on_revoked: Callable[[Lease], None] | None,
    ) -> Any:
        key = f"{self._key_prefix}{next(self._key_count)}"
        releases, self._outgoing = self._outgoing, []
        spec = {**spec, "idempotency_key": key, "releases": releases}
        deadline = None if timeout is None else time.monotonic() + timeout
        self._waiting_keys.add(key)
        try:
            wire: bytes = await self._call(
                lambda c: c.acquire.remote(self._remaining(spec, deadline)),
                patience=RESTART_PATIENCE_S if timeout is None else timeout + RESTART_PATIENCE_S,
            )
        except BaseException as exc:
            self._waiting_keys.discard(key)
            if isinstance(exc, ManagerUnavailable):
                self._outgoing.extend(releases)  # they may never have arrived: send again
            if not isinstance(exc, ResourceError) or isinstance(
                exc, AcquireTimeout | ManagerUnavailable
            ):
                # Cancelled, timed out or cut off: a grant may be crossing this on the
                # wire. Cancelling by key gives it back, whatever state it is in.
                self._send_later(lambda c: c.cancel.remote(key))
            raise
        self._waiting_keys.discard(key)
        record = lease_from_wire(wire)
        lease = kind(**lease_fields(record), _record=record, _manager=self, on_revoked=on_revoked)
        if isinstance(lease, ResourceConnection):
            lease.pool = next(iter(record.pools), "")
        self.held[lease.lease_id] = lease
        self._ensure_background()
        return lease

    @staticmethod
    def _remaining(spec: dict[str, Any], deadline: float | None) -> dict[str, Any]:
        if deadline is None:
            return spec
        # A retry after a restart waits only for what is left of the timeout.
        return {**spec, "timeout": max(0.0, deadline - time.monotonic())}

    # -- giving back ---------------------------------------------------------------------

    async def release(self, lease: Lease) -> None:
        """Give ``lease`` back and wait until the coordinator has it (written). Idempotent.

        A pooled connection is closed first (forgetting it starts that), then its slot
        goes back: the service never sees more connections than the pool has slots.
        A token that is not the lease's raises ``NotLeaseHolder`` and changes nothing:
        the real lease stays held and renewed. A lease of another process (its token
        passed on) may be released from here: its holder hears of it at once.
        """
        if not isinstance(lease, Lease):
            raise InvalidRequest(f"release: got {lease!r}, expected a Lease returned by acquire()")
        mine = self.held.get(lease.lease_id)
        if mine is not None and not _same_token(mine.token, lease.token):
            raise NotLeaseHolder(
                f"lease {lease.lease_id}: the token presented does not match; expected the "
                "secret token returned with the grant"
            )
        if mine is not None or lease._manager is self:
            self._forget(lease)
            await lease.closed()
        await self._call(lambda c: c.release.remote(lease.lease_id, lease.token, self._holder.key))
        lease.released = True

    def release_soon(self, lease: Lease) -> None:
        """Give ``lease`` back without waiting for the round trip (still delivered)."""
        if lease.released:
            return
        self._forget(lease)
        self._outgoing.append([lease.lease_id, lease.token])
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_releases)

    def _flush_releases(self) -> None:
        self._flush_scheduled = False
        if self._outgoing:
            pairs, self._outgoing = self._outgoing, []
            by = self._holder.key
            self._send_later(lambda c: c.release_many.remote(pairs, by))

    def _forget(self, lease: Lease) -> None:
        lease.released = True
        held = self.held.pop(lease.lease_id, None)
        if held is not None and held is not lease:
            held.released = True  # the slot of a pooled connection, or a copy's original

    def _send_later(self, send: Callable[[Any], Awaitable[Any]]) -> None:
        async def deliver() -> None:
            try:
                await self._call(send)
            except ResourceError as exc:
                log.warning("background call failed: %s", exc)

        task = asyncio.get_running_loop().create_task(deliver())
        self._pending_releases.add(task)
        task.add_done_callback(self._pending_releases.discard)

    async def renew(self, lease: Lease, ttl: float | None = None) -> Lease:
        """Push the lease's expiry; raises ``LeaseRevoked``/``LeaseExpired`` if it is gone."""
        lease.check()
        try:
            lease.expires_at = await self._call(
                lambda c: c.renew.remote(lease.lease_id, lease.token, ttl)
            )
        except (LeaseRevoked, LeaseExpired) as exc:
            self._mark_ended(
                lease, "revoked" if isinstance(exc, LeaseRevoked) else "expired", str(exc)
            )
            raise
        return lease

    # -- background: renewal, revocations, restarts ---------------------------------------

    def _ensure_background(self) -> None:
        if self._background and not any(t.done() for t in self._background):
            return
        for task in self._background:
            task.cancel()
        loop = asyncio.get_running_loop()
        self._background = [
            loop.create_task(self._renew_loop()),
            loop.create_task(self._watch_loop()),
        ]

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(RENEW_CHECK_S)
            if not ray.is_initialized():
                return  # see _watch_loop
            now = time.time()
            for lease in list(self.held.values()):
                if lease.valid and lease.expires_at - now <= lease.ttl * 2 / 3:
                    with contextlib.suppress(ResourceError):
                        await self.renew(lease)

    async def _watch_loop(self) -> None:
        key = self._holder.key
        # The first poll always goes out, even if the lease that started this loop is
        # already given back: a loop that ended at once would be started again by the
        # next acquire, two new tasks per lease. It ends after a whole poll with nothing
        # held.
        # It also ends when Ray was shut down under it: a call on a handle would then
        # start a new Ray instance of its own (Ray's auto-init), not on loopback, behind
        # the caller's back.
        first = True
        while (first or self.held or self._pending_releases) and ray.is_initialized():
            first = False
            try:
                reply = await self._coordinator.watch.remote(key, self._watch_cursor)
            except RETRYABLE:
                if not ray.is_initialized():
                    return
                self._watch_cursor = 0  # a new coordinator counts events afresh
                await self._claim_all()
                continue
            except Exception as exc:
                log.warning("watch failed: %s", exc)
                await asyncio.sleep(1.0)
                continue
            self._watch_cursor = reply["cursor"]
            if self._epoch is not None and reply["epoch"] != self._epoch:
                await self._claim_all()
            for event in reply["events"]:
                if event.get("kind") == "pool_wanted":
                    self._pools.wanted(event["pool"])  # another process waits for that pool
                    continue
                lease = self.held.get(event["lease_id"])
                if lease is None:
                    continue
                reason = event.get("reason", "revoked")
                if reason == "released":
                    self._mark_ended(lease, "released", "released by another process")
                else:
                    ending = "expired" if reason == "expired" else "revoked"
                    self._mark_ended(lease, ending, reason, event["ended"])

    async def _claim_all(self) -> None:
        """The coordinator restarted: give it this manager's account (``claim``).

        Every held lease with its token (the proof), and the keys of the acquires still
        waiting (they will claim their own grants when they are retried): the new
        coordinator confirms what is held, and gives back at once what this manager
        restored no longer holds (a release or a cancel lost with the old one).
        """
        info = await self._call(lambda c: c.ping.remote())
        self._epoch = info["epoch"]
        held = [lease for lease in self.held.values() if lease.valid]
        pairs = [[lease.lease_id, lease.token] for lease in held]
        waiting = sorted(self._waiting_keys)
        prefix = self._key_prefix
        results: dict[str, float | None] = await self._call(
            lambda c: c.claim.remote(prefix, pairs, waiting)
        )
        for lease in held:
            expires_at = results.get(lease.lease_id)
            if expires_at is None:
                # Ended, or being revoked: given back now (a no-op for one that ended).
                self._mark_ended(lease, "expired", "it ended while the coordinator restarted")
                self.release_soon(lease)
            else:
                lease.expires_at = expires_at

    def _mark_ended(self, lease: Lease, how: str, reason: str, ended: bool = True) -> None:
        """``lease`` may no longer be used (``how``: revoked, expired or released)."""
        if how == "revoked":
            lease.revoked = True
        elif how == "released":
            lease.released = True
        else:
            lease.expired = True
        lease.reason = reason
        if ended:
            self.held.pop(lease.lease_id, None)
        if lease.on_revoked is not None:
            try:
                lease.on_revoked(lease)
            except Exception:
                log.exception("on_revoked callback of %s failed", lease.lease_id)

    # -- reading ---------------------------------------------------------------------------

    async def snapshot(self) -> dict[str, Any]:
        """Per node, resource, pool and tenant: capacity, granted, free, waiting."""
        result: dict[str, Any] = await self._call(lambda c: c.snapshot.remote())
        return result

    async def what_if(
        self, resources: Mapping[str, Any], count: int = 1, **options: Any
    ) -> dict[str, Any]:
        """Would ``count`` such requests be granted now, where, preempting what? (dry run)"""
        spec = self._spec(resources, **options)
        result: dict[str, Any] = await self._call(lambda c: c.what_if.remote(spec, count))
        return result

    async def check_resource_health(self) -> ResourceHealth:
        health: ResourceHealth = await self._call(lambda c: c.check_health.remote())
        return health

    async def leases(self) -> list[dict[str, Any]]:
        """Every active lease in the cluster (without tokens)."""
        result: list[dict[str, Any]] = await self._call(lambda c: c.lease_list.remote())
        return result

    async def history(self, seconds: float | None = None) -> list[dict[str, Any]]:
        """Compact snapshots of the last ``seconds`` (None: all kept), oldest first.

        One per heartbeat over the last hour by default; see ``core.history`` for the
        fields (core units, like ``snapshot()``).
        """
        blobs: list[bytes] = await self._call(lambda c: c.history.remote(seconds))
        return decode_history(blobs)

    async def close(self) -> None:
        """Release everything this manager holds and stop its background tasks."""
        # Connections first: each slot goes back only once its connection is closed.
        await self._pools.close()
        for lease in list(self.held.values()):
            self.release_soon(lease)
        self._flush_releases()
        if self._pending_releases:
            await asyncio.gather(*self._pending_releases, return_exceptions=True)
        for task in self._background:
            task.cancel()
        self._background = []

    async def __aenter__(self) -> ResourceManager:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class SyncResourceManager:
    """The blocking twin: the same methods, each running the async one on a private loop."""

    def __init__(self, manager: ResourceManager, loop: asyncio.AbstractEventLoop) -> None:
        self._async = manager
        self._loop = loop

    @classmethod
    def connect(
        cls,
        policy: Policy | str | os.PathLike[str] | Mapping[str, Any] | None = None,
        address: str | None = None,
    ) -> SyncResourceManager:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="anya-resource", daemon=True)
        thread.start()
        manager = asyncio.run_coroutine_threadsafe(
            ResourceManager.new(policy, address), loop
        ).result()
        return cls(manager, loop)

    def _run(self, coro: Coroutine[Any, Any, T] | Awaitable[T]) -> T:
        async def wrap() -> T:
            return await coro

        return asyncio.run_coroutine_threadsafe(wrap(), self._loop).result()

    def _bind(self, lease: T) -> T:
        if isinstance(lease, Lease):
            lease._run_sync = self._run
        return lease

    def acquire(self, resources: Mapping[str, Any], **options: Any) -> Lease:
        return self._bind(self._run(self._async.acquire(resources, **options)))

    def allocate_memory(self, nbytes: int | str, **options: Any) -> Lease:
        return self._bind(self._run(self._async.allocate_memory(nbytes, **options)))

    def acquire_connection(self, pool: str | None = None, **options: Any) -> ResourceConnection:
        """As ``ResourceManager.acquire_connection``, with blocking connections
        (psycopg ``Connection``, httpx ``Client``); use it with ``with``."""
        stack = caller_stack()
        return self._bind(self._run(self._async._connection(pool, options, "sync", stack)))

    def _pool_statistics(self, pool: str) -> PoolStatistics | None:
        async def read() -> PoolStatistics | None:
            return self._async._pools.statistics(pool, "sync")

        return self._run(read())

    def release(self, lease: Lease) -> None:
        self._run(self._async.release(lease))

    def release_quietly(self, lease: Lease) -> None:
        """Release without waiting, from any thread (e.g. a Ray future's callback)."""
        self._loop.call_soon_threadsafe(self._async.release_soon, lease)

    def renew(self, lease: Lease, ttl: float | None = None) -> Lease:
        return self._run(self._async.renew(lease, ttl))

    def snapshot(self) -> dict[str, Any]:
        return self._run(self._async.snapshot())

    def what_if(
        self, resources: Mapping[str, Any], count: int = 1, **options: Any
    ) -> dict[str, Any]:
        return self._run(self._async.what_if(resources, count, **options))

    def check_resource_health(self) -> ResourceHealth:
        return self._run(self._async.check_resource_health())

    def leases(self) -> list[dict[str, Any]]:
        return self._run(self._async.leases())

    def history(self, seconds: float | None = None) -> list[dict[str, Any]]:
        return self._run(self._async.history(seconds))

    def close(self) -> None:
        self._run(self._async.close())

    def __enter__(self) -> SyncResourceManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
