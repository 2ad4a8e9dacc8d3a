"""The client's view of a granted lease, and the awaitable that acquires one."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Generator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, TypeVar

from anya_resource.core import LeaseRecord
from anya_resource.errors import InvalidRequest, LeaseExpired, LeaseRevoked
from anya_resource.quantities import from_units

L = TypeVar("L", bound="Lease")
T = TypeVar("T")


class LeaseOwner(Protocol):
    """What a lease needs of the manager that granted it (``ResourceManager`` is one)."""

    @property
    def blocking(self) -> bool:
        """For callers in other threads (``new_in_thread``): its leases work with ``with``."""

    async def release(self, lease: Lease) -> None: ...

    async def reserve(self, lease: Lease) -> Any: ...

    def release_soon(self, lease: Lease) -> None: ...

    def run_from_thread(self, work: Awaitable[T]) -> T: ...


@dataclass(eq=False)
class Lease:
    """A granted request. Give it back with ``release()`` or by leaving ``async with``.

    ``token`` is the secret that proves you hold it; it is not shown in ``repr``.
    """

    lease_id: str
    token: str = field(repr=False)
    fencing_token: int
    node_id: str
    resources: dict[str, Any]
    priority: str
    tenant: str
    expires_at: float
    within: str | None = None  # the budget (a job's lease id) it was drawn from, if any
    # Where each bundle went, in the order asked ({"node_id": ..., "resources": ...}; one
    # for a one-node lease), and the id (hex) of the Ray placement group that reserves it.
    bundles: list[dict[str, Any]] = field(default_factory=list)
    placement_group_id: str | None = None
    revoked: bool = False
    expired: bool = False
    released: bool = False
    reason: str | None = None
    on_revoked: Callable[[Lease], None] | None = field(default=None, repr=False)
    _record: LeaseRecord | None = field(default=None, repr=False)
    _manager: LeaseOwner | None = field(default=None, repr=False)

    def check(self) -> None:
        """Raise ``LeaseRevoked`` / ``LeaseExpired`` if the lease may no longer be used."""
        if self.revoked:
            raise LeaseRevoked(f"lease {self.lease_id} was revoked: {self.reason}")
        if self.expired:
            raise LeaseExpired(f"lease {self.lease_id} expired: {self.reason}")

    @property
    def valid(self) -> bool:
        return not (self.revoked or self.expired or self.released)

    @property
    def ttl(self) -> float:
        """The TTL it was granted with, which a renewal gives it again (60 s if unknown)."""
        return self._record.ttl if self._record is not None else 60.0

    @property
    def reserved(self) -> bool:
        """Whether Ray reserves it already (a placement group of its own, or its budget's)."""
        return self.placement_group_id is not None

    @property
    def placement_group(self) -> Any:
        """The Ray ``PlacementGroup`` that reserves this lease: one bundle per bundle of
        the lease, pinned to its node. Put your own tasks and actors in it with
        ``scheduling_strategy=lease.scheduling_strategy()``.

        A lease not reserved yet (reserved at first use: the default for one-node
        leases) is reserved now by a lease of ``SyncResourceManager``; with the async
        manager, ``await lease.reserve()`` first (or acquire it with ``reserve=True``).
        """
        if self.placement_group_id is None:
            manager = self._manager
            if manager is None or not manager.blocking:
                raise InvalidRequest(
                    f"lease {self.lease_id} is not reserved in Ray yet: expected "
                    "`await lease.reserve()` first, or an acquire with reserve=True"
                )
            manager.run_from_thread(manager.reserve(self))
        return placement_group_of(str(self.placement_group_id))

    async def reserve(self) -> Any:
        """Reserve the lease in Ray now if it is not yet; its ``placement_group``."""
        if self.placement_group_id is None:
            if self._manager is None:
                raise InvalidRequest(
                    f"lease {self.lease_id} was sent here from another process: reserve it "
                    "with `await manager.reserve(lease)` of a ResourceManager of this process"
                )
            await self._manager.reserve(self)
        return placement_group_of(str(self.placement_group_id))

    def scheduling_strategy(self, bundle: int | None = None) -> Any:
        """Ray's ``PlacementGroupSchedulingStrategy`` for work that runs in this lease:
        in bundle ``bundle`` (its index in ``bundles``), or in any of them (None).
        ``my_task.options(scheduling_strategy=lease.scheduling_strategy()).remote()``."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        if bundle is not None and (
            isinstance(bundle, bool)
            or not isinstance(bundle, int)
            or not 0 <= bundle < max(1, len(self.bundles))
        ):
            raise InvalidRequest(
                f"bundle: got {bundle!r}, expected the index of one of this lease's "
                f"{max(1, len(self.bundles))} bundle(s), or None for any"
            )
        return PlacementGroupSchedulingStrategy(
            placement_group=self.placement_group,
            placement_group_bundle_index=-1 if bundle is None else self._ray_bundle(bundle),
            placement_group_capture_child_tasks=True,
        )

    def _ray_bundle(self, bundle: int) -> int:
        """The bundle of the placement group that holds bundle ``bundle`` of the lease:
        the group has one per node, in the order the lease's bundles name the nodes."""
        if not self.bundles:
            return 0
        nodes = list(dict.fromkeys(b["node_id"] for b in self.bundles))
        return nodes.index(self.bundles[bundle]["node_id"])

    async def closed(self) -> None:
        """Once given back: wait until what stood on the lease is closed (nothing here)."""

    async def release(self) -> None:
        if self._manager is None:
            raise InvalidRequest(
                f"lease {self.lease_id} was sent here from another process: release it with "
                "`await manager.release(lease)` of a ResourceManager of this process"
            )
        await self._manager.release(self)

    # In another process a lease is its id, token and fields: what the manager, the
    # callback and a live connection of its own process were stays behind (a Ray task or
    # actor that receives one can release it with a manager of its own).
    _LOCAL = ("on_revoked", "_manager")

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for name in self._LOCAL:
            state[name] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    async def __aenter__(self: L) -> L:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._manager is not None:
            self._manager.release_soon(self)

    # The blocking twin: a lease from SyncResourceManager works with ``with``.
    def __enter__(self: L) -> L:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        manager = self._manager
        if manager is None or not manager.blocking:
            raise TypeError("this lease came from the async ResourceManager: use 'async with'")

        async def give_back() -> None:
            manager.release_soon(self)

        manager.run_from_thread(give_back())


@dataclass(eq=False)
class ResourceConnection(Lease):
    """A lease on one slot of a pool, with the real connection it gates (if any)."""

    pool: str = ""
    connection: Any = None

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["connection"] = None  # a live socket stays in the process that opened it
        return state


def placement_group_of(group_id: str) -> Any:
    """Ray's ``PlacementGroup`` handle for the group with this id (hex)."""
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup

    return PlacementGroup(PlacementGroupID.from_hex(group_id))


def lease_fields(record: LeaseRecord) -> dict[str, Any]:
    """The public fields of a client lease, in human units."""
    resources: dict[str, Any] = {r: from_units(r, a) for r, a in record.resources.items()}
    if record.pools:
        resources["pools"] = dict(record.pools)
    bundles = [
        {"node_id": node_id, "resources": {r: from_units(r, a) for r, a in amounts.items()}}
        for node_id, amounts in record.placed()
    ]
    return {
        "bundles": bundles,
        "placement_group_id": record.placement_group,
        "lease_id": record.lease_id,
        "token": record.token,
        "fencing_token": record.fencing_token,
        "node_id": record.node_id,
        "resources": resources,
        "priority": record.priority_name,
        "tenant": record.tenant,
        "expires_at": record.expires_at,
        "within": record.within,
    }


class AcquireContext(Coroutine[Any, Any, L]):
    """What ``acquire`` returns: a coroutine of the lease, and an async context manager.

    Await it, hand it to ``asyncio.create_task``, ``gather``, ``wait_for`` or a
    ``TaskGroup`` (it is a real ``collections.abc.Coroutine``, as aiohttp's request
    context managers are), or ``async with`` it directly (the lease is released when the
    block ends). The acquire itself starts when it is first awaited or sent to.
    """

    def __init__(self, start: Callable[[], Awaitable[L]]) -> None:
        self._start = start
        self._lease: L | None = None
        self._coroutine: Coroutine[Any, Any, L] | None = None

    def _inner(self) -> Coroutine[Any, Any, L]:
        if self._coroutine is None:
            self._coroutine = self._acquire()
        return self._coroutine

    def send(self, value: Any) -> Any:
        return self._inner().send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        if val is None and tb is None:
            return self._inner().throw(typ)
        return self._inner().throw(typ, val, tb)

    def close(self) -> None:
        if self._coroutine is not None:
            self._coroutine.close()

    def __await__(self) -> Generator[Any, None, L]:
        return self._inner().__await__()

    async def _acquire(self) -> L:
        self._lease = await self._start()
        return self._lease

    async def __aenter__(self) -> L:
        return await self._inner()

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._lease is not None:
            await self._lease.__aexit__(kind, exc, tb)
