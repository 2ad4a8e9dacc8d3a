"""Cost per lease: acquire+release cycles through Ray, against raw Ray actor round trips.

One run starts its own private Ray on loopback (4 logical CPUs), deploys the
coordinator with the default policy, and measures, in interleaved rounds so that
each figure and its baseline see the same machine load:

* ``raw_async``: a no-op ``async def`` method on a ``num_cpus=0`` async actor, awaited
  one call at a time from an asyncio driver: the floor for "one Ray call";
* ``raw_sync``: the same no-op through blocking ``ray.get`` (for reference);
* ``lease_seq``: ``async with manager.acquire({"cpu": 0.01}): pass``, one at a time;
  leaving the block releases without waiting (``release_soon``);
* ``warm_seq``: the same with ``warm=True``: the lease stays with the manager between
  cycles, so a cycle takes no Ray call (target: ``warm_seq / raw_async >= 30``);
* ``lease_tasks``: the same from 8 asyncio tasks sharing one ``ResourceManager``
  (one process, one client), with ``raw_tasks`` (8 tasks, no-op calls) as its raw twin;
* ``lease_actors``: the same from 8 Ray actors, each with its own ``ResourceManager``
  (8 processes, 8 clients), with ``raw_actors`` as its raw twin (``--actors N``;
  ``--quick`` uses 4 actors so that Ray's pre-started workers are enough).

A lease phase's time includes waiting, after its last cycle, for every release
still in flight, so releases that were sent but not yet handled are paid for.
Latency is that of the acquire alone (entering ``async with``), or of one raw call.
Ratios are the lease rate over the sequential raw rate (``raw_async``) of the same
round, and for the concurrent phases also over their raw twin; the figure reported
is the median over rounds. The issue's target: ``lease_seq / raw_async >= 0.5``.
Each phase also reports the CPU time of every process of this Ray instance per
operation, which a machine shared with other work disturbs much less than rates.

    .venv/bin/python benchmarks/lease_bench.py --json benchmarks/results/lease_bench.json
    .venv/bin/python benchmarks/lease_bench.py --quick
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
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import psutil
import ray
from rich.console import Console
from rich.table import Table

from anya_resource import ResourceManager
from anya_resource.actors import deploy
from benchtools import machine, on_loopback

REQUEST = {"cpu": 0.01}
CONCURRENCY = 8
TARGET_SEQUENTIAL_RATIO = 0.5
TARGET_WARM_RATIO = 30.0  # issue 12: a warm acquire+release against the raw round trip
NUM_CPUS = 4
# Extra time before a synchronised start of the client actors, so all begin together.
START_MARGIN_S = 0.3

Loop = Callable[[float, list[float]], Awaitable[int]]


# -- the measured loops (shared by the driver and the client actors) -----------------------


async def raw_loop(echo: Any, until: float, latencies: list[float]) -> int:
    """Sequential no-op round trips until ``until`` (wall clock); returns the count."""
    count = 0
    clock = time.perf_counter
    while time.time() < until:
        started = clock()
        await echo.noop.remote()
        latencies.append(clock() - started)
        count += 1
    return count


async def lease_loop(manager: ResourceManager, until: float, latencies: list[float]) -> int:
    """Sequential acquire+release cycles until ``until``; latency is the acquire's."""
    count = 0
    clock = time.perf_counter
    while time.time() < until:
        started = clock()
        async with manager.acquire(REQUEST):
            latencies.append(clock() - started)
        count += 1
    return count


async def warm_loop(manager: ResourceManager, until: float, latencies: list[float]) -> int:
    """Sequential acquire+release of a warm lease (``warm=True``): after the first, no
    Ray call at all, as long as nobody else waits for what it holds."""
    count = 0
    clock = time.perf_counter
    while time.time() < until:
        started = clock()
        async with manager.acquire(REQUEST, warm=True):
            latencies.append(clock() - started)
        count += 1
    return count


async def drain(manager: ResourceManager) -> None:
    """Wait for every release still on its way (the client sends them in the background)."""
    while pending := list(getattr(manager, "_pending_releases", ())):
        await asyncio.gather(*pending, return_exceptions=True)


class RayCpu:
    """CPU time used by this Ray instance: the driver, GCS, raylet and every worker.

    On a machine shared with other work, CPU per operation moves much less than
    operations per second, so each phase reports both. Only this run's processes
    count (found through the session directory), not another Ray on the machine.
    """

    def __init__(self) -> None:
        node: Any = ray._private.worker._global_node
        self.session: str = node.get_session_dir_path()

    def start(self) -> list[tuple[psutil.Process, float]]:
        return [(p, self._cpu(p)) for p in self._processes()]

    def since(self, start: list[tuple[psutil.Process, float]]) -> float:
        return sum(max(0.0, self._cpu(p) - before) for p, before in start)

    def _processes(self) -> list[psutil.Process]:
        found = [psutil.Process()]
        for process in psutil.process_iter(["name", "cmdline"]):
            if process.info["name"] not in ("raylet", "gcs_server"):
                continue
            if self.session not in " ".join(process.info["cmdline"] or ()):
                continue
            found.append(process)
            with contextlib.suppress(psutil.Error):
                found.extend(process.children(recursive=True))
        return found

    @staticmethod
    def _cpu(process: psutil.Process) -> float:
        try:
            times = process.cpu_times()
        except psutil.Error:
            return 0.0
        return float(times.user + times.system)


async def timed(
    loops: Sequence[Callable[[float, list[float]], Awaitable[int]]],
    seconds: float,
    warmup: float,
    manager: ResourceManager | None = None,
    start_at: float | None = None,
    cpu: RayCpu | None = None,
) -> dict[str, Any]:
    """Run ``loops`` concurrently: a warm-up, then ``seconds`` measured (plus the drain)."""
    ignored: list[float] = []
    if warmup > 0:
        warm_until = time.time() + warmup
        await asyncio.gather(*(loop(warm_until, ignored) for loop in loops))
        if manager is not None:
            await drain(manager)
    if start_at is not None:
        await asyncio.sleep(max(0.0, start_at - time.time()))
    latencies: list[list[float]] = [[] for _ in loops]
    cpu_start = cpu.start() if cpu is not None else None
    started = time.perf_counter()
    until = time.time() + seconds
    counts = await asyncio.gather(
        *(loop(until, lat) for loop, lat in zip(loops, latencies, strict=True))
    )
    if manager is not None:
        await drain(manager)
    elapsed = time.perf_counter() - started
    return {
        "count": sum(counts),
        "elapsed": elapsed,
        "latencies": [x for lat in latencies for x in lat],
        "cpu_s": cpu.since(cpu_start) if cpu is not None and cpu_start is not None else None,
    }


# -- the actors ------------------------------------------------------------------------------


@ray.remote(num_cpus=0)
class Echo:
    """The raw baseline: an async actor like the coordinator, whose method does nothing."""

    async def noop(self) -> None:
        return None


@ray.remote(num_cpus=0)
class LeaseClient:
    """A separate process with its own ResourceManager, for the 8-actor phases."""

    def __init__(self, echo: Any) -> None:
        self.echo = echo
        self.manager: ResourceManager | None = None

    async def setup(self) -> int:
        self.manager = await ResourceManager.new()
        return os.getpid()

    async def run(
        self, kind: str, seconds: float, warmup: float, start_at: float
    ) -> dict[str, Any]:
        manager = self.manager
        assert manager is not None
        if kind == "raw":

            async def loop(until: float, lat: list[float]) -> int:
                return await raw_loop(self.echo, until, lat)

            return await timed([loop], seconds, warmup, start_at=start_at)

        async def leases(until: float, lat: list[float]) -> int:
            return await lease_loop(manager, until, lat)

        return await timed([leases], seconds, warmup, manager=manager, start_at=start_at)

    async def close(self) -> None:
        if self.manager is not None:
            await self.manager.close()


# -- the phases ------------------------------------------------------------------------------


def summarise(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Rates of every round, the median rate, and latency percentiles over all rounds."""
    rates = [run["count"] / run["elapsed"] for run in runs]
    latencies = sorted(x for run in runs for x in run["latencies"])
    cpu = [run["cpu_s"] / run["count"] * 1e3 for run in runs if run.get("cpu_s") is not None]
    return {
        "phase": name,
        "rate_per_s": statistics.median(rates),
        "rates_per_s": rates,
        "count": sum(run["count"] for run in runs),
        "p50_ms": percentile(latencies, 0.50) * 1e3,
        "p99_ms": percentile(latencies, 0.99) * 1e3,
        "mean_ms": (statistics.fmean(latencies) * 1e3) if latencies else 0.0,
        # CPU of every process of this Ray instance per operation (median over rounds).
        "cpu_ms_per_op": statistics.median(cpu) if cpu else None,
        "cpu_ms_per_op_rounds": cpu,
    }


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def raw_sync(echo: Any, seconds: float, warmup: float, cpu: RayCpu) -> dict[str, Any]:
    """Blocking ``ray.get`` round trips (blocks the driver's loop, which is idle meanwhile)."""
    for phase_seconds, record in ((warmup, False), (seconds, True)):
        latencies: list[float] = []
        count = 0
        cpu_start = cpu.start()
        started = time.perf_counter()
        until = time.time() + phase_seconds
        while time.time() < until:
            t0 = time.perf_counter()
            ray.get(echo.noop.remote())
            latencies.append(time.perf_counter() - t0)
            count += 1
        if record:
            return {
                "count": count,
                "elapsed": time.perf_counter() - started,
                "latencies": latencies,
                "cpu_s": cpu.since(cpu_start),
            }
    raise AssertionError("unreachable")


async def in_actors(
    clients: list[Any], kind: str, seconds: float, warmup: float, cpu: RayCpu
) -> dict[str, Any]:
    """Every client actor runs ``kind`` at once; counts add up, elapsed is the slowest."""
    start_at = time.time() + warmup + START_MARGIN_S
    calls = [client.run.remote(kind, seconds, warmup, start_at) for client in clients]
    await asyncio.sleep(max(0.0, start_at - time.time()))
    cpu_start = cpu.start()
    results = await asyncio.gather(*calls)
    return {
        "count": sum(r["count"] for r in results),
        "elapsed": max(r["elapsed"] for r in results),
        "latencies": [x for r in results for x in r["latencies"]],
        "cpu_s": cpu.since(cpu_start),
    }


async def one_round(
    echo: Any,
    manager: ResourceManager,
    clients: list[Any],
    seconds: float,
    warmup: float,
    cpu: RayCpu,
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}

    async def raw(until: float, lat: list[float]) -> int:
        return await raw_loop(echo, until, lat)

    async def leases(until: float, lat: list[float]) -> int:
        return await lease_loop(manager, until, lat)

    async def warm(until: float, lat: list[float]) -> int:
        return await warm_loop(manager, until, lat)

    many = CONCURRENCY
    out["raw_async"] = await timed([raw], seconds, warmup, cpu=cpu)
    out["raw_sync"] = raw_sync(echo, seconds, warmup, cpu)
    out["lease_seq"] = await timed([leases], seconds, warmup, manager=manager, cpu=cpu)
    out["warm_seq"] = await timed([warm], seconds, warmup, manager=manager, cpu=cpu)
    out["raw_tasks"] = await timed([raw] * many, seconds, warmup, cpu=cpu)
    out["lease_tasks"] = await timed([leases] * many, seconds, warmup, manager=manager, cpu=cpu)
    if clients:
        out["raw_actors"] = await in_actors(clients, "raw", seconds, warmup, cpu)
        out["lease_actors"] = await in_actors(clients, "lease", seconds, warmup, cpu)
    return out


PHASES = (  # name, what it is ({n}: client actors), raw twin
    ("raw_async", "no-op call, await, 1 at a time", None),
    ("raw_sync", "no-op call, ray.get, 1 at a time", None),
    ("lease_seq", "acquire+release, 1 at a time", None),
    ("warm_seq", "warm acquire+release, 1 at a time", None),
    ("raw_tasks", f"no-op call, {CONCURRENCY} asyncio tasks", None),
    ("lease_tasks", f"acquire+release, {CONCURRENCY} tasks, 1 manager", "raw_tasks"),
    ("raw_actors", "no-op call, {n} actors", None),
    ("lease_actors", "acquire+release, {n} actors, {n} managers", "raw_actors"),
)


def ratios(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per round, lease rate / raw rate; the median over rounds and the spread."""

    def rate(run: dict[str, Any]) -> float:
        return float(run["count"] / run["elapsed"])

    out: dict[str, dict[str, Any]] = {}
    for name, _, twin in PHASES:
        if not name.startswith(("lease_", "warm_")) or name not in rounds[0]:
            continue
        vs_raw = [rate(r[name]) / rate(r["raw_async"]) for r in rounds]
        entry: dict[str, Any] = {"vs_raw_async": statistics.median(vs_raw), "rounds": vs_raw}
        # How many raw round trips' worth of CPU one cycle costs: steadier than rates
        # on a shared machine, since other work slows both but adds CPU to neither.
        cpu = [
            r[name]["cpu_s"]
            / r[name]["count"]
            / (r["raw_async"]["cpu_s"] / r["raw_async"]["count"])
            for r in rounds
            if r[name].get("cpu_s") and r["raw_async"].get("cpu_s")
        ]
        entry["cpu_in_raw_calls"] = statistics.median(cpu) if cpu else None
        entry["rounds_cpu_in_raw_calls"] = cpu
        if twin is not None:
            vs_twin = [rate(r[name]) / rate(r[twin]) for r in rounds]
            entry["vs_" + twin] = statistics.median(vs_twin)
            entry["rounds_vs_" + twin] = vs_twin
        out[name] = entry
    return out


# -- setting up ------------------------------------------------------------------------------


def start_ray() -> None:
    ray.init(
        address="local",
        include_dashboard=False,
        num_cpus=NUM_CPUS,
        logging_level=logging.ERROR,
        log_to_driver=False,
    )
    on_loopback()


async def agents_ready(manager: ResourceManager, timeout: float = 30.0) -> None:
    """Wait until the node agent reports, so its start-up does not land in a phase."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = await manager.check_resource_health()
        if health.nodes:
            return
        await asyncio.sleep(0.1)


async def leases_left(manager: ResourceManager) -> int:
    snap = await manager.snapshot()
    return int(snap["leases"]) if isinstance(snap["leases"], int) else len(snap["leases"])


async def bench(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    info = machine()
    began = time.perf_counter()
    start_ray()
    setup: dict[str, float] = {"ray_init_s": time.perf_counter() - began}
    t0 = time.perf_counter()
    manager = await ResourceManager.new()
    await agents_ready(manager)
    setup["deploy_s"] = time.perf_counter() - t0
    echo = Echo.remote()  # type: ignore[attr-defined]
    await echo.noop.remote()
    clients: list[Any] = []
    if not args.no_actors:
        t0 = time.perf_counter()
        clients = [LeaseClient.remote(echo) for _ in range(args.actors)]  # type: ignore[attr-defined]
        await asyncio.gather(*(c.setup.remote() for c in clients))
        setup["client_actors_s"] = time.perf_counter() - t0

    cpu = RayCpu()
    rounds = []
    for index in range(args.rounds):
        console.print(f"round {index + 1}/{args.rounds} ...", style="dim")
        rounds.append(await one_round(echo, manager, clients, args.seconds, args.warmup, cpu))

    await asyncio.gather(*(c.close.remote() for c in clients))
    await manager.close()  # gives back its warm lease too
    probe = await ResourceManager.new()
    left = await leases_left(probe)
    await probe.close()
    info["loadavg_end"] = list(os.getloadavg())
    phases = {name: summarise(name, [r[name] for r in rounds]) for name in rounds[0]}
    result: dict[str, Any] = {
        "machine": info,
        "config": {
            "seconds": args.seconds,
            "warmup": args.warmup,
            "rounds": args.rounds,
            "quick": args.quick,
            "tasks": CONCURRENCY,
            "actors": len(clients),
            "request": REQUEST,
            "num_cpus": NUM_CPUS,
            "concurrent_clients": f"{CONCURRENCY} asyncio tasks sharing one ResourceManager "
            f"(lease_tasks) and {len(clients)} Ray actors with one ResourceManager each "
            "(lease_actors)",
        },
        "setup": setup,
        "phases": phases,
        "ratios": ratios(rounds),
        "target": {"sequential_ratio_min": TARGET_SEQUENTIAL_RATIO},
        "leases_left": left,
    }
    seq = result["ratios"]["lease_seq"]["vs_raw_async"]
    result["target"].update(sequential_ratio=seq, met=seq >= TARGET_SEQUENTIAL_RATIO)
    warm = result["ratios"]["warm_seq"]["vs_raw_async"]
    result["target"].update(
        warm_ratio_min=TARGET_WARM_RATIO, warm_ratio=warm, warm_met=warm >= TARGET_WARM_RATIO
    )
    return result


# -- output ----------------------------------------------------------------------------------


def render(result: dict[str, Any], console: Console) -> None:
    phases = result["phases"]
    ratio = result["ratios"]
    actors = result["config"]["actors"]
    table = Table(title="Leases through Ray (median over rounds)")
    columns = ["phase", "what", "ops/s", "each round", "p50 ms", "p99 ms", "cpu ms/op"]
    columns += ["x raw", "x twin"]
    for column in columns:
        table.add_column(column, justify="left" if column in ("phase", "what") else "right")
    for name, label, twin in PHASES:
        if name not in phases:
            continue
        row = phases[name]
        vs_raw = vs_twin = ""
        if name in ratio:
            vs_raw = f"{ratio[name]['vs_raw_async']:.2f}"
            if twin is not None:
                vs_twin = f"{ratio[name]['vs_' + twin]:.2f}"
        table.add_row(
            name,
            label.format(n=actors),
            f"{row['rate_per_s']:,.0f}",
            " ".join(f"{r:,.0f}" for r in row["rates_per_s"]),
            f"{row['p50_ms']:.2f}",
            f"{row['p99_ms']:.2f}",
            "" if row["cpu_ms_per_op"] is None else f"{row['cpu_ms_per_op']:.2f}",
            vs_raw,
            vs_twin,
        )
    console.print(table)
    target = result["target"]
    verdict = "[green]met[/]" if target["met"] else "[red]not met[/]"
    console.print(
        f"sequential acquire+release / raw round trip: {target['sequential_ratio']:.2f}x "
        f"(target >= {target['sequential_ratio_min']}x: {verdict}); "
        f"leases left after the run: {result['leases_left']}"
    )
    warm_verdict = "[green]met[/]" if target["warm_met"] else "[red]not met[/]"
    console.print(
        f"warm acquire+release / raw round trip: {target['warm_ratio']:.1f}x "
        f"(target >= {target['warm_ratio_min']:g}x: {warm_verdict})"
    )
    cpu = result["ratios"]["lease_seq"]["cpu_in_raw_calls"]
    if cpu is not None:
        console.print(
            f"one sequential cycle uses the CPU of {cpu:.1f} raw round trips "
            f"(all processes of this Ray instance)"
        )
    m = result["machine"]
    console.print(
        f"nproc {m['nproc']}, python {m['python']}, ray {m['ray']}, "
        f"load {m['loadavg_start'][0]:.1f} -> {m['loadavg_end'][0]:.1f}",
        style="dim",
    )


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="measured time per phase")
    parser.add_argument("--warmup", type=float, default=None, help="warm-up time per phase")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (3)")
    parser.add_argument("--quick", action="store_true", help="one short round (smoke test)")
    parser.add_argument("--actors", type=int, default=None, help="client actors (8; quick: 4)")
    parser.add_argument("--no-actors", action="store_true", help="skip the client-actor phases")
    parser.add_argument("--json", type=Path, default=None, help="write all figures here")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds = min(args.seconds, 0.5)
    if args.warmup is None:
        args.warmup = 0.2 if args.quick else 1.0
    if args.actors is None:
        args.actors = 4 if args.quick else CONCURRENCY
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    # Wide enough for the table when the output is a pipe or a file.
    console = Console(width=None if sys.stdout.isatty() else 140)
    try:
        result = asyncio.run(bench(args, console))
    finally:
        deploy.forget_handles()
        ray.shutdown()
    render(result, console)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        console.print(f"wrote {args.json}", style="dim")
    return 0


if __name__ == "__main__":
    sys.exit(main())
