"""``anya-resource demo``: the mixed ML + transaction workload on a cluster, live.

Starts an embedded Ray cluster on loopback (or joins one at ``--address``),
deploys the manager, trains the model and signs the transactions, then runs the
mixed workload (``anya_resource_demo.mix``) for ``--duration`` seconds while a live table
shows each node's leases, memory, CPU and health and each priority class's
running, waiting and p95 wait. Beside the tasks, three whole Ray jobs wait in the job
queue by priority (``anya_resource_demo.queued_jobs``), shown with their position and what holds
them back. After the run every client finishes the lease it holds or waits for, the
jobs finish (or are cancelled after a while), and the final report is printed (and
written as JSON).

Ctrl-C ends the run early the same way: nothing new is asked for, what runs
finishes and is released, the report covers what ran, and the embedded cluster
is shut down. A second Ctrl-C skips the wait; the cluster is shut down anyway.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from anya_resource.client import SyncResourceManager
from anya_resource.core.bottleneck import binding
from anya_resource.core.jobs import ENDED, JobState
from anya_resource.errors import ResourceError
from anya_resource.messages import Snapshot
from anya_resource.quantities import MILLI, format_amount
from anya_resource.render import format_seconds, jobs_table
from anya_resource_demo.cluster import (
    embedded_cluster,
    existing_cluster,
    node_labels,
    wait_for_agents,
)
from anya_resource_demo.mix import POLICY, default_mix, prepare_while_warming
from anya_resource_demo.queued_jobs import report as queued_jobs_report
from anya_resource_demo.queued_jobs import submit_all
from anya_resource_demo.report import RunWindow, Samples, build_report, node_use
from anya_resource_demo.runner import Runner, plan_mix
from anya_resource_demo.stats import wait_summary

DRAIN_TIMEOUT_S = 60.0  # the longest task of the mix runs a few seconds when tight
RELEASED_TIMEOUT_S = 20.0
JOBS_TIMEOUT_S = 90.0  # for the queued jobs to end once the task workload has stopped
JOBS_REFRESH_S = 1.0  # how often the live table's job rows are read


@dataclass(frozen=True)
class DemoOptions:
    nodes: int = 3
    duration: float = 30.0
    address: str | None = None
    refresh: float = 0.5
    live: bool = True  # the live table; off when the output is not a terminal


class _Narrator:
    """One dim, timed line per phase of the demo (the cluster's start takes a while)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.started = time.monotonic()

    def __call__(self, message: str) -> None:
        elapsed = time.monotonic() - self.started
        self.console.print(f"[dim]demo {elapsed:5.1f} s:[/dim] {message}")


def run_demo(options: DemoOptions, console: Console) -> dict[str, Any]:
    """Run the demo; the final report (plain data). Shuts an embedded cluster down."""
    say = _Narrator(console)
    if options.address:
        say(f"joining the Ray cluster at {options.address}")
        where = existing_cluster(options.address)
    else:
        say(f"starting an embedded cluster of {options.nodes} nodes on 127.0.0.1")
        where = embedded_cluster(options.nodes, dashboard=True)
    with where as address:
        report = _run_on_cluster(options, console, say)
        report["run"]["address"] = address
        report["run"]["embedded"] = options.address is None
        return report


def _run_on_cluster(options: DemoOptions, console: Console, say: _Narrator) -> dict[str, Any]:
    say("deploying the manager")
    manager = SyncResourceManager.connect(policy=POLICY)
    try:
        labels = node_labels()
        wait_for_agents(manager, len(labels))
        say("training the model, signing transactions, warming the workers")
        payload = prepare_while_warming(list(labels))
        before = manager.snapshot()
        plans = plan_mix(default_mix(), before["resources"]["cpu"]["grantable"] / MILLI)
        runner = Runner(plans, payload)
        samples = Samples()
        jobs = QueuedJobs(manager, say)
        say(f"running the workload for {options.duration:g} s, and queueing 3 Ray jobs")
        run = _drive(runner, manager, options, console, samples, labels, jobs)
        if run.interrupted:
            say(
                "stopping: running tasks finish and give their leases back "
                "(Ctrl-C again to stop at once)"
            )
        if not runner.join(DRAIN_TIMEOUT_S):
            say(f"[yellow]some tasks still running after {DRAIN_TIMEOUT_S:g} s[/yellow]")
        jobs.finish()
        after = _released(manager)
        say(f"every client and job done; {after['leases']} leases still held")
        report = build_report(plans, runner.snapshot(), run, (before, after), samples, labels)
        report["jobs"] = jobs.report()
        report["work"]["inference"]["train_accuracy"] = payload.model_accuracy
        report["work"]["transactions"]["tampered_in_set"] = payload.tampered
        report["errors"] = dict(runner.errors)
        return report
    finally:
        manager.close()


# -- the run ---------------------------------------------------------------------------


@dataclass
class LiveState:
    """What the live table shows, refreshed from the coordinator and the clients."""

    snap: Snapshot
    running: Counter[str]  # by priority class: leases held now
    elapsed: float
    duration: float
    jobs: list[dict[str, Any]] = field(default_factory=list)  # the queued jobs' rows


class QueuedJobs:
    """The demo's whole Ray jobs: queued beside the tasks, followed, reported.

    Submitting and listing run in a thread of their own: a submit waits for the job's
    supervisor to start (a new worker process, seconds on a busy machine), and the
    live loop must keep sampling the cluster meanwhile.
    """

    def __init__(self, manager: SyncResourceManager, say: _Narrator) -> None:
        self.manager = manager
        self.say = say
        self.names: dict[str, str] = {}  # job id -> name
        self.latest: list[dict[str, Any]] = []  # the rows the live table shows
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="demo-jobs", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _follow(self) -> None:
        try:
            self.names = submit_all(self.manager)
        except ResourceError as exc:  # no job server on a cluster given by --address
            self.say(f"[yellow]no jobs queued: {exc}[/yellow]")
            return
        while not self._stop.wait(JOBS_REFRESH_S):
            self.latest = self.rows()

    def rows(self) -> list[dict[str, Any]]:
        if not self.names:
            return []
        return [row for row in self.manager.jobs() if row["job_id"] in self.names]

    def finish(self) -> None:
        """Let the jobs end (the tasks have stopped, so they all fit); cancel stragglers."""
        if not self.names:
            return
        self.say("waiting for the queued jobs to finish")
        deadline = time.monotonic() + JOBS_TIMEOUT_S
        while time.monotonic() < deadline:
            if all(JobState(row["state"]) in ENDED for row in self.rows()):
                return
            time.sleep(0.5)
        for row in self.rows():
            if JobState(row["state"]) not in ENDED:
                self.manager.cancel_job(row["job_id"])
                self.manager.wait_job(row["job_id"], timeout=60)

    def report(self) -> list[dict[str, Any]]:
        return queued_jobs_report(self.rows(), self.names)


def _drive(
    runner: Runner,
    manager: SyncResourceManager,
    options: DemoOptions,
    console: Console,
    samples: Samples,
    labels: dict[str, str],
    jobs: QueuedJobs,
) -> RunWindow:
    """Run the clients for ``duration`` s (or until Ctrl-C), refreshing the live table."""
    start = time.time()
    runner.start()
    interrupted = False
    try:
        jobs.start()  # beside the task workload, which keeps the cluster busy
        with _live(console, options.live) as live:
            while time.time() - start < options.duration:
                time.sleep(options.refresh)
                state = _observe(manager, start, options.duration)
                state.jobs = jobs.latest
                samples.add(state.snap)
                if live is not None:
                    live.update(live_view(state, runner, labels))
    except KeyboardInterrupt:
        interrupted = True
    finally:
        jobs.stop()
    end = time.time()
    runner.stop()
    return RunWindow(start=start, end=end, interrupted=interrupted)


@contextlib.contextmanager
def _live(console: Console, enabled: bool) -> Iterator[Live | None]:
    if not enabled:
        yield None
        return
    with Live(Text("starting the workload..."), console=console, refresh_per_second=4) as live:
        yield live


def _observe(manager: SyncResourceManager, start: float, duration: float) -> LiveState:
    snap = manager.snapshot()
    running = Counter(str(row.get("priority")) for row in manager.leases())
    return LiveState(snap=snap, running=running, elapsed=time.time() - start, duration=duration)


def _released(manager: SyncResourceManager) -> Snapshot:
    """The snapshot once the coordinator has every lease back (or after a while)."""
    deadline = time.monotonic() + RELEASED_TIMEOUT_S
    snap = manager.snapshot()
    # Releases are sent without waiting (by the task, and by the caller once the result
    # is in): give the last of them a moment to land.
    while snap["leases"] and time.monotonic() < deadline:
        time.sleep(0.1)
        snap = manager.snapshot()
    return snap


# -- the live table --------------------------------------------------------------------


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} %"


def _node_health(node: dict[str, Any], health: dict[str, Any] | None) -> Text:
    if not node["alive"]:
        return Text("down", style="red")
    if node["pressured"]:
        return Text(f"{'/'.join(node['pressured'])} pressure", style="yellow")
    if health is None:
        return Text("no report yet", style="yellow")
    return Text("ok", style="green")


def nodes_table(snap: Snapshot, labels: dict[str, str]) -> Table:
    table = Table(title="Nodes", title_justify="left")
    for column in ("node", "leases", "CPU granted", "memory granted", "CPU used", "memory used"):
        table.add_column(column, justify="left" if column == "node" else "right")
    table.add_column("health")
    for node_id, node in snap["nodes"].items():
        cpu, memory = node["resources"]["cpu"], node["resources"]["memory"]
        used_cpu, used_memory = node_use(snap, node_id, node)
        table.add_row(
            f"{labels.get(node_id, 'node')} {node_id[:8]}",
            str(node["leases"]),
            f"{format_amount('cpu', cpu['granted'])} / {format_amount('cpu', cpu['grantable'])}",
            f"{format_amount('memory', memory['granted'])} / "
            f"{format_amount('memory', memory['grantable'])}",
            _percent(used_cpu),
            _percent(used_memory),
            _node_health(node, snap.get("health", {}).get(node_id)),
        )
    return table


def classes_table(state: LiveState, runner: Runner) -> Table:
    table = Table(title="Priority classes", title_justify="left")
    table.add_column("class")
    table.add_column("job")
    for column in ("clients", "running", "waiting", "granted", "p95 wait"):
        table.add_column(column, justify="right")
    records = runner.snapshot()
    waiting = state.snap["queue"]["by_priority"]
    for plan in runner.plans:
        kind = plan.kind
        waits = [r.wait for r in records if r.kind == kind.name]
        table.add_row(
            kind.priority,
            f"{kind.name} ({kind.tenant})",
            str(plan.clients),
            str(state.running.get(kind.priority, 0)),
            str(waiting.get(kind.priority, 0)),
            str(len(waits)),
            format_seconds(wait_summary(waits)["p95"]),
        )
    return table


def live_view(state: LiveState, runner: Runner, labels: dict[str, str]) -> RenderableType:
    header = Text(
        f"anya-resource demo: {state.elapsed:.0f} s of {state.duration:g} s "
        f"({len(state.snap['nodes'])} nodes, {state.snap['leases']} leases held, "
        f"{state.snap['queue']['waiting']} waiting) - Ctrl-C stops",
        style="bold",
    )
    top = binding(state.snap.get("bottlenecks", []))
    bottleneck = Text("bottleneck: " + (top["message"] if top else "none right now"), style="dim")
    parts: list[RenderableType] = [
        header,
        nodes_table(state.snap, labels),
        classes_table(state, runner),
    ]
    if state.jobs:
        parts.append(jobs_table(state.jobs, time.time(), width=80))
    return Group(*parts, bottleneck)


# -- the final report ------------------------------------------------------------------


def _classes_report(report: dict[str, Any]) -> Table:
    table = Table(
        title="Tasks and waits per priority (wait: .remote() to a lease, warm or new)",
        title_justify="left",
    )
    table.add_column("class")
    table.add_column("job")
    for column in ("tasks", "failed", "p50", "p95", "p99", "coord. p95"):
        table.add_column(column, justify="right")
    for name, row in report["classes"].items():
        waits, coordinator = row["wait_s"], row["coordinator_wait_s"] or {}
        table.add_row(
            name,
            row["job"],
            str(row["grants"]),
            str(row["failed"]),
            format_seconds(waits["p50"]),
            format_seconds(waits["p95"]),
            format_seconds(waits["p99"]),
            format_seconds(coordinator.get("p95")),
        )
    return table


def _nodes_report(report: dict[str, Any]) -> Table:
    table = Table(
        title="Per node (utilisation: CPU-seconds granted / CPU x run time)", title_justify="left"
    )
    table.add_column("node")
    for column in (
        "tasks",
        "CPU-s granted",
        "utilisation",
        "CPU used",
        "memory used",
        "leases at end",
    ):
        table.add_column(column, justify="right")
    for node_id, row in report["nodes"].items():
        utilisation = row["utilisation"]
        table.add_row(
            f"{row['label']} {node_id[:8]}",
            str(row["grants"]),
            f"{row['cpu_seconds']:.1f}",
            _percent(None if utilisation is None else utilisation * 100),
            _percent(row["measured_cpu_percent"]),
            _percent(row["measured_memory_percent"]),
            str(row["leases_at_end"]),
        )
    return table


def _summary_lines(report: dict[str, Any]) -> Text:
    work, balance = report["work"], report["balance"]
    txs, inference = work["transactions"], work["inference"]
    cv = balance["cpu_seconds_cv"]
    starved = balance["starved_windows"]
    accuracy = inference["accuracy"]
    lines = [
        f"run: {report['run']['seconds']:.1f} s on {report['run']['nodes']} nodes"
        + (" (stopped by Ctrl-C)" if report["run"]["interrupted"] else ""),
        f"transactions: {txs['verified']} verified, {txs['valid']} valid, {txs['rejected']} "
        f"rejected ({txs['tampered_accepted']} tampered ones accepted)",
        f"inference: {inference['rows']} rows scored, accuracy "
        + ("-" if accuracy is None else f"{accuracy:.3f}"),
        "balance: CV of CPU-seconds across nodes "
        + ("-" if cv is None else f"{cv:.3f}")
        + (
            f"; classes without a grant in some {balance['window_s']:g} s window: {starved}"
            if starved
            else f"; every class granted in every {balance['window_s']:g} s window"
        ),
        f"preemptions: {report['preemptions']}; revocations: {report['revocations'] or 0}; "
        f"rejections: {report['rejections'] or 0}",
        f"leases held at the end: {report['coordinator']['leases_at_end']}",
    ]
    bottleneck = report["bottleneck"]
    if bottleneck is None:
        lines.append("bottleneck: none; nothing waited on a resource at the sampled moments")
    else:
        lines.append(
            f"bottleneck: {bottleneck['message']} (binding in {bottleneck['binding_in']} of "
            f"{bottleneck['samples']} samples) -> {bottleneck['recommendation']}"
        )
    return Text("\n".join(lines))


def _jobs_report(report: dict[str, Any]) -> Table:
    table = Table(title="Whole Ray jobs through the queue, in the order they started")
    table.title_justify = "left"
    for column in ("job", "priority", "state", "waited", "ran", "attempts"):
        table.add_column(column, justify="left" if column in ("job", "state") else "right")
    for row in report.get("jobs", []):
        table.add_row(
            row["name"],
            row["priority"],
            row["state"],
            format_seconds(row["waited_s"]),
            format_seconds(row["ran_s"]),
            str(row["attempts"]),
        )
    return table


def render_report(report: dict[str, Any]) -> RenderableType:
    parts: list[RenderableType] = [_classes_report(report), _nodes_report(report)]
    if report.get("jobs"):
        parts.append(_jobs_report(report))
    return Group(*parts, _summary_lines(report))


__all__ = ["DemoOptions", "render_report", "run_demo"]
