"""``@leased``: Ray tasks and actors that run where, and when, a lease was granted.

**Tasks** run on *warm leases* (core/share.py): the submitting process holds the leases,
and each task uses one from ``.remote()`` until its ObjectRef settles. ``f.remote(...)``
takes a lease of its kind with room from the process's share (no Ray call), or waits
for one of its own to have room or for the coordinator to grant one more (one acquire
per waiting call, batched with the others of the moment), then submits the Ray task
into the lease's placement group (reserved at the lease's first task and reused by the
others; a draw from a job's budget runs in its own bundle of the budget's group; a
lease of pool slots only, which are cluster-wide, leaves the placement to Ray, one task
at a time) and returns its ObjectRef.

*Room*: the task asks its bundle for all its lease holds there, so Ray runs one task of
a lease at a time, and a busy lease takes up to the policy's ``lease.submit_ahead``
tasks, the others queued in Ray, which starts the next in C++ the moment one ends (an
idle lease first; ``core/share.queue_depth`` says where Ray would not keep them apart,
and then the depth is 1). When a ref settles (returned, raised, cancelled, worker died)
its lease has room for the next task of this process, or goes back to the coordinator
once its queue has run out if a request it does not outrank waits for it; idle, it
goes back after the policy's ``lease.warm_idle_s``. So a task costs no coordinator
call, no thread and no call from its worker; ``.remote()`` blocks only as
back-pressure, while every lease of the process's share carries its depth
(``timeout=`` bounds that wait: ``AcquireTimeout``; ``max_pending=N`` bounds how many
calls of the process may wait at once: past it, ``Overloaded`` at once).

Who holds what: the lease is held by the submitting process from its grant until it
goes back, busy while a task of it runs, idle between tasks. If the task's worker
dies, its ref settles with Ray's error and the lease is free at once. If the
submitting process dies, its node's agent reports it and the coordinator reclaims its
leases (and Ray ends the tasks it owned). Nothing leaks either way.

**Actors** keep a lease for their lifetime: the actor's process holds and renews it.

A task asks its group for the lease's CPUs, GPUs and memory (``num_cpus=`` and
``num_gpus=`` override them), so that Ray reuses its workers and sets
``CUDA_VISIBLE_DEVICES``; an actor is reserved at
grant and runs in its lease's group asking it for no CPU (``num_cpus=0``): the lease is
the admission control.
"""

from __future__ import annotations

import contextvars
import dataclasses
import logging
import pickle
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import ray
from ray.util.scheduling_strategies import (
    NodeAffinitySchedulingStrategy,
    PlacementGroupSchedulingStrategy,
)

from anya_resource.actors import deploy
from anya_resource.actors.reservations import needs_group, reservable
from anya_resource.client_async import warm_kind
from anya_resource.client_sync import SyncResourceManager
from anya_resource.core.requests import check_timeout
from anya_resource.core.share import WarmCounts, WarmEntry, queue_depth
from anya_resource.errors import InvalidRequest, LeaseExpired, LeaseRevoked, ResourceError
from anya_resource.inputs import shown
from anya_resource.lease import Lease, lease_fields, placement_group_of
from anya_resource.messages import RequestMessage
from anya_resource.quantities import from_units, to_units

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
S = TypeVar("S", bound="_Leased")
LEASE_OPTIONS = ("priority", "tenant", "timeout", "ttl", "preemptible", "node", "detached")
TASK_OPTIONS = ("max_pending",)  # how a task's .remote() waits: not part of the request
RESOURCE_OPTIONS = ("memory", "cpu", "gpu", "disk", "pools")
PLACED_KEPT = 256  # tasks with Ray options kept per function (one per lease in use)
LEASES_KEPT = 64  # leases a worker keeps decoded (a task of the same lease skips unpickling)

_task_lease: contextvars.ContextVar[Lease | None] = contextvars.ContextVar("lease", default=None)
_actor_lease: Lease | None = None
_sync_lock = threading.Lock()
# This process's manager for @leased, with the Ray cluster it belongs to (one tuple, so
# that a read without the lock sees the two together).
_sync: tuple[str, SyncResourceManager] | None = None
_decoded: dict[bytes, Lease] = {}  # in a worker: the leases its tasks ran under, as received


def current_lease() -> Lease:
    """The lease of the ``@leased`` task or actor this code runs in."""
    lease = _task_lease.get() or _actor_lease
    if lease is None:
        raise RuntimeError("current_lease() is only available inside a @leased task or actor")
    return lease


def leased_statistics() -> WarmCounts:
    """This process's warm leases for ``@leased`` tasks: idle, busy, and ``.remote()``
    calls waiting for one."""
    return _manager().warm_statistics()


def _set_actor_lease(lease: Lease) -> None:
    global _actor_lease
    _actor_lease = lease


def _manager() -> SyncResourceManager:
    """This process's manager for ``@leased``, of the Ray cluster it is connected to now
    (a process that shut Ray down and connected again gets one of the new cluster)."""
    global _sync
    cluster = deploy.current_cluster() if ray.is_initialized() else None
    known = _sync
    if known is not None and (cluster is None or cluster == known[0]):
        return known[1]  # the common case, with no lock
    with _sync_lock:
        if _sync is not None and cluster is not None and cluster != _sync[0]:
            _sync = None  # of a cluster this process has left: its actors are gone
        if _sync is None:
            manager = SyncResourceManager.connect()
            _sync = (deploy.current_cluster(), manager)
        return _sync[1]


def _split(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(resources, lease options, Ray options) from one ``options(...)`` call."""
    resources = {k: options[k] for k in RESOURCE_OPTIONS if options.get(k) is not None}
    lease_options = {k: options[k] for k in LEASE_OPTIONS if k in options}
    ray_options = {
        k: v
        for k, v in options.items()
        if k not in RESOURCE_OPTIONS and k not in LEASE_OPTIONS and k not in TASK_OPTIONS
    }
    return resources, lease_options, ray_options


def _task_asks(resources: dict[str, Any], ray_options: dict[str, Any]) -> dict[str, int]:
    """What each task asks its lease's bundle for (core units): the lease's CPUs, GPUs
    (``num_cpus=``/``num_gpus=`` override them) and memory."""
    asks = {
        "cpu": ray_options.get("num_cpus", resources.get("cpu", 0)),
        "gpu": ray_options.get("num_gpus", resources.get("gpu", 0)),
        "memory": resources.get("memory", 0),
    }
    return {r: to_units(r, a) for r, a in asks.items() if a}


def _pinned(lease: Lease, ray_options: dict[str, Any]) -> dict[str, Any]:
    """An actor's options: in its lease's placement group when Ray reserves it (its GPUs
    asked of the group), else on the lease's node."""
    strategy: Any = (
        lease.scheduling_strategy(0)
        if lease.reserved
        else NodeAffinitySchedulingStrategy(node_id=lease.node_id, soft=False)
    )
    return {
        "num_cpus": 0,
        "num_gpus": lease.resources.get("gpu", 0),
        **ray_options,
        "scheduling_strategy": strategy,
    }


class _Renewer:
    """Keeps a lease renewed from the process that now holds it, by its manager's own
    ``renew`` (retried while the coordinator restarts, Ray's errors translated), from a
    thread: the actor's methods may all be sync and busy."""

    def __init__(self, manager: SyncResourceManager, lease: Lease) -> None:
        self.manager = manager
        self.lease = lease
        self.stop = threading.Event()
        self.every = max(0.2, lease.ttl / 3)
        self.thread = threading.Thread(target=self._run, name="anya-lease-renew", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(self.every):
            try:
                self.manager.renew(self.lease)
            except (LeaseRevoked, LeaseExpired) as exc:  # it cannot be renewed any more
                log.warning("the lease %s of this actor ended: %s", self.lease.lease_id, exc)
                return
            except ResourceError as exc:  # the coordinator stayed away past the retries
                log.warning("renewing %s failed: %s", self.lease.lease_id, exc)

    def close(self) -> None:
        self.stop.set()


def _adopt_here(lease: Lease) -> _Renewer:
    """Make this worker process the holder of ``lease`` and keep it renewed, both through
    this process's manager."""
    manager = _manager()
    manager.adopt(lease)
    return _Renewer(manager, lease)


def _run_task(fn: Callable[..., Any], shipped: bytes, *args: Any, **kwargs: Any) -> Any:
    """A ``@leased`` task's body: ``fn`` with ``current_lease()`` set. Nothing else: the
    submitting process holds the lease, and its use ends when the ref settles."""
    lease = _decoded.get(shipped)
    if lease is None:  # the first task of this lease in this worker
        if len(_decoded) >= LEASES_KEPT:
            _decoded.clear()
        lease = _decoded[shipped] = pickle.loads(shipped)
    token = _task_lease.set(lease)
    try:
        return fn(*args, **kwargs)
    finally:
        _task_lease.reset(token)


def _remote_task(fn: Callable[..., Any]) -> Any:
    """The Ray task of ``fn``: exported once, with ``fn`` in it (not sent per call)."""

    def run(__anya_lease: bytes, *args: Any, **kwargs: Any) -> Any:
        # This function travels to the worker by value; current_lease() reads the
        # worker's real module.
        from anya_resource.integrations import ray_tasks

        return ray_tasks._run_task(fn, __anya_lease, *args, **kwargs)

    run.__name__ = getattr(fn, "__name__", "leased")
    run.__qualname__ = getattr(fn, "__qualname__", run.__name__)
    return ray.remote(run)


class _Leased:
    """What ``@leased`` functions and classes share: their options, split."""

    def __init__(self, target: Any, options: dict[str, Any]) -> None:
        self._target = target
        self._options = options
        self._resources, self._lease_options, self._ray_options = _split(options)
        self._variants: dict[str, Any] = {}

    def options(self: S, **options: Any) -> S:
        """The same, with these options changed (made once per set of options)."""
        merged = {**self._options, **options}
        key = repr(sorted(merged.items(), key=lambda item: item[0]))
        variant = self._variants.get(key)
        if variant is None:
            variant = self._variants[key] = type(self)(self._target, merged)
        return variant


class LeasedFunction(_Leased, Generic[F]):
    """What ``@leased`` makes of a function: ``.remote(...)`` and ``.options(...)``."""

    def __init__(self, fn: F, options: dict[str, Any]) -> None:
        super().__init__(fn, options)
        max_pending = options.get("max_pending")
        if max_pending is not None and (
            isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 0
        ):
            raise InvalidRequest(
                f"max_pending: got {shown(max_pending)}, expected a whole number >= 0 (how "
                "many .remote() calls of this process may wait for a lease at once) or None"
            )
        check_timeout(options.get("timeout"))  # the rest is checked by request_spec
        self._task: Any = _remote_task(fn)
        # The task with its Ray options, per placement group (or node) and amounts: made
        # once per lease, reused by every task of it (bounded: leases come and go).
        self._placed: dict[tuple[str, int, float, float, int], Any] = {}
        self._spec: RequestMessage | None = None
        self._kind = ""
        self._depth = 1  # the tasks a lease carries at once (core/share.py queue_depth)
        self.__name__ = getattr(fn, "__name__", "leased")
        self.__doc__ = fn.__doc__

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Take a warm lease (waiting only while every one of this process's is in
        use), submit the task pinned to its node; an ObjectRef. The lease's use ends
        when the ref settles."""
        manager = _manager()
        if self._spec is None:
            self._prepare(manager)
        timeout = self._lease_options.get("timeout")
        max_pending = self._options.get("max_pending")
        assert self._spec is not None
        entry = manager.use_warm(self._spec, self._kind, timeout, max_pending, self._depth)
        lease_id = entry.record.lease_id
        try:
            ref = self._placed_task(manager, entry).remote(_shipped(entry), *args, **kwargs)
        except BaseException:
            manager.end_use(lease_id)
            raise
        _when_settled(ref, lambda: manager.end_use(lease_id))
        return ref

    def _prepare(self, manager: SyncResourceManager) -> None:
        """The request, its warm kind, and how many tasks a lease of it carries at once:
        ``lease.submit_ahead`` when Ray runs them one at a time in the lease's own bundle
        (not in a job's budget, whose bundle other draws share), else 1."""
        lease_options = {k: v for k, v in self._lease_options.items() if k != "timeout"}
        resources = self._resources
        if any(resources.get(r) for r in ("cpu", "gpu", "memory")):
            # Reserved in Ray at grant, by the coordinator (a spare group of the same
            # layout serves at once): its first task is never held up making one.
            lease_options["reserve"] = True
        spec = manager.request_spec(resources, **lease_options)
        self._kind = warm_kind(spec)
        if not spec.get("within"):
            holds = reservable(
                {r: to_units(r, a) for r, a in resources.items() if r in ("cpu", "gpu", "memory")}
            )
            asks = _task_asks(resources, self._ray_options)
            self._depth = queue_depth(holds, asks, manager.submit_ahead())
        self._spec = spec

    def _placed_task(self, manager: SyncResourceManager, entry: WarmEntry) -> Any:
        """The task with Ray options that run it in ``entry``'s lease: in its placement
        group (reserved at the lease's first task, then reused), asking the lease's own
        CPUs, GPUs and memory of it, so that Ray runs no more there than the lease holds
        (and, as it holds them whole, one task at a time: the others of the lease wait
        in Ray, up to the depth). A lease of pool slots only (nothing Ray reserves, the
        slots are cluster-wide) leaves placement to Ray."""
        record = entry.record
        cpus = from_units("cpu", record.resources.get("cpu", 0))
        gpus = from_units("gpu", record.resources.get("gpu", 0))
        reserved = needs_group(record) or record.within is not None
        where = manager.placement_group(record) if reserved else record.node_id
        bundle = record.within_bundle or 0  # a draw from a job's budget: its own bundle
        # All of its own bundle's memory: one task there at a time (a draw from a job's
        # budget shares the budget's bundle, so it asks none).
        memory = record.resources.get("memory", 0) if needs_group(record) else 0
        key = (where, bundle, float(cpus), float(gpus), memory)
        task = self._placed.get(key)
        if task is None:
            if len(self._placed) >= PLACED_KEPT:
                self._placed.clear()
            options: dict[str, Any] = {"num_cpus": cpus, "num_gpus": gpus, **self._ray_options}
            if memory:
                options["memory"] = memory
            if reserved:
                options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                    placement_group=placement_group_of(where),
                    placement_group_bundle_index=bundle,
                )
            elif "num_cpus" not in self._ray_options:
                # Pool slots only: cluster-wide, so Ray places the task anywhere, with
                # Ray's default of one CPU (it then reuses a few workers). Measured
                # faster than reserving that CPU per lease (docs/performance.md).
                options["num_cpus"] = 1
            task = self._placed[key] = self._task.options(**options)
        return task


def _shipped(entry: WarmEntry) -> bytes:
    """What a task receives as its ``current_lease()``: the lease's fields, token
    included, pickled once per lease (Ray passes bytes as they are; a dataclass it would
    pickle again for every task)."""
    if entry.shipped is None:
        entry.shipped = pickle.dumps(Lease(**lease_fields(entry.record)))
    shipped: bytes = entry.shipped
    return shipped


def _when_settled(ref: Any, callback: Callable[[], None]) -> None:
    """``callback()`` once ``ref``'s task has settled, in whatever way; the ref is kept
    alive until then (a caller that drops it must not leave the lease busy)."""
    keep: list[Any] = [ref]  # held by the callback, which Ray holds until it runs

    def settled(*_: Any) -> None:
        keep.clear()
        callback()

    on_ready = getattr(ref, "_on_ready", None)
    if on_ready is not None:  # Ray's: waits without fetching the value
        on_ready(settled)
    else:  # the public future (fetches the value)
        ref.future().add_done_callback(settled)


class LeasedActorClass(_Leased):
    """What ``@leased`` makes of a class: the lease lives as long as the actor."""

    def __init__(self, cls: type, options: dict[str, Any]) -> None:
        super().__init__(cls, options)
        self._actor: Any = ray.remote(_leased_subclass(cls))

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Acquire the lease (waiting its turn), then start the actor pinned to the granted
        node; the lease goes back if the start fails. The actor's process holds and renews
        it once started; the caller renews too until then (and after, harmlessly)."""
        manager = _manager()
        reserve = None if set(self._resources) <= {"pools", "disk"} else True
        lease = manager.acquire(self._resources, reserve=reserve, **self._lease_options)
        try:
            options = _pinned(lease, self._ray_options)
            return self._actor.options(**options).remote(_portable(lease), *args, **kwargs)
        except BaseException:
            manager.release(lease)
            raise


def _leased_subclass(cls: type) -> type:
    class Leased(cls):  # type: ignore[misc, valid-type]
        def __init__(self, __lease: Lease, *args: Any, **kwargs: Any) -> None:
            # This class travels to the worker by value; the module it names must be
            # the worker's real one, where current_lease() looks.
            from anya_resource.integrations import ray_tasks

            self.__renewer = ray_tasks._adopt_here(__lease)
            ray_tasks._set_actor_lease(__lease)
            super().__init__(*args, **kwargs)

    Leased.__name__ = cls.__name__
    Leased.__qualname__ = cls.__qualname__
    Leased.__module__ = cls.__module__
    return Leased


def _portable(lease: Lease) -> Lease:
    """A copy of the lease without the caller's manager, to ship to the task."""
    return dataclasses.replace(lease, on_revoked=None, _manager=None)


def leased(target: Any = None, /, **options: Any) -> Any:
    """``@leased(memory="512MiB", cpu=1, priority="high", tenant="transactions")``.

    On a function: a ``LeasedFunction`` (``.remote``, ``.options``), like a Ray remote
    function. On a class: a ``LeasedActorClass`` whose ``.remote`` starts the actor
    on the granted node. Ray options (``max_retries``, ``runtime_env``...) pass through.
    """

    def wrap(obj: Any) -> Any:
        if isinstance(obj, type):
            return LeasedActorClass(obj, options)
        if callable(obj):
            return LeasedFunction(obj, options)
        raise TypeError(f"@leased applies to a function or a class, not {obj!r}")

    return wrap(target) if target is not None else wrap
