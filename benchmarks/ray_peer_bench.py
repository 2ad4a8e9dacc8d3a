"""``@leased`` side by side with Ray's own custom-resource cap and a semaphore actor.

Three ways to let at most CAP tasks through at once, measured in the same Ray instance:

* ``ray_cap``: Ray's own cap. The node(s) carry a custom resource ``pg<CAP>`` of CAP
  units (split evenly over the nodes of the cluster) and every task asks for one
  (``.options(resources={"pg<CAP>": 1})``);
* ``semaphore``: a hand-written async Ray actor holding an ``asyncio.Semaphore(CAP)``;
  every task waits for ``acquire`` when it starts and sends ``release`` when it ends;
* ``leased``: ``@leased(pools={"pg<CAP>": 1})``, with the coordinator deployed with a
  policy that declares the slot pool ``pg<CAP>`` of size CAP (all else the defaults).

Every task of every contender asks Ray for the same logical CPU (``TASK_CPUS``, 1), and
the nodes have 8 logical CPUs in all: one node of 8 (``single``), or a
``ray.cluster_utils.Cluster`` of 1 head + 3 workers of 2 each (``cluster``). Each
configuration runs in its own Ray instance, bound to 127.0.0.1, in its own process (a
child of this script), and measures:

* tasks/s: N no-op tasks, and N 20 ms tasks, at a cap of 4 and of 32, submitted as fast
  as the driver can (``refs = [f.remote() ...]``, then ``ray.get``), N / wall time; in
  interleaved rounds (the contenders' order rotates), the median over rounds. A run
  stops submitting after ``--max-run-s`` (``truncated``), so a slow contender costs a
  bounded time; its rate is then what it submitted over its wall time;
* priority: two more driver processes (this script, ``--driver low|high``) share the
  cap of 4 with closed loops of 20 ms tasks (``--threads`` each): the low one starts
  first and saturates the cap, the high one joins ``--lead`` s later, both stop after
  ``--overlap`` s more (before each round, both drivers run the contender for
  ``ROUND_WARM_S`` and rest ``ROUND_REST_S``, so that each job has its worker
  processes). A task's wait runs from just before ``.remote()`` to the first
  line of its body (``time.time()`` returned by the task). The figure is p99 of the
  high driver's waits over p99 of the low one's, over the tasks that waited while both
  ran: submitted before the stop and started after the high driver began, so a low
  task starved throughout counts with its whole wait (``@leased``:
  ``.options(priority="low"/"high")``; the others have no priority);
* kill: a task holding a cap of 1 sends its worker's pid to a board actor and sleeps;
  a second task is queued behind it; the holder's worker gets SIGKILL; the figure is
  the seconds from the kill until the second task's body starts (``max_retries=0``).
  A semaphore actor never gets its unit back from a dead holder: after
  ``--kill-timeout`` s the figure is "never" (and the unit is released by hand). Ray
  prints "(raylet) A worker died or was killed ..." for each kill: that is expected.

The semaphore's tasks wait for ``acquire`` through the reference's future rather than
a blocking ``ray.get``: Ray hands the CPU of a task blocked in ``ray.get`` to the next
queued task, which would start one worker process per queued task.

The table gives each figure and its ratio to Ray's own cap measured in the same run
(per round, then the median). Targets for ``@leased``: tasks/s >= 1.0x Ray's cap at
every point; p99 wait high/low <= 0.1; a killed holder's capacity back within 1 s.
The exit status is 0 when every configuration ran (targets met or not).

    .venv/bin/python benchmarks/ray_peer_bench.py            # both configurations, ~4 min on 2 cores
    .venv/bin/python benchmarks/ray_peer_bench.py --quick --json /tmp/peer.json   # smoke
"""

from __future__ import annotations

import os

# Before Ray is imported: bind the private Ray to 127.0.0.1, send no usage stats.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

import argparse
import asyncio
import contextlib
import json
import logging
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil
import ray
from rich.console import Console
from rich.table import Table

from anya_resource import SyncResourceManager, leased
from benchtools import machine, on_loopback

HERE = Path(__file__).resolve()
DEFAULT_JSON = HERE.parent / "results" / "ray_peer_bench.json"
NAMESPACE = "ray_peer_bench"

CONTENDERS = ("ray_cap", "semaphore", "leased")
# Throughput only: the floor of any cap kept in the submitting process (a semaphore of
# the driver's, freed when a ref settles), which every completion has to round-trip.
THROUGHPUT_CONTENDERS = (*CONTENDERS, "driver_cap")
LABELS = {
    "ray_cap": "Ray's cap",
    "semaphore": "semaphore actor",
    "leased": "@leased",
    "driver_cap": "driver-side cap",
}
CAPS = (4, 32)
PRIORITY_CAP = 4
KILL_CAP = 1
ROUND_WARM_S = 0.5  # each driver runs a priority round's contender alone this long first
ROUND_REST_S = 0.2  # then rests (short: Ray reaps idle workers after ~1 s)
TASK_S = 0.020
TASK_CPUS = 1  # Ray logical CPUs per task, the same for every contender
KINDS = {"noop": 0.0, "sleep2ms": 0.002, "sleep20ms": TASK_S}
KIND_LABELS = {"noop": "no-op", "sleep2ms": "2 ms", "sleep20ms": "20 ms"}
CONFIGURATIONS = {  # name -> (nodes, logical CPUs per node)
    "single": (1, 8),
    "cluster": (4, 2),
}
OBJECT_STORE_BYTES = 256 * 1024**2  # per node
HOLD_S = 600.0  # how long a holder of the kill point would sleep if nobody killed it
QUEUE_S = 0.5  # time given to the second task to queue behind the holder before the kill
AGENTS_TIMEOUT_S = 90.0
DRIVER_READY_TIMEOUT_S = 180.0
DRIVER_WARM_S = 0.5

TARGET_RATE_MIN = 1.0  # @leased tasks/s over Ray's cap, at every point
TARGET_PRIORITY_MAX = 0.1  # @leased p99 wait high / p99 wait low
TARGET_KILL_MAX_S = 1.0  # seconds until a killed holder's capacity is free


def pool(cap: int) -> str:
    """The Ray custom resource and the @leased pool of a cap: ``pg4`` for 4."""
    return f"pg{cap}"


POLICY: dict[str, Any] = {"pools": {pool(cap): {"size": cap} for cap in (KILL_CAP, *CAPS)}}


def policy(settings: dict[str, Any]) -> dict[str, Any]:
    """The deployed policy: the caps' pools, and the submit-ahead depth if one is set."""
    depth = settings.get("submit_ahead")
    return POLICY if depth is None else {**POLICY, "lease": {"submit_ahead": depth}}


# -- the tasks (the same body for every contender) ------------------------------------------


def work(seconds: float, board: Any = None, tag: str | None = None) -> float:
    """The task's body: when it started; with a board, first post this worker's pid."""
    started = time.time()
    if board is not None:
        board.put.remote(tag, os.getpid())
    if seconds > 0:
        time.sleep(seconds)
    return started


def through_semaphore(sem: Any, seconds: float, board: Any = None, tag: str | None = None) -> float:
    """``work`` between ``acquire`` and ``release`` of a semaphore actor.

    Waiting through the future, not ``ray.get``: a task blocked in ``ray.get`` gives its
    CPU back to Ray, which then starts the next queued task, in a new worker process.
    """
    sem.acquire.remote().future().result()
    try:
        return work(seconds, board, tag)
    finally:
        sem.release.remote()


@ray.remote(num_cpus=0)
class Semaphore:
    """The hand-written cap: an asyncio semaphore in an async actor."""

    def __init__(self, size: int) -> None:
        self.sem = asyncio.Semaphore(size)

    async def acquire(self) -> None:
        await self.sem.acquire()

    async def release(self) -> None:
        self.sem.release()

    async def ready(self) -> bool:
        return True


@ray.remote(num_cpus=0)
class Board:
    """Where a holder task posts its worker's pid for the kill point."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def put(self, key: str, value: Any) -> None:
        self.values[key] = value

    def get(self, key: str) -> Any:
        return self.values.get(key)


class Submitters:
    """``fn(contender, cap, priority)``: a callable submitting ``work`` through that cap."""

    def __init__(self) -> None:
        self.ray_task = ray.remote(num_cpus=TASK_CPUS, max_retries=0)(work)
        self.sem_task = ray.remote(num_cpus=TASK_CPUS, max_retries=0)(through_semaphore)
        self.leased = {
            cap: leased(pools={pool(cap): 1}, num_cpus=TASK_CPUS, max_retries=0)(work)
            for cap in (KILL_CAP, *CAPS)
        }
        self.sems = {
            cap: ray.get_actor(f"sem{cap}", namespace=NAMESPACE) for cap in (KILL_CAP, *CAPS)
        }
        self.gates: dict[int, threading.Semaphore] = {}

    def fn(self, contender: str, cap: int, priority: str | None = None) -> Callable[..., Any]:
        if contender == "ray_cap":
            capped = self.ray_task.options(resources={pool(cap): 1})
            return lambda *args: capped.remote(*args)
        if contender == "semaphore":
            sem = self.sems[cap]
            return lambda *args: self.sem_task.remote(sem, *args)
        if contender == "leased":
            task = self.leased[cap]
            if priority is not None:
                task = task.options(priority=priority)
            return lambda *args: task.remote(*args)
        if contender == "driver_cap":
            gate = self.gates.setdefault(cap, threading.Semaphore(cap))
            return lambda *args: _through_gate(gate, self.ray_task, args)
        raise ValueError(contender)


def _through_gate(gate: threading.Semaphore, task: Any, args: tuple[Any, ...]) -> Any:
    """A cap kept by the driver: wait for room, submit, free the room when the ref settles
    (no scheduler at all: the floor of any cap enforced in the submitting process)."""
    gate.acquire()
    ref = task.remote(*args)
    ref._on_ready(lambda _exc: gate.release())
    return ref


# -- figures ---------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ratio(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or base == 0:
        return None
    return value / base


def median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def rotated(items: Sequence[str], by: int) -> list[str]:
    by %= len(items)
    return [*items[by:], *items[:by]]


# -- one configuration (a child process with its own Ray) ------------------------------------


def node_resources(nodes: int) -> list[dict[str, float]]:
    """Ray's cap: each cap's units split evenly over the nodes; the kill cap on the head."""
    out: list[dict[str, float]] = [{} for _ in range(nodes)]
    for cap in CAPS:
        for index in range(nodes):
            units = cap // nodes + (1 if index < cap % nodes else 0)
            if units:
                out[index][pool(cap)] = units
    out[0][pool(KILL_CAP)] = KILL_CAP
    return out


@contextlib.contextmanager
def ray_instance(name: str) -> Iterator[None]:
    """A private Ray of configuration ``name``, connected as this process's driver."""
    nodes, cpus = CONFIGURATIONS[name]
    resources = node_resources(nodes)
    if nodes == 1:
        ray.init(
            address="local",
            num_cpus=cpus,
            resources=resources[0],
            object_store_memory=OBJECT_STORE_BYTES,
            include_dashboard=False,
            namespace=NAMESPACE,
            logging_level=logging.ERROR,
            log_to_driver=False,
        )
        try:
            yield
        finally:
            ray.shutdown()
        return

    from ray.cluster_utils import Cluster

    logging.getLogger("ray").setLevel(logging.WARNING)
    common: dict[str, Any] = {"num_cpus": cpus, "object_store_memory": OBJECT_STORE_BYTES}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={**common, "resources": resources[0], "include_dashboard": False},
    )
    try:
        for index in range(1, nodes):
            cluster.add_node(**common, resources=resources[index])
        cluster.wait_for_nodes()
        ray.init(
            address=cluster.address,
            namespace=NAMESPACE,
            logging_level=logging.ERROR,
            log_to_driver=False,
        )
        try:
            yield
        finally:
            ray.shutdown()
    finally:
        cluster.shutdown()  # type: ignore[no-untyped-call]


def wait_for_agents(manager: SyncResourceManager, nodes: int) -> None:
    deadline = time.monotonic() + AGENTS_TIMEOUT_S
    while len(manager.check_resource_health().nodes) < nodes:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the node agents did not all report within {AGENTS_TIMEOUT_S} s")
        time.sleep(0.2)


def throughput_run(
    submit: Callable[..., Any], n: int, seconds: float, max_s: float
) -> dict[str, Any]:
    """Submit up to ``n`` tasks as fast as possible, then wait for all: tasks/s."""
    refs: list[Any] = []
    truncated = False
    started = time.perf_counter()
    try:
        for _ in range(n):
            refs.append(submit(seconds))
            if time.perf_counter() - started > max_s and len(refs) < n:
                truncated = True
                break
        ray.get(refs)
    except Exception as exc:
        with contextlib.suppress(Exception):
            ray.get(refs)
        return {"count": 0, "elapsed_s": None, "rate_per_s": None, "error": repr(exc)}
    elapsed = time.perf_counter() - started
    return {
        "count": len(refs),
        "elapsed_s": elapsed,
        "rate_per_s": len(refs) / elapsed,
        "truncated": truncated,
    }


def throughput(
    name: str, subs: Submitters, settings: dict[str, Any], console: Console
) -> dict[str, Any]:
    points = [(kind, cap) for kind in KINDS for cap in CAPS]
    sizes = {
        "noop": settings["n_noop"],
        "sleep2ms": settings.get("n_sleep2", settings["n_noop"]),
        "sleep20ms": settings["n_sleep"],
    }
    # Warm-up (not measured): workers started, clients connected, code shipped.
    console.print(f"[{name}] throughput warm-up ...", style="dim")
    for kind, cap in points:
        for contender in THROUGHPUT_CONTENDERS:
            throughput_run(
                subs.fn(contender, cap), min(16, sizes[kind]), KINDS[kind], settings["max_run_s"]
            )
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        f"{kind}/cap{cap}": {c: [] for c in THROUGHPUT_CONTENDERS} for kind, cap in points
    }
    for round_index in range(settings["rounds"]):
        console.print(
            f"[{name}] throughput round {round_index + 1}/{settings['rounds']} ...", style="dim"
        )
        for point_index, (kind, cap) in enumerate(points):
            for contender in rotated(THROUGHPUT_CONTENDERS, round_index + point_index):
                run = throughput_run(
                    subs.fn(contender, cap), sizes[kind], KINDS[kind], settings["max_run_s"]
                )
                runs[f"{kind}/cap{cap}"][contender].append(run)
    out: dict[str, Any] = {}
    for kind, cap in points:
        key = f"{kind}/cap{cap}"
        by = runs[key]
        entry: dict[str, Any] = {
            "kind": kind,
            "task_ms": KINDS[kind] * 1e3,
            "cap": cap,
            "n": sizes[kind],
            "contenders": {},
            "vs_ray_cap": {},
            "vs_ray_cap_rounds": {},
        }
        for contender in THROUGHPUT_CONTENDERS:
            rates = [run["rate_per_s"] for run in by[contender]]
            entry["contenders"][contender] = {
                "rate_per_s": median(rates),
                "rates_per_s": rates,
                "counts": [run["count"] for run in by[contender]],
                "truncated": any(run.get("truncated") for run in by[contender]),
                "errors": [run["error"] for run in by[contender] if "error" in run],
            }
            if contender != "ray_cap":
                per_round = [
                    ratio(mine["rate_per_s"], base["rate_per_s"])
                    for mine, base in zip(by[contender], by["ray_cap"], strict=True)
                ]
                entry["vs_ray_cap"][contender] = median(per_round)
                entry["vs_ray_cap_rounds"][contender] = per_round
        out[key] = entry
    return out


def kill_once(subs: Submitters, contender: str, board: Any, timeout: float) -> dict[str, Any]:
    """Kill the worker of a task holding the cap of 1; seconds until the next one starts."""
    tag = uuid.uuid4().hex
    holder: dict[str, Any] = {}

    def hold() -> None:
        try:  # @leased blocks here until the lease is granted
            holder["ref"] = subs.fn(contender, KILL_CAP)(HOLD_S, board, tag)
        except Exception as exc:
            holder["error"] = repr(exc)

    threading.Thread(target=hold, daemon=True).start()
    pid = None
    deadline = time.monotonic() + timeout + 30
    while pid is None and time.monotonic() < deadline and "error" not in holder:
        pid = ray.get(board.get.remote(tag))
        if pid is None:
            time.sleep(0.02)
    if pid is None:
        return {"recovery_s": None, "error": holder.get("error", "the holder never started")}
    try:
        name = " ".join(psutil.Process(pid).cmdline())
    except psutil.Error as exc:
        return {"recovery_s": None, "error": f"the holder's worker {pid}: {exc!r}"}
    if pid == os.getpid() or ("ray::" not in name and "default_worker" not in name):
        return {"recovery_s": None, "error": f"pid {pid} is not a Ray worker: {name!r}"}

    follower: dict[str, Any] = {}
    done = threading.Event()

    def follow() -> None:
        try:  # @leased blocks in .remote() until the capacity is granted
            ref = subs.fn(contender, KILL_CAP)(0.0)
            follower["started"] = ray.get(ref)
        except Exception as exc:
            follower["error"] = repr(exc)
        finally:
            done.set()

    threading.Thread(target=follow, daemon=True).start()
    time.sleep(QUEUE_S)
    started_early = done.is_set()
    killed_at = time.time()
    os.kill(pid, signal.SIGKILL)
    done.wait(timeout)
    started = follower.get("started")
    out: dict[str, Any] = {
        "recovery_s": started - killed_at if started is not None else None,
        "started_before_kill": started_early,
        "timeout_s": timeout,
    }
    if "error" in follower:
        out["error"] = follower["error"]
    if not done.is_set():
        if contender == "semaphore":  # the dead holder never releases: do it for it
            subs.sems[KILL_CAP].release.remote()
        out["follower_done_late"] = done.wait(30)
    if "ref" in holder:
        with contextlib.suppress(Exception):
            ray.get(holder["ref"], timeout=10)  # WorkerCrashedError, as it should
    return out


def kill_point(
    name: str, subs: Submitters, settings: dict[str, Any], console: Console
) -> dict[str, Any]:
    board = Board.remote()  # type: ignore[attr-defined]
    timeout = settings["kill_timeout_s"]
    contenders: dict[str, Any] = {}
    for contender in CONTENDERS:
        console.print(f"[{name}] kill point: {LABELS[contender]} ...", style="dim")
        # The semaphore never recovers by design: once is enough to show it.
        repeats = 1 if contender == "semaphore" else settings["kill_repeats"]
        tries = []
        for _ in range(repeats):
            tries.append(kill_once(subs, contender, board, timeout))
            if tries[-1]["recovery_s"] is None:
                break  # its capacity may still be held: another try would measure nothing
        recoveries = [t["recovery_s"] for t in tries]
        contenders[contender] = {
            "recovery_s": median(recoveries) if None not in recoveries else None,
            "worst_s": None if None in recoveries else max(recoveries),
            "recoveries_s": recoveries,
            "recovered": None not in recoveries,
            "tries": tries,
        }
    base = contenders["ray_cap"]["recovery_s"]
    return {
        "cap": KILL_CAP,
        "timeout_s": timeout,
        "contenders": contenders,
        "vs_ray_cap": {
            c: ratio(contenders[c]["recovery_s"], base) for c in CONTENDERS if c != "ray_cap"
        },
    }


class Driver:
    """A second driver process (this script with ``--driver ROLE``), talked to by lines."""

    def __init__(self, role: str, address: str) -> None:
        self.role = role
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE), "--driver", role, "--address", address],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            env=env,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def send(self, order: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(order) + "\n")
        self.proc.stdin.flush()

    def expect(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"driver {self.role}: no {prefix!r} in {timeout:g} s") from None
            if line is None:
                raise RuntimeError(f"driver {self.role} exited with {self.proc.wait()}")
            if line.startswith(prefix):
                return line[len(prefix) :]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.send({"quit": True})
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def priority_point(name: str, settings: dict[str, Any], console: Console) -> dict[str, Any]:
    console.print(f"[{name}] priority point: starting two drivers ...", style="dim")
    address = ray.get_runtime_context().gcs_address
    drivers = {role: Driver(role, address) for role in ("low", "high")}
    lead, overlap = settings["lead_s"], settings["overlap_s"]
    waits: dict[str, dict[str, list[float]]] = {c: {"low": [], "high": []} for c in CONTENDERS}
    rounds: dict[str, list[float | None]] = {c: [] for c in CONTENDERS}
    errors: dict[str, list[str]] = {c: [] for c in CONTENDERS}
    try:
        for driver in drivers.values():
            driver.expect("READY", DRIVER_READY_TIMEOUT_S)
        for round_index in range(settings["priority_rounds"]):
            for contender in rotated(CONTENDERS, round_index):
                console.print(
                    f"[{name}] priority round {round_index + 1}/{settings['priority_rounds']}: "
                    f"{LABELS[contender]} ...",
                    style="dim",
                )
                # Both drivers first run this contender alone for a moment, so that
                # each job has its worker processes (Ray starts them per job and
                # reaps idle ones within seconds when a node has more workers than
                # CPUs; starting one takes ~1 s here, which is no scheduling wait).
                warm_at = time.time() + 0.1
                for driver in drivers.values():
                    driver.send(
                        {
                            "contender": contender,
                            "threads": settings["threads"],
                            "start": warm_at,
                            "stop": warm_at + ROUND_WARM_S,
                        }
                    )
                for driver in drivers.values():
                    driver.expect("RESULT ", ROUND_WARM_S + 300)
                time.sleep(ROUND_REST_S)
                low_at = time.time() + 0.3
                high_at = low_at + lead
                stop_at = high_at + overlap
                common = {"contender": contender, "threads": settings["threads"], "stop": stop_at}
                drivers["low"].send({**common, "start": low_at})
                drivers["high"].send({**common, "start": high_at})
                got = {
                    role: json.loads(driver.expect("RESULT ", stop_at - time.time() + 300))
                    for role, driver in drivers.items()
                }
                this_round = {}
                for role, records in got.items():
                    # The tasks that waited while both drivers ran: submitted before the
                    # end, started after the high driver began (a low task starved all
                    # along counts too, with its whole wait).
                    both = [
                        start - t0
                        for t0, start in records["tasks"]
                        if t0 < stop_at and start >= high_at
                    ]
                    waits[contender][role] += both
                    this_round[role] = percentile(both, 0.99)
                    errors[contender] += records["errors"]
                rounds[contender].append(ratio(this_round["high"], this_round["low"]))
    finally:
        for driver in drivers.values():
            driver.close()
    contenders: dict[str, Any] = {}
    for contender in CONTENDERS:
        high, low = waits[contender]["high"], waits[contender]["low"]
        p99_high, p99_low = percentile(high, 0.99), percentile(low, 0.99)
        p50_high, p50_low = percentile(high, 0.5), percentile(low, 0.5)
        contenders[contender] = {
            "high_over_low_p99": ratio(p99_high, p99_low),
            "rounds_high_over_low_p99": rounds[contender],
            "high_p99_ms": None if p99_high is None else p99_high * 1e3,
            "low_p99_ms": None if p99_low is None else p99_low * 1e3,
            "high_p50_ms": None if p50_high is None else p50_high * 1e3,
            "low_p50_ms": None if p50_low is None else p50_low * 1e3,
            "high_count": len(high),
            "low_count": len(low),
            "errors": errors[contender][:5],
        }
    base = contenders["ray_cap"]["high_over_low_p99"]
    return {
        "cap": PRIORITY_CAP,
        "task_ms": TASK_S * 1e3,
        "threads_per_driver": settings["threads"],
        "lead_s": lead,
        "overlap_s": overlap,
        "rounds": settings["priority_rounds"],
        "contenders": contenders,
        "vs_ray_cap": {
            c: ratio(contenders[c]["high_over_low_p99"], base) for c in CONTENDERS if c != "ray_cap"
        },
    }


def leases_left(manager: SyncResourceManager) -> int:
    leases = manager.snapshot()["leases"]
    return int(leases) if isinstance(leases, int) else len(leases)


def run_configuration(name: str, settings: dict[str, Any], console: Console) -> dict[str, Any]:
    nodes, cpus = CONFIGURATIONS[name]
    began = time.perf_counter()
    result: dict[str, Any] = {"nodes": nodes, "cpus_per_node": cpus}
    with ray_instance(name):
        result["addresses"] = on_loopback()
        result["node_resources"] = node_resources(nodes)
        setup = {"ray_s": time.perf_counter() - began}
        t0 = time.perf_counter()
        manager = SyncResourceManager.connect(policy=policy(settings))
        try:
            wait_for_agents(manager, nodes)
            setup["deploy_s"] = time.perf_counter() - t0
            sems = [
                Semaphore.options(name=f"sem{cap}", namespace=NAMESPACE).remote(cap)  # type: ignore[attr-defined]
                for cap in (KILL_CAP, *CAPS)
            ]
            ray.get([sem.ready.remote() for sem in sems])
            subs = Submitters()
            console.print(
                f"[{name}] {nodes} node(s) x {cpus} CPUs on {result['addresses']}, "
                f"ready in {time.perf_counter() - began:.1f} s",
                style="dim",
            )
            result["setup"] = setup
            result["throughput"] = throughput(name, subs, settings, console)
            # Before the priority point, while this driver's workers are still warm.
            result["kill"] = kill_point(name, subs, settings, console)
            result["priority"] = priority_point(name, settings, console)
            time.sleep(1.0)  # releases sent in the background arrive
            result["leases_left"] = leases_left(manager)
        finally:
            with contextlib.suppress(Exception):
                manager.close()
    result["wall_s"] = time.perf_counter() - began
    return result


# -- a second driver of the priority point ---------------------------------------------------


def closed_loops(
    submit: Callable[..., Any], threads: int, start: float, stop: float
) -> dict[str, Any]:
    """``threads`` loops, each with one 20 ms task at a time: (submitted at, started at)."""
    tasks: list[tuple[float, float]] = []
    errors: list[str] = []
    lock = threading.Lock()

    def loop() -> None:
        time.sleep(max(0.0, start - time.time()))
        while time.time() < stop:
            t0 = time.time()
            try:
                started = ray.get(submit(TASK_S))
            except Exception as exc:
                with lock:
                    errors.append(repr(exc))
                continue
            with lock:
                tasks.append((t0, started))

    workers = [threading.Thread(target=loop, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return {"tasks": tasks, "errors": errors[:5]}


def driver_main(role: str, address: str) -> int:
    from anya_resource.actors import deploy

    with contextlib.suppress(Exception):  # as anya-resource's own clients do
        deploy.use_token_if_at_hand()
    ray.init(address=address, namespace=NAMESPACE, logging_level=logging.ERROR, log_to_driver=False)
    try:
        subs = Submitters()
        fns = {c: subs.fn(c, PRIORITY_CAP, role if c == "leased" else None) for c in CONTENDERS}
        threads = 8
        for fn in fns.values():  # warm: this job's workers, the @leased client
            now = time.time()
            closed_loops(fn, threads, now, now + DRIVER_WARM_S)
        print("READY", flush=True)
        for line in sys.stdin:
            order = json.loads(line)
            if order.get("quit"):
                break
            result = closed_loops(
                fns[order["contender"]], order["threads"], order["start"], order["stop"]
            )
            print("RESULT " + json.dumps(result), flush=True)
    finally:
        ray.shutdown()
    return 0


# -- the whole run ---------------------------------------------------------------------------


def run_child(name: str, settings: dict[str, Any], console: Console) -> dict[str, Any]:
    """Run one configuration in a child process (its own Ray, its own @leased client)."""
    with tempfile.TemporaryDirectory(prefix="ray_peer_bench_") as tmp:
        out = Path(tmp) / f"{name}.json"
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        command = [sys.executable, str(HERE), "--run-config", name, "--out", str(out)]
        command += ["--settings", json.dumps(settings)]
        child = subprocess.Popen(command, env=env)
        try:
            code = child.wait(timeout=settings["config_timeout_s"])
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            return {"error": f"timed out after {settings['config_timeout_s']} s"}
        if code != 0 or not out.exists():
            return {"error": f"the configuration's process exited with {code}"}
        return dict(json.loads(out.read_text()))


def targets(configs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    rates: dict[str, float | None] = {}
    priority: dict[str, float | None] = {}
    kill: dict[str, float | None] = {}
    for name, config in configs.items():
        if "error" in config:
            rates[name] = priority[name] = kill[name] = None
            continue
        for key, point in config["throughput"].items():
            rates[f"{name} {key}"] = point["vs_ray_cap"]["leased"]
        priority[name] = config["priority"]["contenders"]["leased"]["high_over_low_p99"]
        kill[name] = config["kill"]["contenders"]["leased"]["worst_s"]

    def verdict(values: dict[str, float | None], ok: Callable[[float], bool]) -> bool:
        return bool(values) and all(v is not None and ok(v) for v in values.values())

    present = [v for v in rates.values() if v is not None]
    slow = [v for v in priority.values() if v is not None]
    late = [v for v in kill.values() if v is not None]
    return {
        "leased_rate_vs_ray_cap": {
            "min": TARGET_RATE_MIN,
            "worst": min(present) if present else None,
            "points": rates,
            "met": verdict(rates, lambda v: v >= TARGET_RATE_MIN),
        },
        "leased_priority_high_over_low_p99": {
            "max": TARGET_PRIORITY_MAX,
            "worst": max(slow) if slow else None,
            "configurations": priority,
            "met": verdict(priority, lambda v: v <= TARGET_PRIORITY_MAX),
        },
        "leased_kill_recovery_s": {
            "max": TARGET_KILL_MAX_S,
            "worst": max(late) if late else None,
            "configurations": kill,
            "met": verdict(kill, lambda v: v <= TARGET_KILL_MAX_S),
        },
    }


# -- output ----------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _yes(met: bool) -> str:
    return "[green]yes[/]" if met else "[red]no[/]"


def render(result: dict[str, Any], console: Console) -> None:
    table = Table(title="@leased against Ray's own cap and a semaphore actor (x Ray: / Ray's cap)")
    for column in ("config", "figure"):
        table.add_column(column)
    for column in ("Ray's cap", "semaphore", "x Ray", "@leased", "x Ray", "target", "met"):
        table.add_column(column, justify="right")
    for name, config in result["configurations"].items():
        nodes, cpus = CONFIGURATIONS[name]
        where = f"{name} ({nodes}x{cpus} CPU)"
        if "error" in config:
            table.add_row(where, f"[red]{config['error']}[/]", *[""] * 7)
            continue
        for point in config["throughput"].values():
            by, vs = point["contenders"], point["vs_ray_cap"]
            cut = "*" if by["leased"]["truncated"] else ""
            leased_vs = vs["leased"]
            table.add_row(
                where,
                f"tasks/s, {KIND_LABELS[point['kind']]}, cap {point['cap']}",
                _rate(by["ray_cap"]["rate_per_s"]),
                _rate(by["semaphore"]["rate_per_s"]),
                _num(vs["semaphore"]),
                _rate(by["leased"]["rate_per_s"]) + cut,
                _num(leased_vs),
                f">= {TARGET_RATE_MIN:g}x",
                _yes(leased_vs is not None and leased_vs >= TARGET_RATE_MIN),
            )
        prio = config["priority"]
        by, vs = prio["contenders"], prio["vs_ray_cap"]
        mine = by["leased"]["high_over_low_p99"]
        table.add_row(
            where,
            f"p99 wait high/low, 2 drivers, cap {prio['cap']}",
            _num(by["ray_cap"]["high_over_low_p99"]),
            _num(by["semaphore"]["high_over_low_p99"]),
            _num(vs["semaphore"]),
            _num(mine),
            _num(vs["leased"]),
            f"<= {TARGET_PRIORITY_MAX:g}",
            _yes(mine is not None and mine <= TARGET_PRIORITY_MAX),
        )
        kill = config["kill"]
        by, vs = kill["contenders"], kill["vs_ray_cap"]

        def seconds(row: dict[str, Any], timeout: float = kill["timeout_s"]) -> str:
            value = row["recovery_s"]
            return f"never (>{timeout:g})" if value is None else f"{value:.3f}"

        worst = by["leased"]["worst_s"]
        table.add_row(
            where,
            "s until a killed holder's cap is free",
            seconds(by["ray_cap"]),
            seconds(by["semaphore"]),
            _num(vs["semaphore"]),
            seconds(by["leased"]),
            _num(vs["leased"]),
            f"<= {TARGET_KILL_MAX_S:g} s",
            _yes(worst is not None and worst <= TARGET_KILL_MAX_S),
        )
    console.print(table)
    for name, config in result["configurations"].items():
        if "error" in config:
            continue
        floors = [
            f"{KIND_LABELS[p['kind']]} cap {p['cap']}: {_num(p['vs_ray_cap'].get('driver_cap'))}"
            for p in config["throughput"].values()
        ]
        console.print(
            f"{name}: a driver-side cap (no scheduler; the floor of any cap kept in the "
            "submitting process), x Ray's cap: " + ", ".join(floors)
        )
        detail = config["priority"]["contenders"]
        console.print(
            f"{name}: p99 wait high / low (ms): "
            + ", ".join(
                f"{LABELS[c]} {_num(detail[c]['high_p99_ms'], 0)} / {_num(detail[c]['low_p99_ms'], 0)}"
                for c in CONTENDERS
            )
            + f"; leases left {config['leases_left']}; {config['wall_s']:.0f} s",
            style="dim",
        )
    goals = result["targets"]
    console.print(
        "targets for @leased: tasks/s >= Ray's cap everywhere "
        f"(worst {_num(goals['leased_rate_vs_ray_cap']['worst'])}x): "
        f"{_yes(goals['leased_rate_vs_ray_cap']['met'])}; p99 high/low <= {TARGET_PRIORITY_MAX:g} "
        f"(worst {_num(goals['leased_priority_high_over_low_p99']['worst'])}): "
        f"{_yes(goals['leased_priority_high_over_low_p99']['met'])}; killed holder's cap back "
        f"within {TARGET_KILL_MAX_S:g} s (worst {_num(goals['leased_kill_recovery_s']['worst'], 3)}): "
        f"{_yes(goals['leased_kill_recovery_s']['met'])}"
    )
    m = result["machine"]
    console.print(
        f"* stopped submitting after {result['config']['max_run_s']:g} s. nproc {m['nproc']}, "
        f"python {m['python']}, ray {m['ray']}, load {m['loadavg_start'][0]:.1f} -> "
        f"{m['loadavg_end'][0]:.1f}, {m['wall_s']:.0f} s in all",
        style="dim",
    )


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smallest settings (smoke test)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (3; quick 1)")
    parser.add_argument("--n-noop", type=int, default=None, help="no-op tasks per run (300)")
    parser.add_argument("--n-sleep2", type=int, default=None, help="2 ms tasks per run (300)")
    parser.add_argument("--n-sleep", type=int, default=None, help="20 ms tasks per run (150)")
    parser.add_argument(
        "--submit-ahead",
        type=int,
        default=None,
        help="@leased tasks a lease carries at once (the policy's lease.submit_ahead)",
    )
    parser.add_argument(
        "--max-run-s", type=float, default=None, help="stop submitting after this (8 s)"
    )
    parser.add_argument("--threads", type=int, default=8, help="closed loops per priority driver")
    parser.add_argument("--lead", type=float, default=None, help="s the low driver runs alone")
    parser.add_argument("--overlap", type=float, default=None, help="s both drivers run")
    parser.add_argument("--kill-timeout", type=float, default=None, help="s to wait (10; quick 5)")
    parser.add_argument(
        "--configs",
        default=",".join(CONFIGURATIONS),
        help="configurations to run, comma-separated (single,cluster)",
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="write all figures here")
    # Internal: one configuration in a child process, and the priority point's drivers.
    parser.add_argument("--run-config", choices=list(CONFIGURATIONS), help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--driver", choices=("low", "high"), help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick = args.quick

    def pick(value: Any, full: Any, small: Any) -> Any:
        return value if value is not None else (small if quick else full)

    args.settings_dict = (
        json.loads(args.settings)
        if args.settings
        else {
            "quick": quick,
            "rounds": pick(args.rounds, 3, 1),
            "priority_rounds": pick(args.rounds, 2, 1),
            "kill_repeats": 1 if quick else 2,
            "n_noop": pick(args.n_noop, 300, 16),
            "n_sleep2": pick(args.n_sleep2, 300, 16),
            "n_sleep": pick(args.n_sleep, 150, 16),
            "submit_ahead": args.submit_ahead,
            "max_run_s": pick(args.max_run_s, 8.0, 5.0),
            "threads": args.threads,
            "lead_s": pick(args.lead, 1.0, 0.5),
            "overlap_s": pick(args.overlap, 2.0, 1.0),
            "kill_timeout_s": pick(args.kill_timeout, 10.0, 5.0),
            "config_timeout_s": 600.0 if quick else 900.0,
        }
    )
    args.config_names = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = set(args.config_names) - set(CONFIGURATIONS)
    if unknown or not args.config_names:
        parser.error(f"--configs: choose from {', '.join(CONFIGURATIONS)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if args.driver:
        return driver_main(args.driver, args.address)
    # Wide enough for the table when the output is a pipe or a file.
    console = Console(width=None if sys.stdout.isatty() else 160)
    settings = args.settings_dict
    if args.run_config:
        figures = run_configuration(args.run_config, settings, console)
        args.out.write_text(json.dumps(figures) + "\n")
        return 0

    began = time.perf_counter()
    info = machine()
    configs = {name: run_child(name, settings, console) for name in args.config_names}
    info["loadavg_end"] = list(os.getloadavg())
    info["wall_s"] = time.perf_counter() - began
    result: dict[str, Any] = {
        "machine": info,
        "config": {
            **settings,
            "contenders": {c: LABELS[c] for c in CONTENDERS},
            "caps": list(CAPS),
            "priority_cap": PRIORITY_CAP,
            "kill_cap": KILL_CAP,
            "task_ms": TASK_S * 1e3,
            "task_num_cpus": TASK_CPUS,
            "configurations": {
                name: {"nodes": nodes, "cpus_per_node": cpus}
                for name, (nodes, cpus) in CONFIGURATIONS.items()
                if name in configs
            },
            "policy": policy(settings),
        },
        "configurations": configs,
        "targets": targets(configs),
    }
    render(result, console)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {args.json}", style="dim")
    return 1 if any("error" in config for config in configs.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
