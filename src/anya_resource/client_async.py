"""``ResourceManager``, the async client (``SyncResourceManager``, its blocking twin in
``client_sync.py``, is generated from it by ``tools/async_to_sync.py``).

An uncontended acquire is one Ray call to the coordinator. Everything else
happens beside it: held leases renew themselves in one background task per
manager; one long-poll ``watch`` call per process hears of revocations at once
and, when it fails because the coordinator restarted, gives the new coordinator
the manager's account (``claim``: the leases it holds, with their tokens, and the
acquires it still waits on), so that leases it no longer holds go back at once;
releases on leaving ``async with`` are sent without waiting, and a background task
makes sure each one arrives.

Blocking callers in other threads (``SyncResourceManager``) use a manager made by
``new_in_thread``, which runs on an event loop of its own: its ``*_from_thread`` methods
are the ones any thread may call.

Every request carries an idempotency key, so a call interrupted by a
coordinator restart is retried with the same key and is never granted twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import json
import logging
import os
import threading
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, replace
from typing import Any, TypeVar

import psutil
import ray

from anya_resource.actors import boundary, deploy
from anya_resource.actors.wire import lease_from_wire
from anya_resource.config import Policy, Priority
from anya_resource.core import Holder, LeaseRecord
from anya_resource.core.history import decode as decode_history
from anya_resource.core.jobs import BUDGET_ENV
from anya_resource.core.model import CHANNEL_SEPARATOR
from anya_resource.core.requests import (
    MAX_TIMEOUT,
    check_count,
    check_fields,
    check_seconds,
    check_timeout,
    check_timing,
    check_ttl,
)
from anya_resource.core.share import (
    SPARE_IDLE_S,
    TooManyWaiting,
    Waiter,
    WarmCounts,
    WarmEntry,
    WarmShare,
)
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
    error_named,
)
from anya_resource.health import ResourceHealth
from anya_resource.inputs import check_name, shown
from anya_resource.lease import (
    AcquireContext,
    Lease,
    ResourceConnection,
    lease_fields,
    placement_group_of,
)
from anya_resource.messages import (
    EndedEvent,
    Event,
    RequestMessage,
    RevokedEvent,
    Snapshot,
    WatchReply,
    WhatIfAnswer,
)
from anya_resource.pools.entries import caller_stack
from anya_resource.pools.kinds import Flavour
from anya_resource.pools.registry import ProcessPools
from anya_resource.pools.stats import PoolStatistics

log = logging.getLogger(__name__)

T = TypeVar("T")
RESTART_PATIENCE_S = 60.0  # how long a call waits for a restarting coordinator
RENEW_CHECK_S = 0.5
# Past its timeout the coordinator rejects a waiter itself; this much later the client
# gives up on an answer that does not come (a coordinator that is down).
ANSWER_GRACE_S = 5.0
# Acquires one manager may have waiting at once (each costs ~1 KB here and at the
# coordinator): past it, Overloaded, which names the limit.
MAX_WAITING_PER_MANAGER = 100_000
# A use that finds every warm lease of its kind busy waits this long for one of them
# before asking the coordinator for one more (core/share.py, ResourceManager._grow).
GROW_GRACE_S = 0.005
# Requests per acquire_many call: its argument (~250 bytes a request) and its reply (a
# lease is ~450 bytes) stay under Ray's 100 KB for values sent inline with a call. Larger
# ones go through the object store, where a driver's argument on a multi-node cluster
# was lost as "OwnerDiedError" (seen with ray.cluster_utils); and each call holds the
# coordinator's event loop for ~6 ms at most.
SUBMIT_BATCH = 150


def warm_kind(spec: Mapping[str, Any]) -> str:
    """What makes two acquires the same kind, for a warm lease: the request as sent
    (resources, priority, tenant, ttl, preemptible, node), less who asks and how long."""
    fields = {k: v for k, v in spec.items() if k not in ("holder", "timeout")}
    return json.dumps(fields, sort_keys=True, default=str)


class _Waiting:
    """An acquire sent and not answered yet: its request, deadline and future."""

    __slots__ = ("deadline", "future", "refused", "spec")

    def __init__(self, spec: RequestMessage, deadline: float | None) -> None:
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


def _same_token(expected: str, presented: object) -> bool:
    return isinstance(presented, str) and hmac.compare_digest(expected, presented)


def _a_lease(what: str, lease: object) -> Lease:
    """``lease`` if it is one (of this process, or sent from another); else the
    ``InvalidRequest`` that says what ``what`` (``renew``, ...) expected."""
    if not isinstance(lease, Lease):
        raise InvalidRequest(f"{what}: got {shown(lease)}, expected a Lease returned by acquire()")
    return lease


def _a_flag(what: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidRequest(f"{what}: got {shown(value)}, expected True or False")
    return value


def budget_of(budget: str | bool) -> list[str] | None:
    """``[lease_id, key]`` to draw from, or None (see ``ResourceManager.new``)."""
    if budget is False:
        return None
    text = os.environ.get(BUDGET_ENV, "") if budget is True else budget
    if not text:
        return None
    if not isinstance(text, str) or text.count(":") != 1 or "" in text.split(":"):
        raise InvalidRequest(
            f"budget: got {text!r}{' from ' + BUDGET_ENV if budget is True else ''}, "
            "expected '<lease id>:<key>' as a queued job is given it"
        )
    lease_id, key = text.split(":")
    return [lease_id, key]


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

    def __init__(
        self,
        coordinator: Any,
        policy: Policy | None = None,
        *,
        budget: str | bool = True,
        outlives_job: bool = False,
    ) -> None:
        self._coordinator = coordinator
        self._policy = policy
        holder = current_holder()
        # A detached actor's leases are not its creator's job's: they must not end with it.
        self._holder = replace(holder, job_id=None) if outlives_job else holder
        self._holder_fields = asdict(self._holder)
        # Drawn from a job's budget (core/budgets.py): every acquire of this manager is.
        self._within = budget_of(budget)
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
        self._warm = WarmShare()  # warm leases, idle and busy (core/share.py)
        self._growing: dict[asyncio.Task[None], str] = {}  # acquires for waiters, by kind
        self._loop: asyncio.AbstractEventLoop | None = None  # where the manager runs
        self._warm_reported: tuple[frozenset[str], frozenset[str]] = (frozenset(), frozenset())
        self._warm_idle_s = policy.lease.warm_idle_s if policy is not None else 0.0
        self._submit_ahead = policy.lease.submit_ahead if policy is not None else 1
        # The deployed policy's lease.max_ttl (from ping): a ttl past it is refused here.
        self._max_ttl = policy.lease.max_ttl if policy is not None else MAX_TIMEOUT
        self._blocking = False  # made by new_in_thread, for callers of other threads

    @classmethod
    async def new(
        cls,
        policy: Policy | str | os.PathLike[str] | Mapping[str, Any] | None = None,
        address: str | None = None,
        *,
        budget: str | bool = True,
        outlives_job: bool = False,
    ) -> ResourceManager:
        """Connect (``address``, ``RAY_ADDRESS``, or an embedded local Ray) and find or deploy.

        ``budget``: draw every lease from a job's budget, given as ``"<lease id>:<key>"``;
        True (the default) takes it from ``ANYA_RESOURCE_BUDGET``, which a job started by
        the queue (``submit_job``) finds set; False draws from the cluster itself.
        ``outlives_job``: the leases are not ended when this process's Ray job ends (for a
        detached actor).
        """
        resolved = Policy.coerce(policy) if policy is not None else None
        if address is not None and (not isinstance(address, str) or not address.strip()):
            raise InvalidRequest(
                f"address: got {shown(address)}, expected HOST:PORT of a Ray cluster's head, "
                "'auto', or None"
            )
        _a_flag("outlives_job", outlives_job)
        if not isinstance(budget, str | bool):
            raise InvalidRequest(
                f"budget: got {shown(budget)}, expected '<lease id>:<key>', True or False"
            )
        await asyncio.to_thread(deploy.ensure_ray, address)
        handle = await asyncio.to_thread(deploy.coordinator, resolved)  # errors translated
        manager = cls(handle, resolved, budget=budget, outlives_job=outlives_job)
        manager._loop = asyncio.get_running_loop()
        info = await manager._call(lambda c: c.ping.remote())
        manager._epoch = info["epoch"]
        manager._warm_idle_s = float(info.get("warm_idle_s", 0.0))  # the deployed policy's
        manager._submit_ahead = int(info.get("submit_ahead", 1))
        manager._max_ttl = float(info.get("max_ttl", MAX_TIMEOUT))  # ttl is checked here too
        return manager

    @classmethod
    def new_in_thread(
        cls,
        policy: Policy | str | os.PathLike[str] | Mapping[str, Any] | None = None,
        address: str | None = None,
        *,
        budget: str | bool = True,
        outlives_job: bool = False,
    ) -> ResourceManager:
        """``new`` (same arguments), for blocking callers (what ``SyncResourceManager``
        wraps): the manager runs on an event loop of its own, in a daemon thread, and
        ``run_from_thread`` runs its calls there. Its connections are blocking ones
        (psycopg ``Connection``, httpx ``Client``) and its leases work with ``with``."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="anya-resource", daemon=True)
        thread.start()
        made = cls.new(policy, address, budget=budget, outlives_job=outlives_job)
        try:
            manager = asyncio.run_coroutine_threadsafe(made, loop).result()
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)  # no manager: its thread ends
            raise
        manager._blocking = True
        return manager

    @property
    def blocking(self) -> bool:
        """Made by ``new_in_thread``: for callers in other threads, which block."""
        return self._blocking

    def run_from_thread(self, work: Awaitable[T]) -> T:
        """Run ``work`` on this manager's event loop and wait for its result, from
        another thread (never from the loop's own: it would wait for itself)."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("this manager has no event loop: make it with new_in_thread()")

        async def there() -> T:
            return await work

        return asyncio.run_coroutine_threadsafe(there(), loop).result()

    # -- calls: through the one boundary (actors/boundary.py) ----------------------------

    async def _call(
        self,
        send: Callable[[Any], Awaitable[T]],
        patience: float = RESTART_PATIENCE_S,
        callee: str = boundary.COORDINATOR,
    ) -> T:
        """The call ``send(coordinator)`` makes, retried while the coordinator restarts
        (up to ``patience`` s); its answer, or one of ``errors``, never Ray's."""
        coordinator = self._coordinator
        return await boundary.call(lambda: send(coordinator), callee, patience)

    # -- acquiring -------------------------------------------------------------------------

    def acquire(
        self,
        resources: Mapping[str, Any] | None = None,
        *,
        priority: Priority | str | int = "normal",
        tenant: str | None = None,
        timeout: float | None = None,
        ttl: float | None = None,
        preemptible: bool = False,
        node: str | None = None,
        detached: bool = False,
        on_revoked: Callable[[Lease], None] | None = None,
        warm: bool = False,
        bundles: Sequence[Mapping[str, Any]] | None = None,
        strategy: str | None = None,
        reserve: bool | None = None,
    ) -> AcquireContext[Lease]:
        """Ask for ``resources`` (``{"memory": "2GiB", "gpu": 1, "pools": {"postgres": 1}}``).

        ``bundles=[{"cpu": 2, "gpu": 1}, ...]`` asks for a gang: every bundle at once or
        none, each on a node ``strategy`` allows (Ray's PACK, the default, SPREAD,
        STRICT_PACK or STRICT_SPREAD); ``resources`` may then name only ``pools``. The
        lease's ``bundles`` say where each went, in the order asked.

        ``reserve=True`` reserves the lease in Ray (a placement group:
        ``lease.placement_group``) before the grant is told; gangs always are, other
        leases at their first use unless the policy's ``lease.reserve_at`` is ``grant``.

        With ``warm=True`` the lease, once given back, stays with this manager (held,
        idle) for the next warm acquire of the same kind, which then takes no Ray call;
        it goes back to the coordinator after the policy's ``lease.warm_idle_s``, or at
        once when a request that it does not outrank waits for what it holds.
        """
        spec = self._spec(
            {} if resources is None else resources,
            priority,
            tenant,
            timeout,
            ttl,
            preemptible,
            node,
            detached,
            bundles=bundles,
            strategy=strategy,
            reserve=reserve,
        )
        kind = warm_kind(spec) if warm and not detached and bundles is None else None
        return AcquireContext(lambda: self._acquire(spec, timeout, Lease, on_revoked, kind))

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
        lease (``.connection`` is None), released when you give it back. A manager made by
        ``new_in_thread`` gives blocking connections (psycopg ``Connection``, httpx
        ``Client``), for ``with``.
        """
        # A blocking manager's caller is one frame further out (SyncResourceManager's).
        stack = caller_stack(3 if self._blocking else 2)
        flavour: Flavour = "sync" if self._blocking else "async"
        return AcquireContext(lambda: self._connection(pool, options, flavour, stack))

    async def _connection(
        self,
        pool: str | None,
        options: Mapping[str, Any],
        flavour: Flavour,
        stack: traceback.StackSummary,
    ) -> ResourceConnection:
        pooled = await self._pools.pool(pool, flavour)
        if pooled is not None:  # its slots stay warm with their connections already
            options = {k: v for k, v in options.items() if k != "warm"}
            return await self._pools.checkout(pooled, options, stack)
        return await self._slot_connection(pool, dict(options))

    async def _slot_connection(
        self, pool: str | None, options: dict[str, Any]
    ) -> ResourceConnection:
        """A bare slot lease (``slot`` pools): nothing to keep warm, so no process pool."""
        on_revoked = options.pop("on_revoked", None)
        keep_warm = options.pop("warm", False)  # given back, it stays with this manager
        timeout = options.get("timeout")
        spec = self._spec({"pools": {pool: 1}} if pool else {}, **options)
        spec["default_pool"] = pool is None
        warm = warm_kind(spec) if keep_warm and not spec["detached"] else None
        slot: ResourceConnection = await self._acquire(
            spec, timeout, ResourceConnection, on_revoked, warm
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
        *,
        bundles: Sequence[Mapping[str, Any]] | None = None,
        strategy: str | None = None,
        reserve: bool | None = None,
    ) -> RequestMessage:
        """The one message a request is sent as (``messages.RequestMessage``), checked."""
        # Everything that needs no policy is checked before anything is sent; the
        # coordinator checks it all again, with its policy's names (core/requests.py).
        check_fields(
            resources,
            priority=priority,
            tenant=tenant,
            timeout=timeout,
            ttl=ttl,
            preemptible=preemptible,
            node=node,
            detached=detached,
            max_ttl=self._max_ttl,
            bundles=bundles,
            strategy=strategy,
            reserve=reserve,
        )
        message: RequestMessage = {
            "resources": dict(resources),
            "priority": priority.value if isinstance(priority, Priority) else priority,
            "tenant": tenant,
            "timeout": timeout,
            "ttl": ttl,
            "preemptible": preemptible,
            "node": node,
            "detached": detached,
            "holder": self._holder_fields,
            "within": self._within,
        }
        if bundles is not None or strategy is not None or reserve is not None:
            # Only when asked: a plain request's message (and its warm kind) stays as it was.
            message["bundles"] = None if bundles is None else [dict(b) for b in bundles]
            message["strategy"] = strategy
            message["reserve"] = reserve
        return message

    def request_spec(
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
        reserve: bool | None = None,
    ) -> RequestMessage:
        """The request ``acquire`` would send (checked), for ``use_warm_from_thread``
        (``@leased`` makes it once per function and options). Any thread may call it."""
        return self._spec(
            resources, priority, tenant, timeout, ttl, preemptible, node, detached, reserve=reserve
        )

    async def _acquire(
        self,
        spec: RequestMessage,
        timeout: float | None,
        kind: type[Any],
        on_revoked: Callable[[Lease], None] | None,
        warm: str | None = None,
    ) -> Any:
        """Submit (batched with the others of this loop turn), then wait for the answer.

        The answer comes in the submitting call's reply if the request is decided at
        once, else as an event of this manager's channel: no call stays open per waiter.
        """
        if warm is not None and self._warm_idle_s > 0:
            return await self._acquire_warm(spec, timeout, kind, on_revoked, warm)
        record = await self._request(spec, timeout)
        lease = self._lease(record, kind, on_revoked)
        self.held[lease.lease_id] = lease
        return lease

    async def _request(self, spec: RequestMessage, timeout: float | None) -> LeaseRecord:
        """The coordinator's grant of ``spec`` (waiting its turn), or its refusal raised."""
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
        self._ensure_background()
        return lease_from_wire(wire)

    def _lease(
        self, record: LeaseRecord, kind: type[Any], on_revoked: Callable[[Lease], None] | None
    ) -> Any:
        """A caller's lease object on ``record``."""
        lease = kind(**lease_fields(record), _record=record, _manager=self, on_revoked=on_revoked)
        if isinstance(lease, ResourceConnection):
            lease.pool = next(iter(record.pools), "")
        return lease

    # -- warm leases (core/share.py): no Ray call while the process's share has one idle --------

    async def _acquire_warm(
        self,
        spec: RequestMessage,
        timeout: float | None,
        kind: type[Any],
        on_revoked: Callable[[Lease], None] | None,
        warm: str,
    ) -> Any:
        entry = await self._use_warm(spec, timeout, warm)
        lease = self._lease(entry.record, kind, on_revoked)
        entry.lease = lease  # its release ends this use (_end_warm)
        return lease

    async def _use_warm(self, spec: RequestMessage, timeout: float | None, warm: str) -> WarmEntry:
        """An idle lease of ``warm``'s kind now, else the first to come free or be granted.

        ``timeout=0`` (try once) asks the coordinator once, as a cold acquire does.
        """
        entry = self._warm.use(warm)
        if entry is not None:
            return entry
        loop = self._loop = asyncio.get_running_loop()
        if timeout is not None and timeout <= 0:
            record = await self._request(spec, timeout)
            self._warm.add(record, warm, time.monotonic())  # busy, for this caller
            added = self._warm.get(record.lease_id)
            if added is None:  # ended already (another task heard so): as if refused
                raise AcquireTimeout("the lease granted ended before it could be used")
            return added
        future: asyncio.Future[WarmEntry] = loop.create_future()

        def deliver(entry: WarmEntry | None, error: BaseException | None) -> None:
            loop.call_soon_threadsafe(self._settle_warm, future, entry, error)

        waiter = Waiter(warm, deliver)
        entry, ask = self._warm.use_or_wait(waiter)
        if entry is not None:
            return entry
        if ask:
            self._grow(spec, warm)
        try:
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise AcquireTimeout(
                f"no lease of this kind came free or was granted within {timeout} s"
            ) from None
        finally:
            self._warm.give_up(waiter)

    def use_warm_from_thread(
        self,
        spec: RequestMessage,
        warm: str,
        timeout: float | None,
        max_pending: int | None = None,
        depth: int = 1,
    ) -> WarmEntry:
        """``@leased``'s blocking acquire, from a thread other than the loop's: a lease of
        ``warm``'s kind with room at once (idle, or carrying fewer than ``depth`` uses:
        see ``submit_ahead``), in the calling thread; else wait here for one to have
        room or be granted (the loop sends the one acquire that asks for it).
        ``Overloaded`` at once if ``max_pending`` uses of this kind wait already."""
        check_timeout(timeout)
        share = self._warm
        entry, ask = share.take(warm, depth, time.monotonic())
        if entry is not None:
            if ask:  # queued behind another of its lease: more capacity would run it now
                self._loop_call(self._grow, spec, warm)
            return entry
        if timeout is not None and timeout <= 0:  # try once: the coordinator decides
            return self.run_from_thread(self._use_warm(spec, timeout, warm))
        box: list[tuple[WarmEntry | None, BaseException | None]] = []
        ready = threading.Event()

        def deliver(entry: WarmEntry | None, error: BaseException | None) -> None:
            box.append((entry, error))
            ready.set()

        waiter = Waiter(warm, deliver, depth)
        try:
            entry, ask = share.use_or_wait(waiter, max_pending, time.monotonic())
        except TooManyWaiting as exc:
            raise Overloaded(
                f"{exc.args[0]} calls of this process already wait for a lease of this kind, "
                f"the most max_pending={max_pending} allows; expected fewer calls in flight"
            ) from None
        if ask:
            self._loop_call(self._grow, spec, warm)
        if entry is not None:
            return entry
        ready.wait(timeout)
        share.give_up(waiter)
        if not box:
            raise AcquireTimeout(
                f"no lease of this kind came free or was granted within {timeout} s"
            )
        got, error = box[0]
        if got is None:
            raise error or ManagerUnavailable("no answer")
        return got

    def _settle_warm(
        self,
        future: asyncio.Future[WarmEntry],
        entry: WarmEntry | None,
        error: BaseException | None,
    ) -> None:
        if future.done():  # its caller stopped waiting: the lease is free again
            if entry is not None:
                self.end_use(entry.record.lease_id)
        elif entry is not None:
            future.set_result(entry)
        else:
            future.set_exception(error or ManagerUnavailable("no answer"))

    def _grow(self, spec: RequestMessage, warm: str) -> None:
        """One more lease of ``warm``'s kind for the share's waiters (batched as usual).

        While leases of the kind are busy, it goes out only after GROW_GRACE_S, and only
        if a use still waits then: a caller that saw its task's result (``ray.get``) may
        ask again a moment before the ref's callback frees its lease.
        """

        async def grow() -> None:
            if self._warm.busy_of(warm):
                await asyncio.sleep(GROW_GRACE_S)
                if not self._warm.still_asking(warm):
                    return
            try:
                record = await self._request({**spec, "timeout": None}, None)
            except ResourceError as exc:
                permanent = isinstance(exc, (Infeasible, InvalidRequest, Overloaded))
                self._warm.asked_failed(warm, exc, permanent)
                return
            if not self._warm.add(record, warm, time.monotonic(), asked=True):
                self._give_back(record)

        task = asyncio.get_running_loop().create_task(grow())
        self._growing[task] = warm
        task.add_done_callback(lambda done: self._growing.pop(done, None))

    def _cancel_needless_asks(self) -> None:
        """Acquires sent for waiters that their own leases served meanwhile: cancelled
        (by key, so a grant crossing the cancel goes back), not left in the queue."""
        needless = self._warm.needless_asks()
        for task, warm in list(self._growing.items()):
            if warm in needless:
                task.cancel()

    def submit_ahead(self) -> int:
        """The deployed policy's ``lease.submit_ahead``: how many ``@leased`` tasks a warm
        lease may carry at once where Ray runs them one at a time (core/share.py)."""
        return self._submit_ahead

    def end_use(self, lease_id: str) -> None:
        """A use of a warm lease ended (any thread): it stays warm, or goes back."""
        record = self._warm.done(lease_id, time.monotonic())
        if record is not None:
            self._loop_call(self._give_back, record)

    def _loop_call(self, fn: Callable[..., Any], *args: Any) -> None:
        """``fn(*args)`` on this manager's event loop, from whatever thread calls."""
        loop = self._loop
        if loop is None:
            return  # never used from a loop: nothing of it can be warm
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            fn(*args)
        else:
            loop.call_soon_threadsafe(fn, *args)

    def _give_back(self, record: LeaseRecord) -> None:
        """A lease goes back to the coordinator (batched with the other releases)."""
        self._outgoing.append([record.lease_id, record.token])
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_releases)

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
            waiting.fail(error_named(answer[1], answer[2]), refused=True)
        # "queued": its decision comes as an event of this manager's channel

    def _resubmit_waiting(self) -> None:
        """After a restart: every waiting request again, same key (never granted twice)."""
        for key, waiting in self._waiting.items():
            if not waiting.future.done():
                self._submit(key)

    @staticmethod
    def _remaining(spec: RequestMessage, deadline: float | None) -> RequestMessage:
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
        _a_lease("release", lease)
        mine = self.held.get(lease.lease_id)
        self._check_token(lease)
        if self._end_warm(lease):
            return
        if mine is not None or lease._manager is self:
            self._forget(lease)
            await lease.closed()
        await self._call(lambda c: c.release.remote(lease.lease_id, lease.token, self._channel))
        lease.released = True

    def _check_token(self, lease: Lease) -> None:
        """``NotLeaseHolder`` for a copy of a lease this manager holds with another token:
        refused here, before anything is sent or forgotten."""
        mine = self.held.get(lease.lease_id)
        warm = self._warm.get(lease.lease_id)
        token = mine.token if mine is not None else warm.record.token if warm else None
        if token is not None and not _same_token(token, lease.token):
            raise NotLeaseHolder(
                f"lease {lease.lease_id}: the token presented does not match; expected the "
                "secret token returned with the grant"
            )

    def holds(self, lease: Lease) -> bool:
        """Whether ``lease`` (this very object) is one this manager holds: not given back
        and not ended (one being revoked still is held: ``lease.valid`` tells)."""
        return self.held.get(lease.lease_id) is lease

    def release_soon(self, lease: Lease) -> None:
        """Give ``lease`` back without waiting for the round trip (still delivered).

        A warm lease stays with this manager instead (no Ray call at all).
        """
        if lease.released:
            return
        if self._end_warm(lease):
            return
        self._forget(lease)
        self._outgoing.append([lease.lease_id, lease.token])
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_releases)

    def release_soon_from_thread(self, lease: Lease) -> None:
        """``release_soon`` from a thread other than the loop's (e.g. a Ray future's
        callback): it is done on the manager's loop, not waited for."""
        self._loop_call(self.release_soon, lease)

    def _flush_releases(self) -> None:
        self._flush_scheduled = False
        if self._outgoing:
            pairs, self._outgoing = self._outgoing, []
            by = self._channel
            self._send_later(lambda c: c.release_many.remote(pairs, by))

    def _end_warm(self, lease: Lease) -> bool:
        """``lease`` is a warm lease in use by its caller: its use ends, it stays warm."""
        entry = self._warm.get(lease.lease_id)
        if entry is None or entry.lease is not lease:
            return False
        lease.released = True  # to its caller it is given back
        self.end_use(lease.lease_id)
        return True

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
        """Push the lease's expiry; raises ``LeaseRevoked``/``LeaseExpired`` if it is gone.

        ``ttl``: seconds in (0, the policy's ``lease.max_ttl``]; None keeps the lease's.
        """
        _a_lease("renew", lease)
        check_ttl(ttl, self._max_ttl)
        self._check_token(lease)
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

    async def adopt(self, lease: Lease) -> Lease:
        """Make this process the holder of ``lease``, handed over by its holder (the
        actor a ``@leased`` class started): it is reclaimed when this process dies.
        Keep it renewed here with ``renew``."""
        _a_lease("adopt", lease)
        lease.expires_at = await self._call(
            lambda c: c.rebind.remote(lease.lease_id, lease.token, self._holder_fields)
        )
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
            self._give_back_stale()
            self._cancel_needless_asks()
            self._report_warm()
            for entry in self._warm.entries():
                if entry.record.expires_at - now <= entry.record.ttl * 2 / 3:
                    await self._renew_warm(entry)

    def _report_warm(self) -> None:
        """Tell the coordinator which warm leases are idle and which busy, if that
        changed (for snapshot, leases, status and metrics; decides nothing)."""
        idle, busy = self._warm.uses()
        if (idle, busy) == self._warm_reported:
            return
        self._warm_reported = (idle, busy)
        channel = self._channel
        self._send_later(lambda c: c.warm_report.remote(channel, sorted(idle), sorted(busy)))

    def _give_back_stale(self) -> None:
        """Idle warm leases past the policy's idle time (or wanted by a waiter they
        outrank, past SPARE_IDLE_S) go back."""
        for record in self._warm.stale(time.monotonic(), self._warm_idle_s, SPARE_IDLE_S):
            self._give_back(record)

    async def _renew_warm(self, entry: WarmEntry) -> None:
        record = entry.record
        try:
            record.expires_at = await self._call(
                lambda c: c.renew.remote(record.lease_id, record.token, None)
            )
        except ResourceError as exc:  # revoked, expired or unreachable: not kept any longer
            if isinstance(exc, (LeaseRevoked, LeaseExpired)):
                self._warm_ended(record.lease_id, "expired", str(exc))
            return
        if entry.lease is not None:
            entry.lease.expires_at = record.expires_at

    def _warm_ended(self, lease_id: str, how: str, reason: str, ended: bool = True) -> None:
        """A warm lease ended (or is being revoked): never reused; its user is told."""
        if ended:
            entry = self._warm.drop(lease_id)
        else:
            entry, idle = self._warm.revoking(lease_id)
            if idle is not None:
                self._give_back(idle)
        if entry is not None and entry.lease is not None:
            self._mark_ended(entry.lease, how, reason, ended)

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
            first or self.held or self._waiting or self._warm or self._pending_releases
        ) and ray.is_initialized():
            first = False
            try:
                reply: WatchReply = await self._call(
                    lambda c: c.watch.remote(self._channel, self._watch_cursor), patience=0.0
                )
            except ManagerUnavailable:  # restarting, or gone: its successor counts anew
                if not ray.is_initialized():
                    return
                self._watch_cursor = 0  # a new coordinator counts events afresh
                await self._after_restart()
                continue
            except ResourceError as exc:
                log.warning("watch failed: %s", exc)
                await asyncio.sleep(1.0)
                continue
            self._watch_cursor = reply["cursor"]
            if self._epoch is not None and reply["epoch"] != self._epoch:
                await self._after_restart()
            for event in reply["events"]:
                self._on_event(event)

    def _on_event(self, event: Event) -> None:
        if event["kind"] == "pool_wanted":
            self._pools.wanted(event["pool"])  # another manager waits for that pool
        elif event["kind"] == "wanted":
            # Waiting requests want these back (core/warm.py): idle ones go now, busy ones
            # after their use; spare ones once idle a moment.
            spare = event["spare"]
            for record in self._warm.want(event["leases"], spare, time.monotonic()):
                self._give_back(record)
            if spare:
                asyncio.get_running_loop().call_later(SPARE_IDLE_S, self._give_back_stale)
        elif event["kind"] == "granted":
            waiting = self._waiting.get(event["key"])
            if waiting is not None:  # else given up: its cancel gives the grant back
                waiting.grant(event["lease"])
        elif event["kind"] == "rejected":
            waiting = self._waiting.get(event["key"])
            if waiting is not None:
                waiting.fail(error_named(event["error"], event["message"]), refused=True)
        else:
            self._lease_news(event)

    def _lease_news(self, event: EndedEvent | RevokedEvent) -> None:
        """A held lease ended, or must be let go by its deadline."""
        reason = event["reason"]
        if reason == "released":
            how, reason = "released", "released by another process"
        else:
            how = "expired" if reason == "expired" else "revoked"
        ended = event["kind"] == "ended"
        self._warm_ended(event["lease_id"], how, reason, ended)
        lease = self.held.get(event["lease_id"])
        if lease is not None:
            self._mark_ended(lease, how, reason, ended)

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
        warm = self._warm.entries()
        pairs = [[lease.lease_id, lease.token] for lease in held]
        pairs += [[entry.record.lease_id, entry.record.token] for entry in warm]
        waiting = sorted(self._waiting)
        prefix = self._channel + CHANNEL_SEPARATOR
        results: dict[str, float | None] = await self._call(
            lambda c: c.claim.remote(prefix, pairs, waiting)
        )
        for entry in warm:
            expires_at = results.get(entry.record.lease_id)
            if expires_at is None:  # ended, or being revoked: never used again
                reason = "it ended while the coordinator restarted"
                self._warm_ended(entry.record.lease_id, "expired", reason, ended=False)
            else:
                entry.record.expires_at = expires_at
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

    async def snapshot(self) -> Snapshot:
        """Per node, resource, pool and tenant: capacity, granted, free, waiting."""
        result: Snapshot = await self._call(lambda c: c.snapshot.remote())
        return result

    async def what_if(
        self, resources: Mapping[str, Any], count: int = 1, **options: Any
    ) -> WhatIfAnswer:
        """Would ``count`` such requests be granted now, where, preempting what? (dry run)

        ``count``: a whole number in [1, 100,000] (``core.requests.MAX_WHAT_IF``). An
        infeasible request says why in ``infeasible``; none of it is counted as waiting.
        """
        check_count(count)
        spec = self._spec(resources, **options)
        result: WhatIfAnswer = await self._call(lambda c: c.what_if.remote(spec, count))
        return result

    async def reserve(self, lease: Lease) -> Any:
        """Reserve ``lease`` in Ray now, if it is not yet (``lease.placement_group``).

        A lease drawn from a job's budget runs in its budget's placement group. Returns
        Ray's ``PlacementGroup``.
        """
        _a_lease("reserve", lease)
        self._check_token(lease)
        if lease.placement_group_id is None:
            group = await self._reserve_id(lease.lease_id, lease.token)
            lease.placement_group_id = group
            if lease._record is not None:
                lease._record.placement_group = group
        return placement_group_of(str(lease.placement_group_id))

    async def _reserve_id(self, lease_id: str, token: str) -> str:
        group: str = await self._call(lambda c: c.reserve.remote(lease_id, token))
        return group

    def placement_group_from_thread(self, record: LeaseRecord) -> str:
        """The placement group of the held lease ``record`` (a warm lease of ``@leased``),
        made now if it has none: from a thread other than the loop's, which it blocks."""
        group = record.placement_group
        if group is None:
            group = self.run_from_thread(self._reserve_id(record.lease_id, record.token))
            record.placement_group = group
        return group

    async def budget_placement_group(self) -> Any:
        """The Ray placement group of the job's budget this manager draws from (in a job
        the queue started): what the job's own plain Ray tasks and actors may run in."""
        if self._within is None:
            raise InvalidRequest(
                "this manager draws from no job's budget; expected a process of a job the "
                "queue started (ANYA_RESOURCE_BUDGET set), or ResourceManager.new(budget=...)"
            )
        lease_id, key = self._within
        group: str = await self._call(lambda c: c.budget_group.remote(lease_id, key))
        return placement_group_of(group)

    async def budget_scheduling_strategy(self, bundle: int | None = None) -> Any:
        """Ray's scheduling strategy that runs plain Ray work in the job's budget: in its
        bundle ``bundle``, or any (None). ``task.options(scheduling_strategy=...)``.
        Ray runs no more there than the budget holds; what the job draws with leases
        runs there too."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        if bundle is not None and (isinstance(bundle, bool) or not isinstance(bundle, int)):
            raise InvalidRequest(f"bundle: got {shown(bundle)}, expected a bundle's index or None")
        group = await self.budget_placement_group()
        return PlacementGroupSchedulingStrategy(
            placement_group=group,
            placement_group_bundle_index=-1 if bundle is None else bundle,
            placement_group_capture_child_tasks=True,
        )

    async def budget_key(self, lease: Lease) -> str:
        """What lets others draw from ``lease`` as their budget: ``"<lease id>:<key>"``.

        Give it to a process (as ``ANYA_RESOURCE_BUDGET``, or ``ResourceManager.new(
        budget=...)``) and everything it leases is drawn from ``lease``, never more. The
        key lets it draw, not release: it is not the lease's token.
        """
        _a_lease("budget_key", lease)
        self._check_token(lease)
        key: str = await self._call(lambda c: c.budget_key.remote(lease.lease_id, lease.token))
        return f"{lease.lease_id}:{key}"

    async def budgets(self) -> dict[str, dict[str, Any]]:
        """Every budget in use, by its lease id: amounts, what is drawn, who waits."""
        result: dict[str, dict[str, Any]] = await self._call(lambda c: c.budgets.remote())
        return result

    def warm_statistics(self) -> WarmCounts:
        """This manager's warm leases now: idle, busy, and uses waiting for one."""
        return self._warm.counts()

    def pool_statistics(self, pool: str) -> PoolStatistics | None:
        """This process's pool ``pool`` (of this manager's kind of connections, async or
        blocking), or None before its first use."""
        return self._pools.statistics(pool, "sync" if self._blocking else "async")

    # -- whole Ray jobs on leases (jobs.py, core/jobs.py) ---------------------------------

    async def submit_job(
        self,
        entrypoint: str | list[str],
        resources: Mapping[str, Any] | None = None,
        *,
        priority: Priority | str | int = "normal",
        tenant: str | None = None,
        runtime_env: Mapping[str, Any] | None = None,
        working_dir: str | None = None,
        preemptible: bool = False,
        requeue: bool = False,
        bundles: Sequence[Mapping[str, Any]] | None = None,
        strategy: str | None = None,
    ) -> str:
        """Queue a Ray job on a lease of ``resources`` (its budget); its id, at once.

        It waits in the coordinator's queue like any lease, is submitted to Ray's job
        server once granted, and gives its lease back when it ends. A budget that can
        never fit is refused now (``Infeasible``).

        ``bundles=[{"cpu": 2, "gpu": 1}, ...]`` (with ``strategy``, Ray's PACK by default)
        makes the budget a gang, granted whole across nodes: everything the job leases is
        drawn from it and placed in its bundles, never past any bundle's amounts;
        ``resources`` then names only its pools. The budget is reserved in Ray before the
        job starts; the job puts its own plain Ray work in it with
        ``manager.budget_scheduling_strategy()``.
        """
        from anya_resource import jobs
        from anya_resource.core.jobs import JobRecord, check_entrypoint

        command = check_entrypoint(entrypoint)
        if resources is not None and not isinstance(resources, Mapping):
            raise InvalidRequest(
                f"resources: got {shown(resources)}, expected the job's budget as a mapping "
                "such as {'cpu': 4, 'memory': '16GiB'}"
            )
        if runtime_env is not None and not isinstance(runtime_env, Mapping):
            raise InvalidRequest(
                f"runtime_env: got {shown(runtime_env)}, expected a mapping (Ray's runtime_env)"
            )
        if working_dir is not None and (not isinstance(working_dir, str) or not working_dir):
            raise InvalidRequest(
                f"working_dir: got {shown(working_dir)}, expected a directory path (a string)"
            )
        _a_flag("preemptible", preemptible)
        _a_flag("requeue", requeue)
        budget = dict(resources or {})
        env = dict(runtime_env or {})
        if working_dir is not None:
            env["working_dir"] = working_dir
        answer = await self.what_if(
            budget,
            1,
            priority=priority,
            tenant=tenant,
            preemptible=preemptible,
            bundles=bundles,
            strategy=strategy,
        )
        if answer.get("infeasible"):
            raise Infeasible(f"this job can never start: {answer['infeasible']}")
        dashboard = await asyncio.to_thread(jobs.dashboard_address)
        record = JobRecord(
            job_id=jobs.new_job_id(),
            entrypoint=command,
            resources=budget,
            submitted_at=time.time(),
            priority=priority.value if isinstance(priority, Priority) else priority,
            tenant=tenant,
            preemptible=preemptible,
            requeue=requeue,
            runtime_env=env or None,
            bundles=None if bundles is None else [dict(b) for b in bundles],
            strategy=strategy,
        )
        await asyncio.to_thread(jobs.save, record)
        await asyncio.to_thread(jobs.start_supervisor, record, dashboard, ResourceManager)
        return record.job_id

    async def jobs(self) -> list[dict[str, Any]]:
        """Every job of the queue, oldest first: state, budget, waits, why it ended."""
        from anya_resource import jobs
        from anya_resource.core.jobs import JobState, listing_row

        records = sorted(await asyncio.to_thread(jobs.load_all), key=lambda r: r.submitted_at)
        queued = [r.supervisor_id for r in records if r.state is JobState.QUEUED]
        actors = [actor_id for actor_id in queued if actor_id is not None]
        places: dict[str, Any] = {}
        if actors:
            places = await self._call(lambda c: c.queue_positions.remote(actors))
        budgets: dict[str, Any] = {}
        if any(not r.ended and r.lease_id for r in records):
            budgets = await self.budgets()
        now = time.time()
        return [
            listing_row(
                record,
                now,
                places.get(record.supervisor_id or ""),
                budgets.get(record.lease_id or ""),
            )
            for record in records
        ]

    async def cancel_job(self, job_id: str) -> str:
        """Take a queued job out, or stop a running one; its state when asked."""
        from anya_resource import jobs

        check_name("job_id", job_id)
        record = await asyncio.to_thread(jobs.load, job_id)
        if record is None:
            raise InvalidRequest(f"job {job_id!r}: no such job; expected an id from submit_job")
        if record.ended:
            return record.state.value
        handle = await asyncio.to_thread(jobs.supervisor, job_id)
        if handle is None:
            raise ManagerUnavailable(
                f"job {job_id}: its supervisor is gone (state {record.state.value})"
            )
        state: str = await self._call(
            lambda c: handle.cancel.remote(), callee=f"the supervisor of job {job_id}"
        )
        return state

    async def wait_job(self, job_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Wait until the job has ended; its record then."""
        from anya_resource import jobs

        check_name("job_id", job_id)
        check_timing(timeout, None)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            record = await asyncio.to_thread(jobs.load, job_id)
            if record is None:
                raise InvalidRequest(f"job {job_id!r}: no such job; expected an id from submit_job")
            if record.ended:
                return record.to_json()
            if deadline is not None and time.monotonic() >= deadline:
                raise AcquireTimeout(f"job {job_id} had not ended after {timeout} s")
            await asyncio.sleep(0.25)

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
        check_seconds("seconds", seconds)
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
        closed = ManagerUnavailable("the manager was closed while this waited")
        self._warm.fail_waiters(closed)
        for lease in list(self.held.values()):
            self.release_soon(lease)
        for record in self._warm.close():  # idle and busy: closing, nothing stays warm
            self._give_back(record)
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
