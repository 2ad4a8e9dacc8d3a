"""The node agent: one per Ray node, pinned to it, the node's record of its leases.

Every heartbeat it samples the node (psutil, and the summed use of the node's own
Ray processes), checks that the processes holding leases from this node are still
alive (pid and create time, so a reused pid is not mistaken for the holder), and
reports both to the coordinator. It keeps the node's lease table, which the
coordinator reads back after a restart; a restarted agent asks the coordinator
for its table.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Any

import ray

from anya_resource.actors.naming import COORDINATOR_NAME, NAMESPACE
from anya_resource.core import LeaseRecord
from anya_resource.health import NodeSampler, find_own_raylet_pid, holder_alive

log = logging.getLogger(__name__)


class NodeAgentImpl:
    def __init__(self, node_id: str, heartbeat_s: float) -> None:
        self.node_id = node_id
        self.heartbeat_s = heartbeat_s
        self.table: dict[str, LeaseRecord] = {}
        raylet = find_own_raylet_pid(os.getpid())
        address = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
        self.sampler = NodeSampler(node_id, address, raylet if raylet is not None else os.getpid())
        self.reported_dead: set[str] = set()
        self.beats = 0
        self._coordinator: Any = None
        self._task = asyncio.get_running_loop().create_task(self._run())

    def _coordinator_handle(self) -> Any:
        if self._coordinator is None:
            self._coordinator = ray.get_actor(COORDINATOR_NAME, namespace=NAMESPACE)
        return self._coordinator

    async def _run(self) -> None:
        await self._load_table()
        while True:
            started = time.monotonic()
            with contextlib.suppress(Exception):
                await self._beat()
            elapsed = time.monotonic() - started
            await asyncio.sleep(max(0.0, self.heartbeat_s - elapsed))

    async def _load_table(self) -> None:
        # After a restart of this agent the coordinator still knows the node's leases.
        for _ in range(50):
            try:
                records = await self._coordinator_handle().agent_table.remote(self.node_id)
            except Exception:
                self._coordinator = None
                await asyncio.sleep(self.heartbeat_s)
                continue
            self.table.update({r.lease_id: r for r in records})
            return

    async def _beat(self) -> None:
        holders = self._local_holders()
        health = await asyncio.to_thread(self.sampler.sample, [pid for pid, _ in holders.values()])
        dead = [
            key
            for key, (pid, create_time) in holders.items()
            if key not in self.reported_dead and not holder_alive(pid, create_time)
        ]
        try:
            reply = await asyncio.wait_for(
                self._coordinator_handle().heartbeat.remote(self.node_id, health.to_dict(), dead),
                timeout=max(5.0, 5 * self.heartbeat_s),
            )
        except Exception as exc:
            self._coordinator = None  # look it up again: it may have been redeployed
            log.info("heartbeat from %s failed: %s", self.node_id, exc)
            return
        self.reported_dead.update(dead)
        self.beats += 1
        if not reply.get("known", True):
            log.info("coordinator does not know node %s yet", self.node_id)

    def _local_holders(self) -> dict[str, tuple[int, float]]:
        """Holder processes on this node: key -> (pid, create time)."""
        holders: dict[str, tuple[int, float]] = {}
        for lease in self.table.values():
            holder = lease.holder
            if (
                holder.node_id == self.node_id
                and holder.pid is not None
                and holder.create_time is not None
                and holder.key is not None
            ):
                holders[holder.key] = (holder.pid, holder.create_time)
        return holders

    # -- what the coordinator calls ---------------------------------------------------

    async def apply(self, batch: list[tuple[str, Any]]) -> int:
        for op, payload in batch:
            if op == "add":
                self.table[payload.lease_id] = payload
            elif op == "remove":
                self.table.pop(payload, None)
        return len(self.table)

    async def table_records(self) -> list[LeaseRecord]:
        """The leases granted on this node (the coordinator's recovery source)."""
        return [lease for lease in self.table.values() if lease.node_id == self.node_id]

    async def status(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "running_on": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "leases": len(self.table),
            "beats": self.beats,
        }


NodeAgent = ray.remote(NodeAgentImpl)
