"""The many-waiters scenario (issue 11, item 1), shared by the single-node and the cluster run.

25,000 acquires (``ANYA_LOAD_WAITERS``) wait on a 1-slot pool, from 4 processes, while
the test holds the slot. Then, with all of them queued:

* the coordinator keeps hearing every node (no node lost, no missed heartbeat counted);
* releases (of another pool, by the test) are confirmed within 1 s, and so are renewals;
* the slot goes round in priority order: the 50 critical waiters first, then the 500
  high ones, then the low ones (FIFO among equals is the core's own business);
* the memory of the coordinator and of a waiting process, per waiter, is measured and
  reported.

Then the waiting processes are killed: their waiters go, and everything is free.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import ray

from anya_resource import ResourceManager
from tests.raytools import Loop, eventually

WAITERS = int(os.environ.get("ANYA_LOAD_WAITERS", "25000"))
PROCESSES = 4
PLAN = "critical:50,high:500,low:rest"  # per process: 200 critical, 2,000 high in all
HEARTBEAT = 0.5
POLICY = {
    "heartbeat_s": HEARTBEAT,
    "reserve": {"memory": 0, "cpu": 0},
    "pressure": {"memory_high": 99, "memory_low": 98},
    "aging": {"per_second": 0.0},
    "lease": {"default_ttl": 20, "renew_every": 5},
    "pools": {"default": {"size": 8}, "one": {"size": 1}, "free": {"size": 4}},
}
SCRIPT = Path(__file__).with_name("waiters.py")
ORDER = {"critical": 0, "high": 1, "low": 2}


def spawn(count: int, out: Path, hold: float = 0.005, extra: int = 0) -> subprocess.Popen[str]:
    address = ray.get_runtime_context().gcs_address
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), address, str(count), PLAN, str(hold), str(out), str(extra)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )


def coordinator_rss(manager: ResourceManager, loop: Loop) -> int:
    pid = loop.run(manager._call(lambda c: c.ping.remote()))["pid"]
    return int(psutil.Process(pid).memory_info().rss)


async def _waiting(manager: ResourceManager, count: int) -> bool:
    return bool((await manager.snapshot())["queue"]["waiting"] >= count)


async def _control_calls(manager: ResourceManager) -> list[float]:
    """Release and renewal round trips while everything waits: each must be quick."""
    times = []
    for _ in range(10):
        lease = await manager.acquire({"pools": {"free": 1}}, timeout=5)
        started = time.monotonic()
        await manager.renew(lease)
        times.append(time.monotonic() - started)
        started = time.monotonic()
        await manager.release(lease)
        times.append(time.monotonic() - started)
    return times


def run(manager: ResourceManager, loop: Loop, tmp: Path, nodes: int) -> dict[str, Any]:
    """The scenario; returns its figures (asserting as it goes)."""
    slot = loop.run(manager.acquire({"pools": {"one": 1}}, priority="critical", timeout=30))
    rss_before = coordinator_rss(manager, loop)
    logs = [tmp / f"grants-{i}.jsonl" for i in range(PROCESSES)]
    per_process = WAITERS // PROCESSES
    processes = [spawn(per_process, log) for log in logs]
    try:
        client_rss = []
        for process in processes:
            assert process.stdout is not None
            words = process.stdout.readline().split()
            assert words[:1] == ["queued"], words
            client_rss.append((int(words[1]), int(words[2])))
        started = time.monotonic()
        loop.run(eventually(lambda: _waiting(manager, per_process * PROCESSES), timeout=120))
        queued_in = time.monotonic() - started
        rss_queued = coordinator_rss(manager, loop)
        control = loop.run(_control_calls(manager))
        assert max(control) < 1.0, f"a release or renewal took {max(control):.2f} s"
        # Several heartbeats with everything waiting: every node still heard.
        time.sleep(6 * HEARTBEAT)
        health = loop.run(manager.check_resource_health())
        assert len(health.nodes) == nodes, health
        assert all(n.missed_heartbeats == 0 for n in health.nodes), health.nodes
        snapshot = loop.run(manager.snapshot())
        assert len(snapshot["nodes"]) == nodes and snapshot["leases"] >= 1
        # The slot goes round: critical first, then high, then low.
        loop.run(manager.release(slot))
        loop.run(eventually(lambda: _granted(logs, 700), timeout=120))
        grants = _grants(logs)
        ranks = [ORDER[priority] for priority, _, _ in grants]
        assert ranks == sorted(ranks), f"granted out of priority order: {ranks[:80]}"
        assert ranks[: 50 * PROCESSES] == [0] * (50 * PROCESSES)
        health = loop.run(manager.check_resource_health())
        assert len(health.nodes) == nodes
    finally:
        for process in processes:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
    loop.run(eventually(lambda: _drained(manager), timeout=60))
    waiters = per_process * PROCESSES
    return {
        "waiters": waiters,
        "processes": PROCESSES,
        "nodes": nodes,
        "queued_in_s": round(queued_in, 2),
        "control_call_max_s": round(max(control), 4),
        "coordinator_rss_per_waiter_bytes": round((rss_queued - rss_before) / waiters),
        "client_rss_per_waiter_bytes": round(
            sum(after - before for before, after in client_rss) / waiters
        ),
        "grants_checked_in_order": len(_grants(logs)),
    }


ONE_PROCESS = int(os.environ.get("ANYA_LOAD_ONE_PROCESS", "100000"))


def one_process(manager: ResourceManager, loop: Loop, tmp: Path) -> dict[str, Any]:
    """``ONE_PROCESS`` waiters in one process: bounded memory, then a clear refusal."""
    from anya_resource.client import MAX_WAITING_PER_MANAGER

    slot = loop.run(manager.acquire({"pools": {"one": 1}}, priority="critical", timeout=30))
    rss_before = coordinator_rss(manager, loop)
    extra = 5 if ONE_PROCESS >= MAX_WAITING_PER_MANAGER else 0
    process = spawn(ONE_PROCESS, tmp / "grants.jsonl", extra=extra)
    try:
        assert process.stdout is not None
        started = time.monotonic()
        words = process.stdout.readline().split()
        assert words[:1] == ["queued"], words
        queued_in = time.monotonic() - started
        loop.run(eventually(lambda: _waiting(manager, ONE_PROCESS), timeout=120))
        rss_queued = coordinator_rss(manager, loop)
        refusal = process.stdout.readline().strip() if extra else ""
        if extra:
            assert refusal.startswith("overloaded") and f"{MAX_WAITING_PER_MANAGER:,}" in refusal
        control = loop.run(_control_calls(manager))
        assert max(control) < 1.0, f"a release or renewal took {max(control):.2f} s"
        health = loop.run(manager.check_resource_health())
        assert all(n.missed_heartbeats == 0 for n in health.nodes), health.nodes
        client = (int(words[2]) - int(words[1])) / ONE_PROCESS
        coordinator = (rss_queued - rss_before) / ONE_PROCESS
        # Bounded: a few KB per waiter on each side, not a copy of the queue per grant.
        assert client < 20_000 and coordinator < 20_000, (client, coordinator)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    loop.run(manager.release(slot))
    loop.run(eventually(lambda: _drained(manager), timeout=120))
    return {
        "waiters_in_one_process": ONE_PROCESS,
        "submitted_in_s": round(queued_in, 2),
        "refusal": refusal,
        "control_call_max_s": round(max(control), 4),
        "coordinator_rss_per_waiter_bytes": round(coordinator),
        "client_rss_per_waiter_bytes": round(client),
    }


def _grants(logs: list[Path]) -> list[tuple[str, float, str]]:
    rows = [
        tuple(json.loads(line))
        for log in logs
        if log.exists()
        for line in log.read_text().splitlines()
        if line.strip()
    ]
    return sorted(rows, key=lambda row: row[1])  # type: ignore[return-value]


async def _granted(logs: list[Path], count: int) -> bool:
    return len(_grants(logs)) >= count


async def _drained(manager: ResourceManager) -> bool:
    snap = await manager.snapshot()
    return snap["queue"]["waiting"] == 0 and snap["leases"] == 0


def report(figures: dict[str, Any]) -> None:
    print("\nload:", json.dumps(figures))
    path = os.environ.get("ANYA_LOAD_REPORT")
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps(figures) + "\n")
