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
from anya_resource.core.model import CHANNEL_SEPARATOR
from anya_resource.core.requests import check_timing
from anya_resource.errors import (
    AcquireTimeout,
    Infeasible,
    InvalidRequest,
    LeaseExpired,
    LeaseRevoked,
    ManagerUnavailable,
    NotLeaseHolder,
    Overloaded,
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
# Past its timeout the coordinator rejects a waiter itself; this much later the client
# gives up on an answer that does not come (a coordinator that is down).
ANSWER_GRACE_S = 5.0
# Acquires one manager may have waiting at once (each costs ~1 KB here and at the
# coordinator): past it, Overloaded, which names the limit.
MAX_WAITING_PER_MANAGER = 100_000
# Requests per acquire_many call: its argument (~250 bytes a request) and its reply (a
# lease is ~450 bytes) stay under Ray's 100 KB for values sent inline with a call. Larger
# ones go through the object store, where a driver's argument on a multi-node cluster
# was lost as "OwnerDiedError" (seen with ray.cluster_utils); and each call holds the
# coordinator's event loop for ~6 ms at most.
SUBMIT_BATCH = 150


class _Waiting:
    """An acquire sent and not answered yet: its request, deadline and future."""

    __slots__ = ("deadline", "future", "refused", "spec")

    def __init__(self, spec: dict[str, Any], deadline: float | None) -> None:
        self.spec = spec
        self.deadline = deadline
        self.future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.refused = False  # the coordinator refused it: nothing to cancel

    def grant(self, wire: bytes) -> None:
        if not self.future.done():
            self.future.set_result(wire)

    def fail(self, error: BaseException, refused: bool) -> None:
        if not self.future.done():
            self.refused = refused
            self.future.set_exception(error)


_ERRORS: dict[str, type[ResourceError]] = {
    cls.__name__: cls
    for cls in (
        AcquireTimeout,
        Infeasible,
        InvalidRequest,
        LeaseExpired,
        LeaseRevoked,
        ManagerUnavailable,
        NotLeaseHolder,
        Overloaded,
    )
}


def error_from(name: str, message: str) -> ResourceError:
    """The error the coordinator named, rebuilt here (never a raw one)."""
    return _ERRORS.get(name, ResourceError)(message)


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
        # This manager's channel: its idempotency keys are "<channel>/<n>", and the
        # coordinator sends it, through one long poll, the decisions of its requests that
        # had to wait and the ends of its leases.
        self._channel = uuid.uuid4().hex
        self._key_count = itertools.count()
        self._waiting: dict[str, _Waiting] = {}  # key -> an acquire not answered yet
        self._to_submit: list[str] = []
        self._submit_scheduled = False
        # Releases not sent yet: they ride along with the next acquire, or go out
        # together one loop turn later (one Ray call for many).
        # Lists, not tuples: Ray sends a dict of lists and strings as msgpack, and pickles
        # anything holding a tuple.
        self._outgoing: list[list[str]] = []
        self._flush_scheduled = False
        self._watch_cursor = 0
        self.held: dict[str, Lease] = {}
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
        """Submit (batched with the others of this loop turn), then wait for the answer.

        The answer comes in the submitting call's reply if the request is decided at
        once, else as an event of this manager's channel: no call stays open per waiter.
        """
        if len(self._waiting) >= MAX_WAITING_PER_MANAGER:
            raise Overloaded(
                f"this manager has {len(self._waiting):,} acquires waiting already, the most "
                f"one manager takes ({MAX_WAITING_PER_MANAGER:,}); wait for some, or use "
                "timeout=0 to try without waiting"
            )
        key = f"{self._channel}/{next(self._key_count)}"
        deadline = None if timeout is None else time.monotonic() + timeout
        waiting = _Waiting({**spec, "idempotency_key": key}, deadline)
        self._waiting[key] = waiting
        self._submit(key)
        self._ensure_background()
        try:
            if deadline is None:
                wire = await waiting.future
            else:
                # The coordinator rejects it at its deadline; this is the backstop for a
                # coordinator that cannot answer (restarting, unreachable).
                left = deadline - time.monotonic() + ANSWER_GRACE_S
                wire = await asyncio.wait_for(waiting.future, timeout=left)
        except BaseException as exc:
            self._waiting.pop(key, None)
            if not waiting.refused:
                # Cancelled, timed out here or cut off: a grant may be crossing this on the
                # wire, or have just come (the caller stopped waiting before it woke up).
                # Cancelling by key gives it back, whatever state it is in.
                self._send_later(lambda c: c.cancel.remote(key))
            if isinstance(exc, asyncio.TimeoutError) and not isinstance(exc, AcquireTimeout):
                raise AcquireTimeout(
                    f"{key}: no answer from the coordinator within {timeout} s"
                ) from None
            raise
        self._waiting.pop(key, None)
        record = lease_from_wire(wire)
        lease = kind(**lease_fields(record), _record=record, _manager=self, on_revoked=on_revoked)
        if isinstance(lease, ResourceConnection):
            lease.pool = next(iter(record.pools), "")
        self.held[lease.lease_id] = lease
        self._ensure_background()
        return lease

    def _submit(self, key: str) -> None:
        """Send ``key``'s request with the others of this loop turn, in one call."""
        self._to_submit.append(key)
        if not self._submit_scheduled:
            self._submit_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_submits)

    def _flush_submits(self) -> None:
        self._submit_scheduled = False
        keys, self._to_submit = self._to_submit, []
        batch = [
            (key, waiting)
            for key in dict.fromkeys(keys)
            if (waiting := self._waiting.get(key)) is not None and not waiting.future.done()
        ]
        loop = asyncio.get_running_loop()
        # In calls of SUBMIT_BATCH at most (see there).
        for start in range(0, len(batch), SUBMIT_BATCH):
            chunk = batch[start : start + SUBMIT_BATCH]
            self._track(loop.create_task(self._send_submits(chunk)))

    async def _send_submits(self, batch: list[tuple[str, _Waiting]]) -> None:
        releases, self._outgoing = self._outgoing, []
        channel = self._channel

        def send(coordinator: Any) -> Any:
            # Recomputed at every try: a retry after a restart waits only what is left.
            specs = [self._remaining(w.spec, w.deadline) for _, w in batch]
            return coordinator.acquire_many.remote(specs, releases, channel)

        try:
            answers: list[list[Any]] = await self._call(send)
        except ResourceError as exc:
            self._outgoing.extend(releases)  # they may never have arrived: send again
            for _, waiting in batch:
                waiting.fail(exc, refused=False)
            return
        for (_, waiting), answer in zip(batch, answers, strict=True):
            self._answer(waiting, answer)

    @staticmethod
    def _answer(waiting: _Waiting, answer: list[Any]) -> None:
        if answer[0] == "granted":
            waiting.grant(answer[1])
        elif answer[0] == "error":
            waiting.fail(error_from(answer[1], answer[2]), refused=True)
        # "queued": its decision comes as an event of this manager's channel

    def _resubmit_waiting(self) -> None:
        """After a restart: every waiting request again, same key (never granted twice)."""
        for key, waiting in self._waiting.items():
            if not waiting.future.done():
                self._submit(key)

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
        await self._call(lambda c: c.release.remote(lease.lease_id, lease.token, self._channel))
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
            by = self._channel
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

        self._track(asyncio.get_running_loop().create_task(deliver()))

    def _track(self, task: asyncio.Task[None]) -> None:
        """A call in flight in the background: ``close`` waits for it."""
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
        # The first poll always goes out, even if the lease that started this loop is
        # already given back: a loop that ended at once would be started again by the
        # next acquire, two new tasks per lease. It ends after a whole poll with nothing
        # held, waiting or in flight.
        # It also ends when Ray was shut down under it: a call on a handle would then
        # start a new Ray instance of its own (Ray's auto-init), not on loopback, behind
        # the caller's back.
        first = True
        while (
            first or self.held or self._waiting or self._pending_releases
        ) and ray.is_initialized():
            first = False
            try:
                reply = await self._coordinator.watch.remote(self._channel, self._watch_cursor)
            except RETRYABLE:
                if not ray.is_initialized():
                    return
                self._watch_cursor = 0  # a new coordinator counts events afresh
                await self._after_restart()
                continue
            except Exception as exc:
                log.warning("watch failed: %s", exc)
                await asyncio.sleep(1.0)
                continue
            self._watch_cursor = reply["cursor"]
            if self._epoch is not None and reply["epoch"] != self._epoch:
                await self._after_restart()
            for event in reply["events"]:
                self._on_event(event)

    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("kind")
        if kind == "pool_wanted":
            self._pools.wanted(event["pool"])  # another manager waits for that pool
            return
        if kind in ("granted", "rejected"):
            waiting = self._waiting.get(event["key"])
            if waiting is None:
                return  # given up: its cancel gives a grant back
            if kind == "granted":
                waiting.grant(event["lease"])
            else:
                waiting.fail(error_from(event["error"], event["message"]), refused=True)
            return
        lease = self.held.get(event["lease_id"])
        if lease is None:
            return
        reason = event.get("reason", "revoked")
        if reason == "released":
            self._mark_ended(lease, "released", "released by another process")
        else:
            ending = "expired" if reason == "expired" else "revoked"
            self._mark_ended(lease, ending, reason, event["ended"])

    async def _after_restart(self) -> None:
        """A new coordinator: the census first, then every waiting request again."""
        await self._claim_all()
        self._resubmit_waiting()

    async def _claim_all(self) -> None:
        """The coordinator restarted: give it this manager's account (``claim``).

        Every held lease with its token (the proof), and the keys of the acquires still
        waiting (they will claim their own grants when they are sent again): the new
        coordinator confirms what is held, and gives back at once what this manager
        restored no longer holds (a release or a cancel lost with the old one).
        """
        info = await self._call(lambda c: c.ping.remote())
        self._epoch = info["epoch"]
        held = [lease for lease in self.held.values() if lease.valid]
        pairs = [[lease.lease_id, lease.token] for lease in held]
        waiting = sorted(self._waiting)
        prefix = self._channel + CHANNEL_SEPARATOR
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
        """``lease`` may no longer be used (``how``: revoked, expired or released).

        ``on_revoked`` is called once per lease: a revocation and the reclaim at the end
        of its grace period are one ending to its holder.
        """
        first = lease.valid
        if first:
            if how == "revoked":
                lease.revoked = True
            elif how == "released":
                lease.released = True
            else:
                lease.expired = True
            lease.reason = reason
        if ended:
            self.held.pop(lease.lease_id, None)
        if first and lease.on_revoked is not None:
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
        for waiting in list(self._waiting.values()):
            waiting.fail(ManagerUnavailable("the manager was closed while this waited"), False)
        for _ in range(2):  # their acquires wake up and send their cancels, awaited below
            await asyncio.sleep(0)
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
