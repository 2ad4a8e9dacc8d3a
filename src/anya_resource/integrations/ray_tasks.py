"""``@leased``: Ray tasks and actors that run where, and when, a lease was granted.

``f.remote(...)`` first acquires a lease (waiting its turn by priority), then submits
the Ray task pinned to the granted node (``NodeAffinitySchedulingStrategy``, not
soft). The task binds the lease to its own worker process (so the lease goes if the
worker dies), keeps it renewed while it runs, and releases it when it returns or
raises; the caller releases it too when the task's result is settled, which covers
a task cancelled before it ever started. Releases are idempotent, so both may.

Ray's own logical CPU and memory are not asked for (``num_cpus=0``): the lease is
the admission control. GPUs are asked for from Ray as well, so that Ray sets
``CUDA_VISIBLE_DEVICES`` for the task.
"""

from __future__ import annotations

import contextvars
import dataclasses
import logging
import threading
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, Generic, TypeVar

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from anya_resource.actors import deploy
from anya_resource.client import SyncResourceManager, current_holder
from anya_resource.lease import Lease

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
S = TypeVar("S", bound="_Leased")
T = TypeVar("T")
LEASE_OPTIONS = ("priority", "tenant", "timeout", "ttl", "preemptible", "node", "detached")
RESOURCE_OPTIONS = ("memory", "cpu", "gpu", "disk", "pools")

_task_lease: contextvars.ContextVar[Lease | None] = contextvars.ContextVar("lease", default=None)
_actor_lease: Lease | None = None
_sync_lock = threading.Lock()
_sync_manager: SyncResourceManager | None = None


def current_lease() -> Lease:
    """The lease of the ``@leased`` task or actor this code runs in."""
    lease = _task_lease.get() or _actor_lease
    if lease is None:
        raise RuntimeError("current_lease() is only available inside a @leased task or actor")
    return lease


def _set_actor_lease(lease: Lease) -> None:
    global _actor_lease
    _actor_lease = lease


def _manager() -> SyncResourceManager:
    global _sync_manager
    with _sync_lock:
        if _sync_manager is None:
            _sync_manager = SyncResourceManager.connect()
        return _sync_manager


def _split(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(resources, lease options, Ray options) from one ``options(...)`` call."""
    resources = {k: options[k] for k in RESOURCE_OPTIONS if options.get(k) is not None}
    lease_options = {k: options[k] for k in LEASE_OPTIONS if k in options}
    ray_options = {
        k: v for k, v in options.items() if k not in RESOURCE_OPTIONS and k not in LEASE_OPTIONS
    }
    return resources, lease_options, ray_options


def _pinned(lease: Lease, ray_options: dict[str, Any]) -> dict[str, Any]:
    return {
        "num_cpus": 0,
        "num_gpus": lease.resources.get("gpu", 0),
        **ray_options,
        "scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=lease.node_id, soft=False),
    }


class _Renewer:
    """Keeps a lease renewed from the process that now holds it (a thread: tasks are sync)."""

    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        self.stop = threading.Event()
        self.every = max(0.2, lease.ttl / 3)
        self.thread = threading.Thread(target=self._run, name="anya-lease-renew", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        coordinator = deploy.coordinator()
        while not self.stop.wait(self.every):
            try:
                self.lease.expires_at = ray.get(
                    coordinator.renew.remote(self.lease.lease_id, self.lease.token)
                )
            except Exception as exc:  # revoked, expired, or the coordinator is restarting
                log.warning("renewing %s failed: %s", self.lease.lease_id, exc)

    def close(self) -> None:
        self.stop.set()


def _adopt_here(lease: Lease) -> _Renewer:
    """Make this worker process the holder of ``lease`` and keep it renewed."""
    coordinator = deploy.coordinator()
    lease.expires_at = ray.get(
        coordinator.rebind.remote(lease.lease_id, lease.token, asdict(current_holder()))
    )
    return _Renewer(lease)


def _give_back(lease: Lease) -> None:
    # Fire and forget: the caller releases it too once the result is settled.
    deploy.coordinator().release.remote(lease.lease_id, lease.token)


def _run_task(fn: Callable[..., Any], lease: Lease, *args: Any, **kwargs: Any) -> Any:
    renewer = _adopt_here(lease)
    token = _task_lease.set(lease)
    try:
        return fn(*args, **kwargs)
    finally:
        _task_lease.reset(token)
        renewer.close()
        _give_back(lease)


class _Leased:
    """What ``@leased`` functions and classes share: options, and acquire-then-submit."""

    def __init__(self, target: Any, options: dict[str, Any]) -> None:
        self._target = target
        self._options = options
        self._resources, self._lease_options, self._ray_options = _split(options)

    def options(self: S, **options: Any) -> S:
        return type(self)(self._target, {**self._options, **options})

    def _submit(
        self, submit: Callable[[dict[str, Any], Lease], T]
    ) -> tuple[SyncResourceManager, Lease, T]:
        """Acquire the lease (waiting its turn), then ``submit(ray options, lease copy)``
        pinned to the granted node; the lease goes back if the submission fails."""
        manager = _manager()
        lease = manager.acquire(self._resources, **self._lease_options)
        try:
            submitted = submit(_pinned(lease, self._ray_options), _portable(lease))
        except BaseException:
            manager.release(lease)
            raise
        return manager, lease, submitted


class LeasedFunction(_Leased, Generic[F]):
    """What ``@leased`` makes of a function: ``.remote(...)`` and ``.options(...)``."""

    def __init__(self, fn: F, options: dict[str, Any]) -> None:
        super().__init__(fn, options)
        self._task: Any = ray.remote(_run_task)
        self.__name__ = getattr(fn, "__name__", "leased")
        self.__doc__ = fn.__doc__

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Acquire the lease (waiting its turn), then submit the task; an ObjectRef."""
        manager, lease, ref = self._submit(
            lambda options, portable: self._task.options(**options).remote(
                self._target, portable, *args, **kwargs
            )
        )
        # The caller keeps renewing until the result is settled: the task may take a
        # while to start, and must not find its lease expired when it does.
        ref.future().add_done_callback(lambda _: manager.release_quietly(lease))
        return ref


class LeasedActorClass(_Leased):
    """What ``@leased`` makes of a class: the lease lives as long as the actor."""

    def __init__(self, cls: type, options: dict[str, Any]) -> None:
        super().__init__(cls, options)
        self._actor: Any = ray.remote(_leased_subclass(cls))

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        # The actor's process holds and renews the lease once it has started; the caller
        # renews too until then (and after, harmlessly, while it lives).
        _, _, handle = self._submit(
            lambda options, portable: self._actor.options(**options).remote(
                portable, *args, **kwargs
            )
        )
        return handle


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
    return dataclasses.replace(lease, on_revoked=None, _manager=None, _run_sync=None)


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
