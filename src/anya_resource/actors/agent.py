"""The node agent: one per Ray node, pinned to it, the watcher of its holder processes.

Every heartbeat it samples the node (psutil, and the summed use of the node's own
Ray processes), checks that the processes holding leases from this node are still
alive (pid and create time, so a reused pid is not mistaken for the holder), and
reports both to the coordinator. It keeps no lease table: the heartbeat's reply names
the holders to watch, so whatever restarts (this agent or the coordinator), it watches
the right processes from its next beat on, and reports a dead one at every beat until
the coordinator holds nothing in its name (reclaiming is idempotent).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import ray

from anya_resource.actors import boundary
from anya_resource.actors.naming import COORDINATOR_NAME, NAMESPACE
from anya_resource.errors import ManagerUnavailable
from anya_resource.health import NodeSampler, find_own_raylet_pid, holder_alive

log = logging.getLogger(__name__)


class NodeAgentImpl:
    def __init__(self, node_id: str, heartbeat_s: float) -> None:
        self.node_id = node_id
        self.heartbeat_s = heartbeat_s
        # holder key -> (pid, create time): what the coordinator's last reply named
        self.watched: dict[str, tuple[int, float]] = {}
        raylet = find_own_raylet_pid(os.getpid())
        address = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
        self.sampler = NodeSampler(node_id, address, raylet if raylet is not None else os.getpid())
        self.beats = 0
        self._coordinator: Any = None
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _coordinator_handle(self) -> Any:
        if self._coordinator is None:
            # A lookup is a blocking GCS call: never on this event loop.
            found = await asyncio.to_thread(boundary.find, COORDINATOR_NAME, NAMESPACE)
            if found is None:
                raise ManagerUnavailable("the coordinator is not deployed (or being removed)")
            self._coordinator = found
        return self._coordinator

    async def _run(self) -> None:
        limit = max(10.0, 10 * self.heartbeat_s)
        while True:
            started = time.monotonic()
            try:
                # Bounded as a whole: whatever a beat waits on, the next one comes.
                await asyncio.wait_for(self._beat(), timeout=limit)
            except Exception as exc:
                self._coordinator = None
                log.warning("heartbeat of %s failed: %s: %s", self.node_id, type(exc).__name__, exc)
            elapsed = time.monotonic() - started
            await asyncio.sleep(max(0.0, self.heartbeat_s - elapsed))

    async def _beat(self) -> None:
        pids = [pid for pid, _ in self.watched.values()]
        health = await asyncio.to_thread(self.sampler.sample, pids)
        dead = [
            key
            for key, (pid, create_time) in self.watched.items()
            if not holder_alive(pid, create_time)
        ]
        coordinator = await self._coordinator_handle()
        reply = await asyncio.wait_for(
            boundary.call(
                lambda: coordinator.heartbeat.remote(self.node_id, health.to_dict(), dead)
            ),
            timeout=max(5.0, 5 * self.heartbeat_s),
        )
        self.watched = {
            key: (pid, create_time)
            for key, pid, create_time in reply.get("holders", ())
            if pid is not None and create_time is not None
        }
        self.beats += 1
        if not reply.get("known", True):
            log.info("coordinator does not know node %s yet", self.node_id)

    # -- what others call -------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "running_on": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "holders": len(self.watched),
            "beats": self.beats,
        }


NodeAgent = ray.remote(NodeAgentImpl)
