"""A manager's process-local pools: made on first use, one per pool name and flavour.

The pool settings come from the policy the coordinator was deployed with (kept in
Ray's GCS key-value store), not from whatever policy this process passed: the first
deployment's policy is the cluster's.
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from anya_resource.actors import boundary, store
from anya_resource.config import Policy
from anya_resource.core.requests import check_fields
from anya_resource.errors import InvalidRequest
from anya_resource.pools.entries import Checkout
from anya_resource.pools.handle import PooledConnection
from anya_resource.pools.kinds import Flavour, connector_for
from anya_resource.pools.pool import ConnectionPool
from anya_resource.pools.slots import ManagerSlots, SlotManager
from anya_resource.pools.stats import PoolStatistics


def deployed_policy() -> Policy | None:
    """The policy the coordinator runs with, or None if it cannot be read here."""
    raw = boundary.send(store.stored_policy, boundary.STORE)
    return Policy.model_validate_json(raw) if raw is not None else None


def checkout_from(
    options: Mapping[str, Any], policy: Policy, stack: traceback.StackSummary | None
) -> Checkout:
    """A caller's ``acquire_connection`` options (unknown ones are a ``TypeError``),
    checked as ``acquire`` checks them, before any slot is asked for."""
    checkout = Checkout(**options)
    check_fields(
        {},
        priority=checkout.priority,
        tenant=checkout.tenant,
        timeout=checkout.timeout,
        ttl=checkout.ttl,
        preemptible=checkout.preemptible,
        node=checkout.node,
        detached=checkout.detached,
        max_ttl=policy.lease.max_ttl,
    )
    if checkout.detached:
        raise InvalidRequest(
            "detached: a pooled connection's slot lives and dies with this process; "
            "expected detached=False"
        )
    return replace(checkout, level=policy.priority_level(checkout.priority), stack=stack)


class ProcessPools:
    """The pools of one ``ResourceManager`` (its blocking twin shares them, flavour 'sync')."""

    def __init__(self, manager: SlotManager, fallback: Policy | None) -> None:
        self._slots = ManagerSlots(manager)
        self._fallback = fallback
        self._policy: Policy | None = None
        self._pools: dict[tuple[str, Flavour], ConnectionPool] = {}

    async def policy(self) -> Policy:
        if self._policy is None:
            deployed = await asyncio.to_thread(deployed_policy)
            self._policy = deployed or self._fallback or Policy.default()
        return self._policy

    async def pool(self, name: str | None, flavour: Flavour) -> ConnectionPool | None:
        """The pool ``name`` (None: the default pool), or None for a bare-slot pool.

        Unknown names are None too: the coordinator then says what is wrong with them.
        """
        policy = await self.policy()
        name = policy.default_pool if name is None else name
        settings = policy.pools.get(name) if name is not None else None
        if name is None or settings is None or settings.kind == "slot":
            return None
        pool = self._pools.get((name, flavour))
        if pool is None:
            connector = connector_for(name, settings, flavour)
            pool = self._pools[(name, flavour)] = ConnectionPool(
                name, settings, connector, self._slots
            )
        return pool

    async def checkout(
        self,
        pool: ConnectionPool,
        options: Mapping[str, Any],
        stack: traceback.StackSummary | None,
    ) -> PooledConnection:
        checkout = checkout_from(options, await self.policy(), stack)
        return await pool.get(checkout)

    def wanted(self, name: str) -> None:
        """The coordinator says another process waits for pool ``name``."""
        for (pool_name, _), pool in self._pools.items():
            if pool_name == name:
                pool.wanted()

    def statistics(self, name: str, flavour: Flavour) -> PoolStatistics | None:
        pool = self._pools.get((name, flavour))
        return None if pool is None else pool.statistics()

    async def close(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        await asyncio.gather(*(pool.close() for pool in pools))
