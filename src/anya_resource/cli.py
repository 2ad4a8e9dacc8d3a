"""The ``anya-resource`` command line: commands only.

Every error a command lets out (bad flags, bad values, ``ConfigError``,
``InvalidRequest`` and the rest of ``ResourceError``) is printed as one line on
stderr, with exit status 2 for bad input, never as a traceback: ``error_line`` is the
one place that maps an error to its line and exit status. A Ray exception never gets
here (every call to an actor goes through ``actors/boundary.py``); were one to, it is
translated the same way first. Rendering lives in ``render``; the work itself in the
modules the commands call.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from typer.core import TyperGroup

from anya_resource import cli_jobs, cli_ops
from anya_resource.cli_ops import PROG
from anya_resource.errors import InvalidRequest, ResourceError

BAD_INPUT = 2


def _one_line(message: str) -> str:
    return "; ".join(line.strip() for line in message.strip().splitlines() if line.strip())


def _fail(message: str, code: int) -> NoReturn:
    typer.echo(f"{PROG}: error: {_one_line(message)}", err=True)
    sys.exit(code)


def _is_a(exc: BaseException, class_name: str) -> bool:
    # Typer >= 0.20 vendors its own copy of click (``typer._click``), older ones use
    # click itself: match the exception classes by name, whichever copy raised them.
    return any(cls.__name__ == class_name for cls in type(exc).__mro__)


def _is_rays(exc: BaseException) -> bool:
    return any(cls.__module__.split(".")[0] == "ray" for cls in type(exc).__mro__)


def error_line(exc: BaseException) -> tuple[str, int] | None:
    """The one line (without the ``anya-resource: error:`` prefix) and the exit status
    the command line shows for ``exc``: 2 for bad input (bad flags and values,
    ``InvalidRequest``, ``ConfigError``), 1 for the rest of ``ResourceError`` (its class
    named). None for anything else, which is a bug of ours: its traceback is the report.
    """
    if _is_rays(exc):  # never expected (actors/boundary.py), never shown as Ray's
        from anya_resource.actors.boundary import translate

        exc = translate(exc)
    if isinstance(exc, InvalidRequest):  # ConfigError and SimConfigError are InvalidRequests
        return _one_line(str(exc)), BAD_INPUT
    if isinstance(exc, ResourceError):
        return _one_line(f"{type(exc).__name__}: {exc}"), 1
    if _is_a(exc, "UsageError"):  # bad flags and bad flag values
        return _one_line(exc.format_message()), BAD_INPUT  # type: ignore[attr-defined]
    if _is_a(exc, "ClickException") or _is_a(exc, "TyperException"):
        return _one_line(exc.format_message()), getattr(exc, "exit_code", 1)  # type: ignore[attr-defined]
    if _is_a(exc, "Abort"):
        return "aborted", 1
    return None


class OneLineErrors(TyperGroup):
    """A command group whose errors are one line on stderr, never a traceback."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        arguments = list(sys.argv[1:] if args is None else args)
        try:
            result = super().main(
                args=arguments or ["--help"],
                prog_name=prog_name or PROG,
                complete_var=complete_var,
                standalone_mode=False,
                windows_expand_args=windows_expand_args,
                **extra,
            )
        except Exception as exc:
            shown = error_line(exc)
            if shown is None:
                raise
            _fail(*shown)
        if not standalone_mode:
            return result
        sys.exit(result if isinstance(result, int) else 0)


app = typer.Typer(
    cls=OneLineErrors,
    name=PROG,
    help="anya-resource: a resource scheduler on Ray (leases, priorities, quotas, pools).",
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """anya-resource: a resource scheduler on Ray (leases, priorities, quotas, pools)."""


def _timeout(text: str) -> float | None:
    if text.strip().lower() in ("none", "never", "inf"):
        return None
    try:
        return float(text)
    except ValueError:
        raise typer.BadParameter(
            f"got {text!r}, expected seconds above 0 or 'none'", param_hint="'--timeout'"
        ) from None


@app.command()
def simulate(
    nodes: Annotated[int, typer.Option(min=1, max=100_000, help="Nodes in the cluster.")] = 10,
    memory_per_node: Annotated[str, typer.Option(help="Memory per node, e.g. 64GiB.")] = "64GiB",
    cpu_per_node: Annotated[str, typer.Option(help="CPU cores per node.")] = "16",
    gpu_per_node: Annotated[str, typer.Option(help="GPUs per node.")] = "0",
    disk_per_node: Annotated[str, typer.Option(help="Disk per node, e.g. 1TiB.")] = "0",
    rate: Annotated[float, typer.Option(help="Requests arriving per simulated second.")] = 12.0,
    duration: Annotated[float, typer.Option(help="Simulated seconds of arrivals.")] = 60.0,
    priority_mix: Annotated[
        str, typer.Option(help="Weights per priority, name:weight,...")
    ] = "critical:5,high:15,normal:40,low:30,batch:10",
    tenant_mix: Annotated[
        str | None, typer.Option(help="Weights per tenant, name:weight,... (default: one tenant).")
    ] = None,
    preemptible_share: Annotated[
        float, typer.Option(help="Fraction of requests that may be preempted.")
    ] = 0.3,
    hold_mean: Annotated[float, typer.Option(help="Mean seconds a lease is held.")] = 10.0,
    timeout: Annotated[
        str, typer.Option(help="Seconds a request may wait before it is rejected, or 'none'.")
    ] = "60",
    size: Annotated[
        list[str] | None,
        typer.Option(
            help="A request size WEIGHT:resource=amount,... (repeat for a mix), "
            "e.g. 30:cpu=2,memory=4GiB. Default: a small/medium/large mix."
        ),
    ] = None,
    policy: Annotated[
        Path | None, typer.Option(help="Policy YAML file (partial files are completed).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed, the same run.")] = 0,
    check_every: Annotated[
        int, typer.Option(min=0, help="Check the invariants every N events (0: at the end).")
    ] = 0,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary as JSON only.")
    ] = False,
) -> None:
    """Run the scheduling core on a synthetic cluster and workload (no Ray), then summarise."""
    # Imported here so that `anya-resource --help` stays fast.
    from anya_resource.render import render_simulation
    from anya_resource.simulate import SimConfig, SimConfigError, Simulation, parse_size

    try:
        config = SimConfig(
            nodes=nodes,
            memory_per_node=memory_per_node,
            cpu_per_node=cpu_per_node,
            gpu_per_node=gpu_per_node,
            disk_per_node=disk_per_node,
            rate=rate,
            duration=duration,
            priority_mix=priority_mix,
            tenant_mix=tenant_mix,
            preemptible_share=preemptible_share,
            hold_mean=hold_mean,
            timeout=_timeout(timeout),
            sizes=[parse_size(text) for text in size] if size else None,
            policy=policy,
            seed=seed,
            check_every=check_every,
        )
        simulation = Simulation(config)
    except SimConfigError as exc:
        flag = "--" + exc.field.replace("_", "-")
        raise InvalidRequest(f"{flag}: {str(exc).removeprefix(exc.field + ': ')}") from None
    progress_console = Console(stderr=True)
    if progress_console.is_terminal:
        with Progress(
            TextColumn("simulating"),
            BarColumn(),
            TextColumn("{task.completed:.0f}/{task.total:.0f} simulated s"),
            TimeElapsedColumn(),
            console=progress_console,
            transient=True,
        ) as bar:
            task = bar.add_task("simulate", total=config.duration)
            summary = simulation.run(lambda done, _total: bar.update(task, completed=done))
    else:
        summary = simulation.run()
    if as_json:
        typer.echo(json.dumps(summary.to_dict(), indent=2))
    else:
        Console().print(render_simulation(summary))


@app.command()
def demo(
    nodes: Annotated[
        int, typer.Option(min=1, max=16, help="Nodes of the embedded cluster, head included.")
    ] = 3,
    duration: Annotated[
        float, typer.Option(min=1.0, max=86_400.0, help="Seconds to run the workload.")
    ] = 30.0,
    address: Annotated[
        str | None,
        typer.Option(help="Run on this Ray cluster (HOST:PORT) instead of an embedded one."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the final report as JSON only (no tables).")
    ] = False,
    report_path: Annotated[
        Path | None,
        typer.Option("--report", help="Also write the final report as JSON to this file."),
    ] = None,
) -> None:
    """Run the mixed ML + Bitcoin-transaction workload on leases, with a live table."""
    # Imported here so that `anya-resource --help` stays fast; the workloads need the
    # demo extra (numpy, scikit-learn, python-bitcoinlib), which the library does not.
    try:
        from anya_resource_demo.app import DemoOptions, render_report, run_demo
    except ImportError as exc:
        _fail(
            f"the demo needs the demo extra ({exc.name} is missing): "
            "pip install 'anya-resource[demo]'",
            BAD_INPUT,
        )

    console = Console(stderr=as_json)
    live = console.is_terminal and not as_json
    options = DemoOptions(nodes=nodes, duration=duration, address=address, live=live)
    try:
        report = run_demo(options, console)
    except KeyboardInterrupt:  # a second Ctrl-C: the cluster is down, nothing to report
        _fail("interrupted; the cluster was shut down", 130)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        console.print(render_report(report))
    if report_path is not None:
        report_path.write_text(json.dumps(report, indent=2) + "\n")


def main() -> None:
    """Console-script entry point (``anya-resource``)."""
    app()


# The operator commands (status, leases, what-if, up, down), then the job queue's
# (submit, jobs, cancel), after this module's own: the order `--help` lists them in.
cli_ops.register(app)
cli_jobs.register(app)
