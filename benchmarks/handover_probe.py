"""Where a high-priority driver's first ``@leased`` tasks wait, on a 1 head + 3 worker cluster.

A low driver (a process of its own) saturates a pool of 4 slots with 8 threads of
20 ms ``@leased`` tasks; 4 s later a high driver joins with 8 threads for 3 s, after a
1 s warm-up of its own. Each task returns when its body started and whether it was the
first task its worker process ran. Printed: the high driver's waits (from just before
``.remote()`` to the body's first line), how many waited over 1 s, and how many of those
were a new worker's first task (Ray starts worker processes per job and node: not a
scheduling wait). The cluster's priority figure in docs/performance.md comes from here.

    .venv/bin/python benchmarks/handover_probe.py
"""

from __future__ import annotations

import os

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

import argparse
import json
import logging
import subprocess
import sys
import threading
import time
from typing import Any

import ray

from anya_resource import SyncResourceManager, leased
from benchtools import on_loopback

POLICY = {"pools": {"pg": {"size": 4, "kind": "slot"}}}
THREADS = 8


def work() -> tuple[float, bool]:
    import builtins

    started = time.time()
    first = not getattr(builtins, "_anya_probe_seen", False)
    builtins._anya_probe_seen = True  # type: ignore[attr-defined]
    time.sleep(0.02)
    return started, first


def driver(role: str, address: str, seconds: float, warm: float) -> None:
    """One driver's closed loops; prints its tasks as JSON: (sent, wait, first task)."""
    ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
    task = leased(pools={"pg": 1}, priority=role)(work)
    records: list[tuple[float, float, bool]] = []

    def loop(until: float) -> None:
        while time.time() < until:
            sent = time.time()
            started, first = ray.get(task.remote())
            records.append((sent, started - sent, first))

    def run(until: float) -> None:
        threads = [threading.Thread(target=loop, args=(until,)) for _ in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    if warm:
        run(time.time() + warm)
        records.clear()
        print("READY", flush=True)
        sys.stdin.readline()  # go
    run(time.time() + seconds)
    print(json.dumps(records), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--driver", choices=("low", "high"), help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=3.0, help=argparse.SUPPRESS)
    parser.add_argument("--warm", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.driver:
        driver(args.driver, args.address, args.seconds, args.warm)
        return
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False}
    )
    try:
        for _ in range(3):
            cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level=logging.ERROR)
        on_loopback()
        manager = SyncResourceManager.connect(policy=POLICY)
        me = [sys.executable, __file__, "--address", cluster.address]
        pipe: Any = subprocess.PIPE
        high = subprocess.Popen(
            [*me, "--driver", "high", "--warm", "1"], stdin=pipe, stdout=pipe, text=True
        )
        assert high.stdout.readline().strip() == "READY"
        low = subprocess.Popen([*me, "--driver", "low", "--seconds", "8"], stdout=pipe, text=True)
        time.sleep(4)
        joined = time.time()
        high.stdin.write("go\n")
        high.stdin.flush()
        tasks = json.loads(high.communicate()[0].strip().splitlines()[-1])
        low_tasks = json.loads(low.communicate()[0].strip().splitlines()[-1])
        manager.close()
    finally:
        ray.shutdown()
        cluster.shutdown()
    waits = sorted(wait for _, wait, _ in tasks)
    slow = [(sent, wait, first) for sent, wait, first in tasks if wait > 1.0]
    first_waits = sorted(wait for sent, wait, _ in tasks if sent - joined < 0.05)
    low_waits = sorted(wait for sent, wait, _ in low_tasks if sent + wait > joined)
    print(
        f"high driver: {len(waits)} tasks; its first {len(first_waits)} waited "
        f"{first_waits[0]:.3f}-{first_waits[-1]:.3f} s (the handover)"
    )
    print(
        f"high p50 {waits[len(waits) // 2]:.3f} s, p99 {waits[int(0.99 * (len(waits) - 1))]:.3f} s"
    )
    print(
        f"high waits over 1 s: {len(slow)}, of them a new worker's first task: "
        f"{sum(1 for _, _, first in slow if first)}"
    )
    if low_waits:
        print(
            f"low driver, tasks that waited while both ran: {len(low_waits)}, "
            f"p99 {low_waits[int(0.99 * (len(low_waits) - 1))]:.3f} s"
        )


if __name__ == "__main__":
    main()
