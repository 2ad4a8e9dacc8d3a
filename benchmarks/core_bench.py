"""Core scheduler benchmark: submit+grant+release cycles per second as the cluster grows.

At each point (nodes, waiting) the cluster is built, then ``waiting`` requests are
queued that genuinely wait: every node already has a lease of 8 GiB, and each
waiter asks for 50..56 GiB of memory, more than any node has free (57.6 GiB
grantable per 64 GiB node) yet not more than a node could ever grant, so none is
infeasible and none can be granted. The waiters come in 16 shapes (4 sizes x 4
tenants) over the 5 priority classes; the best of them is the blocked head of the
queue and holds a reservation, as in a saturated cluster.

A *cycle* is then: submit a small request (1 cpu, 1 GiB) that is granted at once,
and release it. Releasing capacity makes the scheduler look at the waiting queue
again, so the cycle pays for the queue, not only for the grant. Each cycle returns
two decisions (a Grant and a Reclaim); the cost per decision is the time of a
cycle over the decisions it returned.

Times are CPU time of the benchmark process (``time.process_time``), so that
other processes on a shared machine do not count. The machine is noisy all the
same (caches, frequency), so each repeat also times a baseline next to it: a
tight loop of the same number of dict insert+delete pairs. The ratio to it says
how many such dict operations one cycle costs, which travels between machines
better than cycles/s alone.

A second baseline, the *floor*, tells what this interpreter on this machine can
do at all: a cycle stripped to the bookkeeping any lease scheduler must do (a
secret token, a lease record, a node's and a tenant's ledger, the lease indexes,
the expiry heap, the token check on release, the Grant and Reclaim it returns),
with no queue, no priorities, no quotas, no placement choice and no checks. The
scheduler's cycle over the floor's is what its policy costs; a target above the
floor's own rate cannot be met by any scheduler written in this language here.

    .venv/bin/python benchmarks/core_bench.py --json benchmarks/results/core_bench.json
    .venv/bin/python benchmarks/core_bench.py --quick
"""

from __future__ import annotations

import argparse
import gc
import heapq
import hmac
import json
import os
import platform
import statistics
import sys
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from anya_resource.config import Policy
from anya_resource.core import Grant, Request, Scheduler, build_request
from anya_resource.core.leases import TokenMinter, new_secret
from anya_resource.core.model import LeaseRecord, Reclaim, ReclaimReason

POINTS: tuple[tuple[int, int], ...] = ((10, 100), (100, 10_000), (1_000, 100_000))
NODE_CAPACITY = {"memory": 64 * 2**30, "cpu": 32_000, "gpu": 0, "disk": 0}
FILLER = {"memory": "8GiB"}
VICTIM = {"cpu": 1, "memory": "512MiB"}  # with --preemptible: too small to make room
WAITER_SIZES = ("50GiB", "52GiB", "54GiB", "56GiB")
WAITER_TENANTS = ("ml", "transactions", "sync", "analytics")
PRIORITIES = ("critical", "high", "normal", "low", "batch")
CYCLE_REQUEST = {"cpu": 1, "memory": "1GiB"}
TARGET_SMALL_CYCLES_PER_S = 100_000
TARGET_LARGE_OVER_SMALL = 3.0
TICK = 1e-6  # simulated seconds between two operations
# CPU time of this process: other work on the (shared, 2-core) machine does not count.
clock = time.process_time
CALIBRATION_SECONDS = 0.05
REPEAT_SECONDS = 0.2  # each timed repeat lasts about this long, unless --cycles says
MIN_CYCLES, MAX_CYCLES = 20, 500_000
BASELINE_MIN_OPS = 500_000


@dataclass
class PointResult:
    nodes: int
    waiting: int
    shapes: int  # distinct request shapes among the waiters
    classes: int  # distinct priority classes among the waiters
    setup_s: float
    enqueue_us: float  # mean cost of submitting one request that has to wait
    cycles: int
    repeats: int
    cycles_per_s: float  # best repeat
    cycles_per_s_median: float
    us_per_decision: float  # best repeat
    us_per_decision_median: float
    baseline_ns_per_op: float  # one dict insert+delete pair, best repeat
    ratio_to_baseline: float  # cycle time / dict insert+delete time, best repeats
    floor_cycles_per_s: float  # the stripped cycle (see FloorCycle), best repeat
    ratio_to_floor: float  # cycle time / floor cycle time, best repeats


@dataclass
class _Point:
    scheduler: Scheduler
    request: Request
    now: float
    shapes: int
    classes: int
    setup_s: float
    enqueue_s: float
    held: int  # leases held while the cycles run (not counting the cycle's own)


def waiter_requests(policy: Policy, mix: str) -> list[Request]:
    """What the waiters ask for, best priority first: 16 shapes x 5 classes, or one of each."""
    if mix == "uniform":
        return [build_request(policy, {"memory": WAITER_SIZES[0]}, priority="high", tenant="ml")]
    return [
        build_request(policy, {"memory": size}, priority=priority, tenant=tenant)
        for priority in PRIORITIES
        for size in WAITER_SIZES
        for tenant in WAITER_TENANTS
    ]


def build_point(
    nodes: int, waiting: int, policy: Policy, mix: str = "mixed", preemptible: bool = False
) -> _Point:
    """A cluster of ``nodes`` with ``waiting`` requests queued that cannot be granted now.

    With ``preemptible``, every node also holds a small preemptible ``batch`` lease and
    the cycle's own lease is preemptible: each cycle then changes the set of leases the
    blocked head could preempt (none of them frees enough for it, so none is revoked).
    """
    started = clock()
    scheduler = Scheduler(policy)
    node_ids = [f"{index:056x}" for index in range(nodes)]
    for node_id in node_ids:
        scheduler.node_up(node_id, NODE_CAPACITY, 0.0)
    for node_id in node_ids:
        filler = build_request(policy, FILLER, priority="critical", tenant="base", node=node_id)
        _, decisions = scheduler.submit(filler, 0.0)
        if not (decisions and isinstance(decisions[0], Grant)):
            raise AssertionError(f"the filler lease of {node_id} was not granted: {decisions}")
        if preemptible:
            victim = build_request(
                policy, VICTIM, priority="batch", tenant="base", node=node_id, preemptible=True
            )
            _, decisions = scheduler.submit(victim, 0.0)
            if not (decisions and isinstance(decisions[0], Grant)):
                raise AssertionError(f"the batch lease of {node_id} was not granted")
    held = len(scheduler.leases)
    shapes = waiter_requests(policy, mix)
    enqueue_started = clock()
    now = 1.0
    # Best priority first: a waiter that outranks the head makes the scheduler look at
    # the whole queue again, which would only slow the setup down.
    for index in range(waiting):
        now += TICK
        _, decisions = scheduler.submit(shapes[index * len(shapes) // waiting], now)
        if decisions:
            raise AssertionError(f"waiter {index} was decided at once: {decisions[:3]}")
    enqueue_s = clock() - enqueue_started
    if len(scheduler.queue) != waiting or len(scheduler.leases) != held:
        raise AssertionError("the waiters do not all wait")
    request = build_request(
        policy, CYCLE_REQUEST, priority="normal", tenant="bench", preemptible=preemptible
    )
    shape_count = len({shape.shape for shape in shapes})
    class_count = len({shape.priority for shape in shapes})
    setup_s = clock() - started
    return _Point(scheduler, request, now, shape_count, class_count, setup_s, enqueue_s, held)


def run_cycles(point: _Point, cycles: int) -> tuple[float, int]:
    """Time ``cycles`` submit+release cycles; returns (seconds, decisions returned)."""
    scheduler, request = point.scheduler, point.request
    submit, release = scheduler.submit, scheduler.release
    now = point.now
    decisions = 0
    started = clock()
    for _ in range(cycles):
        now += TICK
        _, granted = submit(request, now)
        grant = granted[0]
        if not isinstance(grant, Grant):
            raise AssertionError(f"the cycle request was not granted at once: {granted}")
        lease = grant.lease
        released = release(lease.lease_id, lease.token, now)
        decisions += len(granted) + len(released)
    elapsed = clock() - started
    point.now = now
    return elapsed, decisions


def calibrate(point: _Point) -> float:
    """Seconds per cycle, from batches that double until one lasts long enough to time."""
    count = 10
    while True:
        elapsed, _ = run_cycles(point, count)
        if elapsed >= CALIBRATION_SECONDS or count >= MAX_CYCLES:
            return max(elapsed, 1e-9) / count
        count *= 2


class FloorCycle:
    """The least a submit+grant+release cycle can do: a baseline, not a scheduler.

    Uses the core's own lease record, decisions and token source, so that it pays
    what the scheduler pays for them; everything a scheduler decides is left out.
    """

    def __init__(self, request: Request, nodes: int = 10) -> None:
        self.request = request
        self.granted = [dict.fromkeys(request.resources, 0) for _ in range(nodes)]
        self.usage: dict[str, int] = {}
        self.active: dict[str, LeaseRecord] = {}
        self.by_node: dict[int, dict[str, LeaseRecord]] = {}
        self.by_request: dict[str, str] = {}
        self.expiry: list[tuple[float, str]] = []
        self.ended: OrderedDict[str, tuple[str, ReclaimReason]] = OrderedDict()
        self.sequence = 0
        self.minter = TokenMinter(new_secret())

    def submit(self, now: float) -> Grant:
        request = self.request
        self.sequence += 1
        request_id = f"req-0-{self.sequence}"
        lease_id = f"lease-{self.sequence:x}"
        node = self.sequence % len(self.granted)
        lease = LeaseRecord(
            lease_id, request_id, self.minter.mint(lease_id), self.sequence, str(node), request.resources,
            request.pools, request.priority, request.priority_name, request.tenant, request.ttl,
            now, now + request.ttl, False, request.holder,
        )  # fmt: skip
        granted, usage = self.granted[node], self.usage
        for resource, amount in request.resources.items():
            granted[resource] += amount
            usage[resource] = usage.get(resource, 0) + amount
        self.active[lease_id] = lease
        self.by_node.setdefault(node, {})[lease_id] = lease
        self.by_request[request_id] = lease_id
        heapq.heappush(self.expiry, (lease.expires_at, lease_id))
        return Grant(request_id, lease, 0.0)

    def release(self, lease_id: str, token: str) -> Reclaim:
        lease = self.active.pop(lease_id)
        if not hmac.compare_digest(lease.token, token):
            raise AssertionError("the floor's own token did not match")
        node = int(lease.node_id)
        del self.by_node[node][lease_id]
        del self.by_request[lease.request_id]
        granted, usage = self.granted[node], self.usage
        for resource, amount in lease.resources.items():
            granted[resource] -= amount
            usage[resource] -= amount
        self.ended[lease_id] = (lease.token, ReclaimReason.RELEASED)
        if len(self.ended) > 100_000:
            self.ended.popitem(last=False)
        return Reclaim(lease_id, lease.node_id, ReclaimReason.RELEASED)


def run_floor(floor: FloorCycle, cycles: int) -> float:
    """Seconds for ``cycles`` floor cycles, timed like ``run_cycles``."""
    submit, release = floor.submit, floor.release
    now = 1.0
    started = clock()
    for _ in range(cycles):
        now += TICK
        lease = submit(now).lease
        release(lease.lease_id, lease.token)
    return clock() - started


def run_baseline(count: int) -> float:
    """Seconds for ``count`` dict insert+delete pairs: the machine's speed, now.

    At least ``BASELINE_MIN_OPS`` pairs are timed (a few hundred would be too short to
    time well), then scaled to ``count``.
    """
    ops = max(count, BASELINE_MIN_OPS)
    table: dict[int, int] = {}
    started = clock()
    for key in range(ops):
        table[key] = key
        del table[key]
    return (clock() - started) * count / ops


def measure(
    nodes: int,
    waiting: int,
    cycles: int | None,
    repeats: int,
    policy: Policy,
    mix: str = "mixed",
    preemptible: bool = False,
) -> PointResult:
    point = build_point(nodes, waiting, policy, mix, preemptible)
    gc.collect()  # the setup's garbage is not the cycles' to pay for
    per_cycle = calibrate(point)  # also the warm-up
    if cycles is None:
        wanted = int(REPEAT_SECONDS / per_cycle)
        cycles = max(MIN_CYCLES, min(MAX_CYCLES, wanted))
    timings: list[tuple[float, int]] = []
    baselines: list[float] = []
    floors: list[float] = []
    floor = FloorCycle(point.request)
    run_floor(floor, cycles)  # warm-up
    for _ in range(repeats):
        baselines.append(run_baseline(cycles))
        floors.append(run_floor(floor, cycles))
        timings.append(run_cycles(point, cycles))
    scheduler = point.scheduler
    if len(scheduler.queue) != waiting or len(scheduler.leases) != point.held:
        raise AssertionError("a cycle granted or lost a waiter: the point is not what it says")
    if scheduler.counters.revoked:
        raise AssertionError(f"a cycle revoked leases: {scheduler.counters.revoked}")
    per_decision = [elapsed / decisions * 1e6 for elapsed, decisions in timings]
    rates = [cycles / elapsed for elapsed, _ in timings]
    best_cycle = min(elapsed for elapsed, _ in timings)
    best_baseline = min(baselines)
    return PointResult(
        nodes=nodes,
        waiting=waiting,
        shapes=point.shapes,
        classes=point.classes,
        setup_s=round(point.setup_s, 3),
        enqueue_us=round(point.enqueue_s / max(1, waiting) * 1e6, 2),
        cycles=cycles,
        repeats=repeats,
        cycles_per_s=round(max(rates)),
        cycles_per_s_median=round(statistics.median(rates)),
        us_per_decision=round(min(per_decision), 3),
        us_per_decision_median=round(statistics.median(per_decision), 3),
        baseline_ns_per_op=round(best_baseline / cycles * 1e9, 2),
        ratio_to_baseline=round(best_cycle / best_baseline, 1),
        floor_cycles_per_s=round(cycles / min(floors)),
        ratio_to_floor=round(best_cycle / min(floors), 2),
    )


def render(figures: dict[str, Any]) -> Table:
    table = Table(
        title=(
            f"Core scheduler: submit+grant+release cycles ({figures['mix']} waiters"
            + (", preemptible churn)" if figures["preemptible"] else ")")
        ),
        title_justify="left",
    )
    for column in (
        "nodes",
        "waiting",
        "shapes x classes",
        "cycles/s (best)",
        "cycles/s (median)",
        "µs/decision",
        "x dict op",
        "floor cycles/s",
        "x floor",
        "µs/enqueue",
    ):
        table.add_column(column, justify="right")
    for row in figures["points"]:
        table.add_row(
            f"{row['nodes']:,}",
            f"{row['waiting']:,}",
            f"{row['shapes']} x {row['classes']}",
            f"{row['cycles_per_s']:,}",
            f"{row['cycles_per_s_median']:,}",
            f"{row['us_per_decision']:.1f}",
            f"{row['ratio_to_baseline']:,.0f}",
            f"{row['floor_cycles_per_s']:,.0f}",
            f"{row['ratio_to_floor']:.1f}",
            f"{row['enqueue_us']:.1f}",
        )
    summary = figures["summary"]
    verdict = {True: "met", False: "MISSED"}
    table.caption = (
        f"µs/decision: best repeat; a cycle is 2 decisions. x dict op: cycle time over one "
        f"dict insert+delete, timed in the same run. Floor: the stripped cycle (bookkeeping "
        f"only, no scheduling), timed in the same run; x floor: cycle time over it. "
        f"µs/enqueue: submitting one waiter. "
        f"Large/small cost per decision: "
        f"{summary['large_over_small']:.2f}x (target <= {TARGET_LARGE_OVER_SMALL:g}x: "
        f"{verdict[summary['large_target_met']]}). Small point: "
        f"{figures['points'][0]['cycles_per_s']:,} cycles/s (target >= "
        f"{TARGET_SMALL_CYCLES_PER_S:,}: {verdict[summary['small_target_met']]}); the floor "
        f"there: {summary['small_floor_cycles_per_s']:,.0f} cycles/s, the scheduler "
        f"{summary['small_ratio_to_floor']:.1f}x its cost."
    )
    return table


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the figures here")
    parser.add_argument("--quick", action="store_true", help="a fast smoke run (few cycles)")
    parser.add_argument("--cycles", type=int, help="cycles per repeat (default: about 0.2 s worth)")
    parser.add_argument(
        "--repeats", type=int, help="timed repeats per point (default 15; the best counts)"
    )
    parser.add_argument(
        "--mix",
        choices=("mixed", "uniform"),
        default="mixed",
        help="waiters in 16 shapes x 5 priority classes (default), or all of one shape and class",
    )
    parser.add_argument(
        "--preemptible",
        action="store_true",
        help="a preemptible lease on every node, and preemptible cycles (preemption churn)",
    )
    args = parser.parse_args(argv)
    cycles: int | None = args.cycles or (300 if args.quick else None)
    repeats = args.repeats or (1 if args.quick else 15)
    policy = Policy.from_dict({})
    console = Console(stderr=True)
    results: list[PointResult] = []
    for nodes, waiting in POINTS:
        console.log(f"{nodes:,} nodes, {waiting:,} waiting: building and timing")
        results.append(measure(nodes, waiting, cycles, repeats, policy, args.mix, args.preemptible))
    small, large = results[0], results[-1]
    ratio = large.us_per_decision / small.us_per_decision
    figures: dict[str, Any] = {
        "benchmark": "core_bench",
        "quick": args.quick,
        "mix": args.mix,
        "preemptible": args.preemptible,
        "clock": "time.process_time (CPU time of the benchmark process)",
        "machine": {
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "points": [asdict(result) for result in results],
        "summary": {
            "large_over_small": round(ratio, 3),
            "small_target_cycles_per_s": TARGET_SMALL_CYCLES_PER_S,
            "small_target_met": small.cycles_per_s >= TARGET_SMALL_CYCLES_PER_S,
            # Whether the target is below what a stripped cycle reaches here at all.
            "small_floor_cycles_per_s": small.floor_cycles_per_s,
            "small_target_within_floor": small.floor_cycles_per_s >= TARGET_SMALL_CYCLES_PER_S,
            "small_ratio_to_floor": small.ratio_to_floor,
            "large_target_ratio": TARGET_LARGE_OVER_SMALL,
            "large_target_met": ratio <= TARGET_LARGE_OVER_SMALL,
        },
    }
    Console(width=max(100, Console().width)).print(render(figures))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
        console.log(f"figures written to {args.json}")
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
