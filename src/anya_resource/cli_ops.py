"""Operator commands of ``anya-resource``: ``up``, ``down``, ``status``, ``leases``, ``what-if``.

``register`` adds them to the command group of ``cli`` (which calls it), so their errors are printed like every other command's: one line on stderr, exit 2
for bad input, 1 for everything else, never a traceback.

Where the cluster is: ``--address`` or ``RAY_ADDRESS``. The read commands never
start an embedded Ray behind the user's back: without an address they stop
with one line unless ``--local`` asks for a throwaway local instance. Before Ray
is asked to connect, the address is probed with a plain TCP connect: ``ray.init``
on a closed port retries for minutes before it gives up.

``--json`` prints what the Python API returns (amounts in the core's units:
bytes for memory and disk, thousandths for cpu and gpu, slots for pools).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import math
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar
from urllib.parse import urlsplit

import typer
from rich.console import Console

from anya_resource.core.model import NODE_RESOURCES
from anya_resource.core.requests import check_count, check_fields
from anya_resource.errors import InvalidRequest, ManagerUnavailable, ResourceError
from anya_resource.inputs import is_integer_text, shown
from anya_resource.messages import Snapshot, WhatIfAnswer
from anya_resource.quantities import number_or_text

if TYPE_CHECKING:
    from anya_resource.client import ResourceManager
    from anya_resource.config import Policy

T = TypeVar("T")
PROG = "anya-resource"  # the command's name in messages (cli.py names its group with it)


class DeployConflict(ResourceError):
    """``up`` or ``down`` would undo something: another policy is deployed, leases are held."""


DEFAULT_RAY_PORT = 6379
INT_DIGITS_MAX = 4000  # Python refuses to read ints of more than 4,300 digits
PROBE_TIMEOUT_S = 5.0
CALL_TIMEOUT_S = 30.0

AddressOption = Annotated[
    str | None,
    typer.Option(
        "--address",
        help="The Ray cluster: HOST:PORT of its head (GCS), or 'auto' (the cluster this "
        "machine belongs to). Default: $RAY_ADDRESS.",
        show_default=False,
    ),
]
LocalOption = Annotated[
    bool,
    typer.Option(
        "--local",
        help="Start a throwaway Ray on this machine (loopback) instead of joining a cluster.",
    ),
]
PolicyForLocal = Annotated[
    Path | None,
    typer.Option(
        "--policy", help="With --local: the policy of the throwaway instance (YAML file)."
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON only, for scripts.")]
ConnectTimeout = Annotated[
    float,
    typer.Option(min=1.0, max=3600.0, help="Seconds to wait for Ray to accept the connection."),
]


# -- where the cluster is ------------------------------------------------------------------


def _target(address: str | None, local: bool) -> str | None:
    """The address to join, or None for a throwaway local Ray (``--local`` only)."""
    if local:
        if address:
            raise typer.BadParameter(
                "--local starts a throwaway Ray; it cannot be combined with --address",
                param_hint="'--local'",
            )
        # ensure_ray would otherwise join $RAY_ADDRESS instead of starting one.
        os.environ.pop("RAY_ADDRESS", None)
        return None
    target = (address or os.environ.get("RAY_ADDRESS") or "").strip()
    if target == "local":
        raise typer.BadParameter(
            "'local' would start a throwaway Ray, not join a cluster "
            "(status, leases and what-if take --local for that)",
            param_hint="'--address'",
        )
    if not target:
        raise typer.BadParameter(
            "no cluster given: pass --address HOST:PORT or set RAY_ADDRESS "
            "(or --local to try it on a throwaway local Ray)",
            param_hint="'--address'",
        )
    return target


def _host_port(address: str) -> tuple[str, int] | None:
    """``host:port`` of a Ray address, or None when there is nothing to probe."""
    if address in ("auto", "local"):
        return None
    text = address if "://" in address else "//" + address
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise InvalidRequest(f"--address: got {address!r}, expected HOST:PORT ({exc})") from None
    if not parts.hostname:
        raise InvalidRequest(f"--address: got {address!r}, expected HOST:PORT")
    return parts.hostname, port or DEFAULT_RAY_PORT


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _probe(address: str) -> None:
    """Fail at once when nothing listens at ``address`` (ray.init would retry for minutes)."""
    where = _host_port(address)
    if where is None:
        return
    try:
        with socket.create_connection(where, timeout=PROBE_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise ManagerUnavailable(
            f"cannot reach a Ray cluster at {address}: {reason.lower()}"
        ) from None


def _explain(message: str, ray_log: str) -> str:
    """Add what Ray's own log (captured while connecting) says went wrong, when we know it."""
    if "InvalidAuthToken" in ray_log or "Unauthenticated" in ray_log:
        from anya_resource.actors.deploy import AUTH_HINT

        return f"{message}; it requires token authentication: {AUTH_HINT}"
    return message


@contextmanager
def _watchdog(seconds: float, message: Callable[[], str], out: int) -> Iterator[None]:
    """Exit with ``message()`` on file descriptor ``out`` if the block outlives ``seconds``.

    ``ray.init`` cannot be interrupted from Python, and its atexit hook would wait on
    the same stuck connection, so this is the one place that leaves with ``os._exit``.
    """

    def expire() -> None:
        os.write(out, f"{PROG}: error: ManagerUnavailable: {message()}\n".encode())
        os._exit(1)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


@contextmanager
def _ray_log_captured() -> Iterator[tuple[int, Callable[[], str]]]:
    """Send file descriptor 2 to a scratch file: Ray's C++ client logs a line a second
    there while it retries. Yields the real stderr's descriptor and a reader of the log."""
    sys.stderr.flush()
    real = os.dup(2)
    with tempfile.TemporaryFile() as sink:

        def read() -> str:
            size = os.fstat(sink.fileno()).st_size
            return os.pread(sink.fileno(), size, 0).decode(errors="replace")

        os.dup2(sink.fileno(), 2)
        try:
            yield real, read
        finally:
            sys.stderr.flush()
            os.dup2(real, 2)
            os.close(real)


def _connect(target: str | None, timeout: float) -> None:
    """Join the cluster at ``target``, or start a private Ray on loopback when None."""
    from anya_resource.actors import deploy

    if target is None:
        late = f"a local Ray instance did not start within {timeout:g} s"
        # Ray's own log lines while it starts (a warning about token authentication)
        # are not ours to print: the command's output, or its one error line, is all.
        with _ray_log_captured() as (stderr, _), _watchdog(timeout, lambda: late, stderr):
            deploy.ensure_ray(None)
        return
    where = _host_port(target)
    _probe(target)
    late = f"no answer from the Ray cluster at {target} within {timeout:g} s"
    if where is not None and _is_loopback(where[0]) and not _loopback_only():
        # Ray swaps a loopback address for the machine's own, where a head bound
        # to loopback does not listen; only that variable (read at import) stops it.
        late += (
            "; for a Ray bound to loopback, set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 "
            "in the environment (as when it was started)"
        )
    with _ray_log_captured() as (stderr, ray_log):
        try:
            with _watchdog(timeout, lambda: _explain(late, ray_log()), stderr):
                deploy.ensure_ray(target)
        except ManagerUnavailable as exc:
            raise ManagerUnavailable(_explain(str(exc), ray_log())) from None


def _loopback_only() -> bool:
    return os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "").strip().lower() in (
        "0",
        "false",
    )


def _disconnect() -> None:
    import ray

    from anya_resource.actors import deploy

    deploy.forget_handles()
    ray.shutdown()


def _coordinator_handle() -> Any | None:
    """The deployed coordinator, or None; never deploys."""
    from anya_resource.actors import boundary
    from anya_resource.actors.naming import COORDINATOR_NAME, NAMESPACE

    return boundary.find(COORDINATOR_NAME, NAMESPACE)


def _not_deployed(target: str) -> ManagerUnavailable:
    return ManagerUnavailable(
        f"anya-resource is not deployed on the cluster at {target}: "
        f"run `{PROG} up --address {target} --policy FILE` first"
    )


def _load_policy(path: Path | None) -> Policy | None:
    from anya_resource.config import Policy

    return Policy.load(path) if path is not None else None


async def _read(
    target: str | None, policy: Policy | None, read: Callable[[ResourceManager], Awaitable[T]]
) -> T:
    """Run ``read`` with a manager on the deployed coordinator (``--local``: deploy it)."""
    from anya_resource.client import ResourceManager

    if target is not None and _coordinator_handle() is None:
        raise _not_deployed(target)
    manager = await ResourceManager.new(policy=policy, address=target)
    try:
        return await read(manager)
    finally:
        await manager.close()


def _run_read(
    address: str | None,
    local: bool,
    policy_file: Path | None,
    timeout: float,
    read: Callable[[ResourceManager], Awaitable[T]],
) -> T:
    if policy_file is not None and not local:
        raise typer.BadParameter(
            "--policy only applies to --local here; the cluster's coordinator has its own "
            f"(change it with `{PROG} down` then `{PROG} up --policy FILE`)",
            param_hint="'--policy'",
        )
    target = _target(address, local)
    policy = _load_policy(policy_file)
    _connect(target, timeout)
    try:
        return asyncio.run(_read(target, policy, read))
    finally:
        _disconnect()


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


# -- resources on the command line ----------------------------------------------------------


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not an amount")


def _json_float(text: str) -> float | str:
    """A JSON number with a point or exponent; one too large for a float (``1e999``)
    stays the text typed, so that the error names it, not the ``inf`` it became."""
    number = float(text)
    return number if math.isfinite(number) else text


def _json_int(text: str) -> int:
    if len(text.lstrip("-")) > INT_DIGITS_MAX:  # past Python's int-to-str limit: name its size
        raise InvalidRequest(
            f"RESOURCES: got a number of {len(text.lstrip('-')):,} digits, expected amounts "
            "below 2**63"
        )
    return int(text)


def priority_level(text: str) -> str | int:
    """A ``--priority`` as typed: a class name, or an int (ASCII digits only:
    ``str.isdigit()`` and ``int()`` also take Arabic-Indic and full-width digits)."""
    return int(text) if is_integer_text(text) and len(text.strip()) <= 18 else text


def parse_resources(text: str) -> dict[str, Any]:
    """``memory=4GiB,cpu=1,postgres=2`` or a JSON object, as ``acquire`` takes it."""
    stripped = text.strip()
    expected = (
        "expected NAME=AMOUNT,... such as 'memory=4GiB,cpu=1' (pools by name: 'postgres=1') "
        'or a JSON object such as \'{"memory": "4GiB", "pools": {"postgres": 1}}\''
    )
    if stripped.startswith("{"):
        try:
            parsed = json.loads(
                stripped,
                parse_constant=_no_constant,
                parse_float=_json_float,
                parse_int=_json_int,
            )
        except json.JSONDecodeError as exc:
            raise InvalidRequest(f"RESOURCES: not valid JSON ({exc.msg}); {expected}") from None
        except ValueError as exc:  # an int past Python's 4,300-digit limit, NaN, Infinity
            raise InvalidRequest(f"RESOURCES: {exc}; {expected}") from None
        if not isinstance(parsed, dict) or not parsed:
            raise InvalidRequest(f"RESOURCES: got {shown(text)}; {expected}")
        return parsed
    resources: dict[str, Any] = {}
    for item in stripped.split(","):
        name, equals, amount = (part.strip() for part in item.partition("="))
        if not name or not equals or not amount:
            raise InvalidRequest(f"RESOURCES: got {item.strip()!r} in {text!r}; {expected}")
        if name in resources:
            raise InvalidRequest(f"RESOURCES: {name!r} given twice in {text!r}")
        resources[name] = number_or_text(amount)
    return resources


BundleOption = Annotated[
    list[str] | None,
    typer.Option(
        "--bundle",
        help="A gang: one bundle's node resources, NAME=AMOUNT,... (repeat per bundle).",
    ),
]
BundlesOption = Annotated[
    int | None,
    typer.Option(
        "--bundles",
        min=1,
        max=1000,
        help="A gang of N bundles alike, each of the node resources given.",
    ),
]
StrategyOption = Annotated[
    str | None,
    typer.Option(
        help="How a gang's bundles go on nodes: PACK, SPREAD, STRICT_PACK, STRICT_SPREAD."
    ),
]


def gang(
    resources: dict[str, Any], bundle: list[str] | None, count: int | None
) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
    """``(resources, bundles)`` from a command line's amounts and its gang options:
    ``--bundle`` gives each bundle; ``--bundles N`` makes N bundles of the node resources
    given. Pools stay the gang's own (they are cluster-wide)."""
    if bundle and count is not None:
        raise InvalidRequest(
            "--bundle and --bundles: got both; expected each bundle with --bundle, or N "
            "bundles alike with --bundles N"
        )
    pools = {name: value for name, value in resources.items() if name not in NODE_RESOURCES}
    on_nodes = {name: value for name, value in resources.items() if name in NODE_RESOURCES}
    if bundle:
        if on_nodes:
            raise InvalidRequest(
                f"--bundle with {', '.join(on_nodes)} beside it; expected every node "
                "resource of a gang in its --bundle options (pools may stay beside them)"
            )
        return pools, [parse_resources(text) for text in bundle]
    if count is not None:
        if not on_nodes:
            raise InvalidRequest(
                f"--bundles {count}: no node resources given; expected the amounts of one "
                "bundle (cpu, gpu, memory, disk) beside it"
            )
        return pools, [dict(on_nodes) for _ in range(count)]
    return resources, None


def _gang_request(resources: dict[str, Any]) -> dict[str, Any]:
    """Pools named beside a gang's bundles, as a request takes them: {'pools': {...}}."""
    pools = dict(resources.pop("pools", None) or {})
    pools.update(resources)
    return {"pools": pools} if pools else {}


# -- the commands ------------------------------------------------------------------------------


def status(
    address: AddressOption = None,
    local: LocalOption = False,
    policy: PolicyForLocal = None,
    as_json: JsonOption = False,
    connect_timeout: ConnectTimeout = CALL_TIMEOUT_S,
) -> None:
    """Capacity, grants and measured use per node and resource; pools, tenants, bottlenecks."""

    async def read(manager: ResourceManager) -> tuple[Snapshot, dict[str, Any]]:
        snapshot = await manager.snapshot()
        health = await manager.check_resource_health()
        return snapshot, health.to_dict()

    snapshot, health = _run_read(address, local, policy, connect_timeout, read)
    if as_json:
        _print_json({"health": health, "snapshot": snapshot})
        return
    from anya_resource.render import render_status

    Console().print(render_status(snapshot, health))


def _matches(
    lease: dict[str, Any], tenant: str | None, node: str | None, priority: str | None
) -> bool:
    if tenant is not None and lease.get("tenant") != tenant:
        return False
    if node is not None and not str(lease.get("node_id", "")).startswith(node.lower()):
        return False
    return priority is None or str(lease.get("priority", "")).lower() == priority.lower()


def leases(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's leases.")] = None,
    node: Annotated[
        str | None, typer.Option(help="Only leases on this node (its hex id, or a prefix).")
    ] = None,
    priority: Annotated[
        str | None, typer.Option(help="Only this priority class (e.g. high, batch).")
    ] = None,
    address: AddressOption = None,
    local: LocalOption = False,
    policy: PolicyForLocal = None,
    as_json: JsonOption = False,
    connect_timeout: ConnectTimeout = CALL_TIMEOUT_S,
) -> None:
    """Who holds what: every active lease (never its token), filtered."""

    async def read(manager: ResourceManager) -> list[dict[str, Any]]:
        return await manager.leases()

    everything = _run_read(address, local, policy, connect_timeout, read)
    chosen = [lease for lease in everything if _matches(lease, tenant, node, priority)]
    chosen.sort(key=lambda lease: (lease.get("node_id", ""), -lease.get("granted_at", 0.0)))
    if as_json:
        _print_json(chosen)
        return
    from anya_resource.render import leases_table

    filtered = len(everything) - len(chosen)
    title = f"Leases: {len(chosen)}" + (f" ({filtered} filtered out)" if filtered else "")
    console = Console()
    console.print(leases_table(chosen, time.time(), title=title, width=console.width))


def what_if(
    resources: Annotated[
        str | None,
        typer.Argument(
            help="What one request asks for: 'memory=4GiB,cpu=1' (pools by name: "
            '\'postgres=1\') or JSON: \'{"memory": "4GiB", "pools": {"postgres": 1}}\'. '
            "Omit it for a gang given by --bundle.",
            show_default=False,
        ),
    ] = None,
    count: Annotated[int, typer.Option(min=1, max=100_000, help="How many such requests.")] = 1,
    priority: Annotated[str, typer.Option(help="Their priority class, or an int.")] = "normal",
    tenant: Annotated[str | None, typer.Option(help="The tenant charged.")] = None,
    preemptible: Annotated[
        bool, typer.Option("--preemptible", help="They could be preempted themselves.")
    ] = False,
    node: Annotated[str | None, typer.Option(help="Only on this node (hex id).")] = None,
    bundle: BundleOption = None,
    bundles: BundlesOption = None,
    strategy: StrategyOption = None,
    address: AddressOption = None,
    local: LocalOption = False,
    policy: PolicyForLocal = None,
    as_json: JsonOption = False,
    connect_timeout: ConnectTimeout = CALL_TIMEOUT_S,
) -> None:
    """Dry run: would COUNT such requests be granted now, where, and what would they preempt?"""
    if resources is None and not bundle:
        raise InvalidRequest(
            "what-if: nothing asked for; expected RESOURCES such as 'cpu=1,memory=4GiB', "
            "or a gang's --bundle options"
        )
    request, gang_bundles = gang(parse_resources(resources) if resources else {}, bundle, bundles)
    if gang_bundles is not None:
        request = _gang_request(request)
    level = priority_level(priority)
    # Checked before connecting: bad input is named at once, as typed (core/requests.py).
    check_count(count)
    check_fields(
        request,
        priority=level,
        tenant=tenant,
        preemptible=preemptible,
        node=node,
        bundles=gang_bundles,
        strategy=strategy,
    )

    async def read(manager: ResourceManager) -> WhatIfAnswer:
        return await manager.what_if(
            request,
            count,
            priority=level,
            tenant=tenant,
            preemptible=preemptible,
            node=node,
            bundles=gang_bundles,
            strategy=strategy,
        )

    result = _run_read(address, local, policy, connect_timeout, read)
    if as_json:
        _print_json(result)
        return
    from anya_resource.render import render_what_if

    console = Console()
    label = resources or f"{len(gang_bundles or [])} bundles, {strategy or 'PACK'}"
    console.print(render_what_if(result, label, time.time(), width=console.width))


# -- deploying ---------------------------------------------------------------------------------


def _stored_policy_json() -> str | None:
    from anya_resource.actors import boundary, store

    stored = boundary.send(store.stored_policy, boundary.STORE)
    return None if stored is None else stored.decode()


def _alive_nodes() -> int:
    import ray

    from anya_resource.actors import boundary

    nodes: list[dict[str, Any]] = boundary.send(ray.nodes)
    return sum(1 for node in nodes if node.get("Alive"))


def _ping(handle: Any) -> dict[str, Any]:
    from anya_resource.actors import boundary

    reply: dict[str, Any] = boundary.get(lambda: handle.ping.remote(), timeout=CALL_TIMEOUT_S)
    return reply


def _wait_ready(handle: Any, seconds: float) -> dict[str, Any]:
    """Poll until the coordinator is ready with one agent per alive node (bounded)."""
    deadline = time.monotonic() + seconds
    last: dict[str, Any] = {}
    problem = "no answer yet"
    while True:
        try:
            last = _ping(handle)
            alive = _alive_nodes()
            if not last.get("ready"):
                problem = "still recovering its lease tables"
            elif last.get("nodes", 0) >= alive:
                return last
            else:
                problem = f"{last.get('nodes', 0)} of {alive} agents started"
        except ResourceError as exc:  # translated at the boundary, one line
            problem = str(exc)
        if time.monotonic() >= deadline:
            raise ManagerUnavailable(
                f"the coordinator was not ready within {seconds:g} s ({problem}); "
                f"check `ray status` and the coordinator's log"
            )
        time.sleep(0.25)


def up(
    policy: Annotated[
        Path | None,
        typer.Option(help="The policy YAML file (default: the shipped defaults)."),
    ] = None,
    address: AddressOption = None,
    wait: Annotated[
        float,
        typer.Option(min=1.0, max=3600.0, help="Seconds to wait for the coordinator and agents."),
    ] = 60.0,
    as_json: JsonOption = False,
    connect_timeout: ConnectTimeout = CALL_TIMEOUT_S,
) -> None:
    """Deploy the coordinator (which starts one agent per node) onto the cluster."""
    from anya_resource.actors import deploy
    from anya_resource.config import Policy

    target = _target(address, local=False)
    resolved = _load_policy(policy) or Policy.default()
    wanted = resolved.model_dump_json()
    _connect(target, connect_timeout)
    try:
        handle = _coordinator_handle()
        if handle is not None:
            stored = _stored_policy_json() if policy is not None else None
            if (
                stored is not None
                and Policy.model_validate_json(stored).model_dump_json() != wanted
            ):
                raise DeployConflict(
                    f"anya-resource is already up on {target} with another policy; "
                    f"run `{PROG} down --address {target}` first to change it"
                )
            state = "already-up"
        else:
            handle = deploy.coordinator(resolved)
            state = "deployed"
        info = _wait_ready(handle, wait)
        nodes = _alive_nodes()
    finally:
        _disconnect()
    report = {
        "status": state,
        "address": target,
        "epoch": info.get("epoch"),
        "nodes": nodes,
        "agents": info.get("nodes"),
        "policy": str(policy) if policy is not None else "default",
    }
    if as_json:
        _print_json(report)
        return
    verb = "is up" if state == "deployed" else "was already up"
    typer.echo(
        f"anya-resource {verb} on {target}: coordinator ready (epoch {report['epoch']}), "
        f"{report['agents']} agent(s) for {nodes} node(s), policy {report['policy']}"
    )


def _gone(seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _coordinator_handle() is None:
            return True
        time.sleep(0.2)
    return _coordinator_handle() is None


def down(
    address: AddressOption = None,
    force: Annotated[
        bool, typer.Option("--force", help="Remove it even while leases are held.")
    ] = False,
    as_json: JsonOption = False,
    connect_timeout: ConnectTimeout = CALL_TIMEOUT_S,
) -> None:
    """Remove the coordinator and every agent from the cluster (Ray itself keeps running)."""
    from anya_resource.actors import boundary, deploy

    target = _target(address, local=False)
    _connect(target, connect_timeout)
    try:
        handle = _coordinator_handle()
        if handle is None:
            report: dict[str, Any] = {"status": "not-deployed", "address": target, "leases": 0}
        else:
            try:
                held: list[dict[str, Any]] = boundary.get(
                    lambda: handle.lease_list.remote(), timeout=CALL_TIMEOUT_S
                )
            except ResourceError:
                held = []  # a broken coordinator is exactly what one may want to remove
            if held and not force:
                tenants = sorted({str(lease.get("tenant")) for lease in held})
                raise DeployConflict(
                    f"{len(held)} lease(s) are held (tenants: {', '.join(tenants)}); their "
                    "holders would lose them: release them first, or pass --force"
                )
            deploy.teardown()
            removed = _gone(10.0)
            report = {
                "status": "removed" if removed else "removing",
                "address": target,
                "leases": len(held),
            }
    finally:
        _disconnect()
    if as_json:
        _print_json(report)
        return
    if report["status"] == "not-deployed":
        typer.echo(f"anya-resource is not deployed on {target}; nothing to remove")
    else:
        dropped = f", dropping {report['leases']} lease(s)" if report["leases"] else ""
        typer.echo(f"anya-resource {report['status']} from {target}{dropped}")


def register(app: typer.Typer) -> None:
    """Add the operator commands to ``app`` (the command group of ``cli``)."""
    app.command()(status)
    app.command()(leases)
    app.command("what-if")(what_if)
    app.command()(up)
    app.command()(down)
