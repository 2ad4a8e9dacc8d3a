"""Find the coordinator, or deploy it; start an embedded local Ray when there is none.

Actor handles are cached per process and per cluster: looking one up costs about as
much as a call, and after ``ray.shutdown()`` and ``ray.init()`` of another cluster
(notebooks and test suites do this) a handle of the old one would fail with Ray's
"it's from a different cluster". Many processes deploying at once end with one
coordinator, because the actor is named and created with ``get_if_exists=True``.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from typing import Any

import ray

from anya_resource.actors import boundary, store
from anya_resource.actors.naming import COORDINATOR_NAME, NAMESPACE, agent_name
from anya_resource.config import Policy
from anya_resource.errors import ManagerUnavailable

_lock = threading.Lock()
_handles: dict[tuple[str, str], Any] = {}  # (cluster, actor name) -> handle


def current_cluster() -> str:
    """Which Ray cluster this process is connected to now (its cluster id)."""
    try:
        cluster, _ = ray._private.worker.global_worker.current_cluster_and_job
        return str(cluster)
    except Exception:  # an older Ray without it: its GCS address will do
        return str(ray.get_runtime_context().gcs_address)


def bind_to_loopback() -> None:
    """Make every Ray started from this process listen on 127.0.0.1 only.

    Ray reads ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` once, when ``ray`` is imported,
    and advertises the machine's address unless it is 0. The command line imports
    ``ray`` (through the package) before a command runs, so the flag read at import
    is set here too; the environment carries it to the processes Ray starts.
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def use_token_if_at_hand() -> bool:
    """Token authentication for a cluster given by address, if a token is at hand.

    Ray 2.60's ``ray start --head`` turns token authentication on when a token exists
    (``~/.ray/auth_token``, made by any earlier local ``ray.init``, or by
    ``ray get-auth-token --generate``), but ``ray.init(address=...)`` with an explicit
    address never turns it on by itself, so it fails. This does what ``ray start`` does:
    with ``RAY_AUTH_MODE`` unset and a token in ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``
    or ``~/.ray/auth_token``, token mode is on for this process (a cluster without
    authentication ignores the token). An explicit ``RAY_AUTH_MODE`` is left alone.
    """
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # a Ray without token authentication
        return False
    return bool(maybe_enable_token_auth_if_token_available(warn_if_disabled=False))


AUTH_HINT = (
    "give this machine the cluster's token: RAY_AUTH_TOKEN=<the head's ~/.ray/auth_token>, "
    "or copy that file to ~/.ray/auth_token"
)


def ensure_ray(address: str | None = None) -> None:
    """Connect to ``address`` (or ``RAY_ADDRESS``), else start a private Ray on loopback.

    Ray's failure to connect is ``ManagerUnavailable``, in one line, with nothing of
    Ray's chained to it."""
    if ray.is_initialized():
        return
    target = address or os.environ.get("RAY_ADDRESS")
    why: BaseException | None = None
    try:
        if target:
            use_token_if_at_hand()
            ray.init(address=target, logging_level=logging.WARNING, log_to_driver=False)
        else:
            # Bind to loopback: without this Ray 2.60 advertises the machine's address.
            bind_to_loopback()
            ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as exc:
        why = exc
    if why is not None:
        where = target or "a new local Ray instance"
        hint = f"; if the cluster uses token authentication, {AUTH_HINT}" if target else ""
        raise ManagerUnavailable(f"cannot reach a Ray cluster at {where}: {_first(why)}{hint}")


def _first(exc: BaseException) -> str:
    """``exc``'s first line (Ray's connection errors run to many)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def coordinator(policy: Policy | None = None) -> Any:
    """The coordinator's handle: found, or deployed with ``policy``."""
    key = (current_cluster(), COORDINATOR_NAME)
    with _lock:
        handle = _handles.get(key)
        if handle is not None:
            return handle
        handle = boundary.find(COORDINATOR_NAME, NAMESPACE)
        if handle is None:
            from anya_resource.actors.coordinator import Coordinator, coordinator_options

            policy_json = (policy or Policy.default()).model_dump_json()
            options = {**coordinator_options(), **boundary.send(_on_head_node)}
            handle = boundary.send(
                lambda: Coordinator.options(**options).remote(policy_json)  # type: ignore[attr-defined]
            )
        _handles[key] = handle
        return handle


def _on_head_node() -> dict[str, Any]:
    """Prefer the head node: losing it loses the cluster anyway, losing a worker should not."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    for node in ray.nodes():  # type: ignore[no-untyped-call]
        if node.get("Alive") and "node:__internal_head__" in node.get("Resources", {}):
            strategy = NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=True)
            return {"scheduling_strategy": strategy}
    return {}


def forget_handles() -> None:
    """Drop cached handles (after ``ray.shutdown`` or a ``down``)."""
    with _lock:
        _handles.clear()


def teardown() -> None:
    """Remove the coordinator and every agent from the cluster (``anya-resource down``).

    The epoch and the secret stay in the key-value store: fencing tokens must keep
    increasing even across a redeploy. The policy goes, so that ``up`` may bring a new
    one, and so does the journal: the leases go with the coordinator.
    """
    nodes = boundary.send(ray.nodes)
    names = [agent_name(node["NodeID"]) for node in nodes] + [COORDINATOR_NAME]
    # Ready job supervisors that no job took (jobs.py) go too: they are the deployment's.
    idle = [
        name
        for name in boundary.send(store.spares)
        if boundary.send(functools.partial(store.claim_spare, name))
    ]
    for name in names + idle:
        boundary.kill(name, NAMESPACE)  # False where it was not deployed
    store.forget_deployment()
    forget_handles()
