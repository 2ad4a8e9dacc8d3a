"""The job queue's commands: ``submit``, ``jobs``, ``cancel`` (jobs.py does the work)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from anya_resource.cli_ops import (
    CALL_TIMEOUT_S,
    AddressOption,
    BundleOption,
    BundlesOption,
    ConnectTimeout,
    JsonOption,
    StrategyOption,
    _gang_request,
    _print_json,
    _run_read,
    gang,
    parse_resources,
    priority_level,
)
from anya_resource.core.jobs import ENDED, JobState, check_entrypoint
from anya_resource.core.requests import check_fields
from anya_resource.errors import InvalidRequest

if TYPE_CHECKING:
    from anya_resource.client import ResourceManager

ENDED_OK = "succeeded"


def _runtime_env(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidRequest(f"--runtime-env {path}: {exc}; expected a JSON object") from None
    if not isinstance(data, dict):
        raise InvalidRequest(
            f"--runtime-env {path}: expected a JSON object, got {type(data).__name__}"
        )
    return data


def _budget(
    cpu: str | None, memory: str | None, gpu: str | None, pools: list[str] | None
) -> dict[str, Any]:
    budget: dict[str, Any] = {}
    for name, value in (("cpu", cpu), ("memory", memory), ("gpu", gpu)):
        if value is not None:
            budget.update(parse_resources(f"{name}={value}"))
    for pool in pools or []:
        budget.update(parse_resources(pool))  # NAME=N: a pool, by name
    return budget


def submit(
    entrypoint: Annotated[
        list[str], typer.Argument(help="The job's command line, after '--'.", show_default=False)
    ],
    priority: Annotated[str, typer.Option(help="Priority class (or a number).")] = "normal",
    tenant: Annotated[str | None, typer.Option(help="Tenant whose quota it draws on.")] = None,
    cpu: Annotated[str | None, typer.Option(help="CPUs of its budget.")] = None,
    memory: Annotated[str | None, typer.Option(help="Memory of its budget ('4GiB').")] = None,
    gpu: Annotated[str | None, typer.Option(help="GPUs of its budget.")] = None,
    pool: Annotated[
        list[str] | None, typer.Option(help="Pool slots of its budget, NAME=N (repeatable).")
    ] = None,
    bundle: BundleOption = None,
    bundles: BundlesOption = None,
    strategy: StrategyOption = None,
    working_dir: Annotated[
        str | None, typer.Option(help="Ray's working_dir for the job (uploaded).")
    ] = None,
    runtime_env: Annotated[
        Path | None, typer.Option(help="A JSON file: Ray's runtime_env for the job.")
    ] = None,
    preemptible: Annotated[bool, typer.Option(help="A higher-priority job may stop it.")] = False,
    requeue: Annotated[
        bool, typer.Option(help="Preempted, it goes back to the queue (else it ends stopped).")
    ] = False,
    wait: Annotated[
        bool, typer.Option(help="Follow the job to its end; exit 0 only if it succeeded.")
    ] = False,
    what_if: Annotated[
        bool,
        typer.Option(
            "--what-if", help="Submit nothing: would it start now, and what would it preempt?"
        ),
    ] = False,
    address: AddressOption = None,
    as_json: JsonOption = False,
    connect_timeout: ConnectTimeout = CALL_TIMEOUT_S,
) -> None:
    """Queue a Ray job on a lease (its budget); prints its id at once.

    Across nodes: --bundle cpu=2,gpu=1 per bundle (or --cpu 2 --gpu 1 --bundles 4), with
    --strategy: the budget is a gang, granted whole, and the job's leases are drawn from
    its bundles."""
    budget, gang_bundles = gang(_budget(cpu, memory, gpu, pool), bundle, bundles)
    if gang_bundles is not None:
        budget = _gang_request(budget)
    elif not budget:
        raise InvalidRequest(
            "submit: no budget given; expected --cpu, --memory, --gpu, --pool NAME=N, or "
            "a gang's --bundle options"
        )
    level = priority_level(priority)
    # Checked before connecting: bad input is named at once, as typed (core/requests.py).
    check_fields(
        budget,
        priority=level,
        tenant=tenant,
        preemptible=preemptible,
        bundles=gang_bundles,
        strategy=strategy,
    )
    env = _runtime_env(runtime_env)
    if what_if:
        _what_if(
            budget,
            level,
            tenant,
            preemptible,
            address,
            as_json,
            connect_timeout,
            gang_bundles,
            strategy,
        )
        return
    check_entrypoint(entrypoint)

    async def go(manager: ResourceManager) -> dict[str, Any]:
        job_id = await manager.submit_job(
            entrypoint,
            budget,
            priority=level,
            tenant=tenant,
            runtime_env=env,
            working_dir=working_dir,
            preemptible=preemptible,
            requeue=requeue,
            bundles=gang_bundles,
            strategy=strategy,
        )
        if not wait:
            return {"job_id": job_id}
        return await manager.wait_job(job_id)

    result = _run_read(address, False, None, connect_timeout, go)
    if as_json:
        _print_json(result)
    elif not wait:
        typer.echo(result["job_id"])
    else:
        typer.echo(f"{result['job_id']}: {result['state']} ({result['message']})")
    if wait and result["state"] != ENDED_OK:
        sys.exit(1)


def _what_if(
    budget: dict[str, Any],
    priority: str | int,
    tenant: str | None,
    preemptible: bool,
    address: str | None,
    as_json: bool,
    connect_timeout: float,
    bundles: list[dict[str, Any]] | None = None,
    strategy: str | None = None,
) -> None:
    """The dry run of a job: its budget as one request, and the jobs it would stop."""

    async def read(manager: ResourceManager) -> dict[str, Any]:
        answer = await manager.what_if(
            budget,
            1,
            priority=priority,
            tenant=tenant,
            preemptible=preemptible,
            bundles=bundles,
            strategy=strategy,
        )
        rows = await manager.jobs()
        running = {r["lease_id"]: r["job_id"] for r in rows if JobState(r["state"]) not in ENDED}
        stopped = [running[p["lease_id"]] for p in answer["preempted"] if p["lease_id"] in running]
        return {**answer, "jobs_stopped": sorted(stopped)}

    result = _run_read(address, False, None, connect_timeout, read)
    if as_json:
        _print_json(result)
        return
    from anya_resource.render import render_what_if

    console = Console()
    label = ", ".join(f"{name}={value}" for name, value in budget.items())
    if bundles:
        label = f"{len(bundles)} bundles, {strategy or 'PACK'}" + (f", {label}" if label else "")
    console.print(render_what_if(result, f"job of {label}", time.time(), width=console.width))
    if result["jobs_stopped"]:
        console.print("jobs it would stop: " + ", ".join(result["jobs_stopped"]))


def jobs(
    address: AddressOption = None,
    as_json: JsonOption = False,
    connect_timeout: ConnectTimeout = CALL_TIMEOUT_S,
) -> None:
    """The job queue: queued, running and ended jobs, oldest first."""

    async def read(manager: ResourceManager) -> list[dict[str, Any]]:
        return await manager.jobs()

    rows = _run_read(address, False, None, connect_timeout, read)
    if as_json:
        _print_json(rows)
        return
    from anya_resource.render import jobs_table

    console = Console()
    console.print(jobs_table(rows, time.time(), width=console.width))


def cancel(
    job: Annotated[str, typer.Argument(help="The job's id (from submit).", show_default=False)],
    address: AddressOption = None,
    connect_timeout: ConnectTimeout = CALL_TIMEOUT_S,
) -> None:
    """Take a queued job out of the queue, or stop a running one."""

    async def go(manager: ResourceManager) -> str:
        return await manager.cancel_job(job)

    state = _run_read(address, False, None, connect_timeout, go)
    typer.echo(f"{job}: cancel asked (it was {state})")


def register(app: typer.Typer) -> None:
    """Add the job queue's commands to ``app`` (the command group of ``cli``)."""
    app.command(context_settings={"allow_interspersed_args": False})(submit)
    app.command()(jobs)
    app.command()(cancel)
