"""Turning what a caller wrote into a ``Request``, or a clear ``InvalidRequest``.

Two sides check the same input with the same functions: the client, before anything is
sent (``check_fields``, ``check_count``, ``check_ttl``, ``check_seconds``: what needs no
policy), and the coordinator, which never trusts a client (``build_request``, the same
checks again, and what only the deployed policy knows: pool and priority names, the
``max_ttl``). Every message names the value as the caller gave it (``shown``) and says
what was expected.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from anya_resource.config import Policy, Priority
from anya_resource.core.model import NODE_RESOURCES, STRATEGIES, Holder, Request
from anya_resource.errors import InvalidRequest
from anya_resource.inputs import check_name, shown
from anya_resource.quantities import MAX_AMOUNT, format_amount, to_units

MAX_TIMEOUT = 365 * 86400.0
MAX_PRIORITY = 1_000_000  # the range the policy allows its classes; aging adds floats to it
MAX_WHAT_IF = 100_000  # requests one what-if may ask about (``count``)
LEASE_ID_MAX = 200


def build_request(
    policy: Policy,
    resources: Mapping[str, Any],
    *,
    priority: Priority | str | int = "normal",
    tenant: str | None = None,
    ttl: float | None = None,
    timeout: float | None = None,
    preemptible: bool = False,
    node: str | None = None,
    idempotency_key: str | None = None,
    holder: Holder | None = None,
    detached: bool = False,
    within: object = None,
    bundles: object = None,
    strategy: object = None,
    reserve: object = None,
) -> Request:
    """Validate and normalise one request. Raises ``InvalidRequest``; changes nothing.

    ``bundles``: a gang (``core/gangs.py``), a list of node-resource mappings granted all
    at once by ``strategy`` (one of Ray's four; PACK by default); ``resources`` may then
    name only ``pools``, which are cluster-wide. A gang of one bundle is a one-node request.
    """
    if bundles is not None or strategy is not None:
        return _gang(
            policy,
            resources,
            bundles,
            strategy,
            priority=priority,
            tenant=tenant,
            ttl=ttl,
            timeout=timeout,
            preemptible=preemptible,
            node=node,
            idempotency_key=idempotency_key,
            holder=holder,
            detached=detached,
            within=within,
            reserve=reserve,
        )
    if not isinstance(resources, Mapping):
        raise InvalidRequest(
            f"resources: got {shown(resources)}, expected a mapping such as "
            "{'memory': '2GiB', 'cpu': 1, 'pools': {'postgres': 1}}"
        )
    node_amounts: dict[str, int] = {}
    pool_amounts: dict[str, int] = {}
    for name, value in resources.items():
        if name == "pools":
            _add_pools(policy, value, pool_amounts)
        elif name in NODE_RESOURCES:
            amount = to_units(name, value)
            if amount:
                node_amounts[name] = amount
        elif isinstance(name, str) and name in policy.pools:
            _add_pools(policy, {name: value}, pool_amounts)
        else:
            raise InvalidRequest(
                f"unknown resource {shown(name)}; expected one of {list(NODE_RESOURCES)}, "
                f"a pool of the policy {sorted(policy.pools)}, or 'pools'"
            )
    if not node_amounts and not pool_amounts:
        raise InvalidRequest(
            f"resources: {shown(dict(resources))} asks for nothing; expected amounts > 0"
        )
    level = policy.priority_level(priority)
    if not -MAX_PRIORITY <= level <= MAX_PRIORITY:
        raise _bad_priority(priority)
    name = priority.value if isinstance(priority, Priority) else str(priority)
    budget, budget_key = _within(within)
    return Request(
        resources=node_amounts,
        pools=pool_amounts,
        priority=level,
        priority_name=name,
        tenant=_tenant(tenant, holder),
        ttl=_ttl(policy, ttl),
        timeout=check_timeout(timeout),
        preemptible=_flag("preemptible", preemptible),
        node=_node(node),
        idempotency_key=_key(idempotency_key),
        holder=holder if holder is not None else Holder(),
        detached=_flag("detached", detached),
        within=budget,
        within_key=budget_key,
        reserve=_reserve(policy, reserve, node_amounts, budget, gang=False),
    )


def _add_pools(policy: Policy, value: object, into: dict[str, int]) -> None:
    if not isinstance(value, Mapping):
        raise InvalidRequest(f"pools: got {shown(value)}, expected a mapping of pool name to slots")
    for pool, slots in value.items():
        if pool not in policy.pools:
            raise InvalidRequest(
                f"unknown pool {shown(pool)}; expected one of the policy's pools {sorted(policy.pools)}"
            )
        amount = to_units(pool, slots)
        if amount:
            into[pool] = into.get(pool, 0) + amount


def _bad_priority(priority: object) -> InvalidRequest:
    return InvalidRequest(
        f"priority: got {shown(priority)}, expected a class name or an int in "
        f"[{-MAX_PRIORITY}, {MAX_PRIORITY}]"
    )


# -- what a client checks before it sends anything (no policy needed) ---------------------


def check_fields(
    resources: object,
    *,
    priority: object = "normal",
    tenant: object = None,
    timeout: object = None,
    ttl: object = None,
    preemptible: object = False,
    node: object = None,
    detached: object = False,
    max_ttl: float = MAX_TIMEOUT,
    bundles: object = None,
    strategy: object = None,
    reserve: object = None,
) -> None:
    """Everything of a request that can be checked without the policy: the amounts, the
    priority's type and range, names, flags, ``timeout`` and ``ttl`` (up to ``max_ttl``,
    the deployed policy's when the client knows it). The coordinator checks all of it
    again in ``build_request``, with the pool and priority names of its policy."""
    if bundles is not None or strategy is not None:
        check_gang(resources, bundles, strategy, node)
        assert isinstance(resources, Mapping)
        resources = {k: v for k, v in resources.items() if k == "pools"}
    if reserve is not None and not isinstance(reserve, bool):
        raise InvalidRequest(f"reserve: got {shown(reserve)}, expected True, False or None")
    check_resources(resources)
    check_priority(priority)
    if tenant is not None:
        check_name("tenant", tenant)
    _node(node)
    _flag("preemptible", preemptible)
    _flag("detached", detached)
    check_timeout(timeout)
    check_ttl(ttl, max_ttl)


def check_resources(resources: object) -> None:
    """A mapping of amounts, each valid for its resource (``to_units``); names that are
    not node resources are pools, whose names only the coordinator's policy knows."""
    if not isinstance(resources, Mapping):
        raise InvalidRequest(
            f"resources: got {shown(resources)}, expected a mapping such as "
            "{'memory': '2GiB', 'cpu': 1, 'pools': {'postgres': 1}}"
        )
    for name, value in resources.items():
        if name == "pools":
            if not isinstance(value, Mapping):
                raise InvalidRequest(
                    f"pools: got {shown(value)}, expected a mapping of pool name to slots"
                )
            for pool, slots in value.items():
                to_units(check_name("pool", pool), slots)
        elif isinstance(name, str) and name:
            to_units(name, value)
        else:
            raise InvalidRequest(
                f"unknown resource {shown(name)}; expected one of {list(NODE_RESOURCES)}, "
                "a pool of the policy, or 'pools'"
            )


def check_priority(priority: object) -> None:
    """A ``Priority``, a class name, or an int in range (the names are the policy's)."""
    if isinstance(priority, Priority):
        return
    if isinstance(priority, bool):
        raise _bad_priority(priority)
    if isinstance(priority, int):
        if not -MAX_PRIORITY <= priority <= MAX_PRIORITY:
            raise _bad_priority(priority)
        return
    if not isinstance(priority, str):
        raise _bad_priority(priority)
    check_name("priority", priority)


def check_count(count: object) -> int:
    """How many requests a what-if asks about: a whole number in [1, ``MAX_WHAT_IF``]
    (not a bool, however Python counts ``True``)."""
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_WHAT_IF:
        raise InvalidRequest(
            f"count: got {shown(count)}, expected a whole number of requests in "
            f"[1, {MAX_WHAT_IF:,}]"
        )
    return count


def check_ttl(ttl: object, max_ttl: float) -> float | None:
    """None (the default, or the lease's own) or seconds in (0, ``max_ttl``]."""
    if ttl is None:
        return None
    return finite_seconds("ttl", ttl, max_ttl)


def check_seconds(what: str, value: object) -> float | None:
    """None (all of it), or seconds in [0, a year] (how far back a history goes)."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool) and value == 0:
        return 0.0
    try:
        return finite_seconds(what, value, MAX_TIMEOUT)
    except InvalidRequest:
        raise InvalidRequest(
            f"{what}: got {shown(value)}, expected seconds in [0, {MAX_TIMEOUT:.15g}] or None"
        ) from None


def check_lease_id(lease_id: object) -> str:
    """A lease id as grants give them: a string of 1 to 200 characters."""
    if not isinstance(lease_id, str) or not 0 < len(lease_id) <= LEASE_ID_MAX:
        raise InvalidRequest(
            f"lease_id: got {shown(lease_id)}, expected the id of a lease (a string) as "
            "returned with a grant"
        )
    return lease_id


def finite_seconds(what: str, value: object, upper: float) -> float:
    """A number of seconds in (0, ``upper``]; else ``InvalidRequest`` naming the value."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(f"{what}: got {shown(value)}, expected a number of seconds")
    # An int too large for a float (2**1024) is simply out of range.
    if isinstance(value, int) and not -upper <= value <= upper:
        raise InvalidRequest(f"{what}: got {shown(value)}, expected seconds in (0, {upper:.15g}]")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds <= 0 or seconds > upper:
        raise InvalidRequest(f"{what}: got {shown(value)}, expected seconds in (0, {upper:.15g}]")
    return seconds


def check_timing(timeout: object, ttl: object, max_ttl: float = MAX_TIMEOUT) -> None:
    """What a client checks of ``timeout`` and ``ttl`` before it starts its clock.

    The coordinator checks them again against its policy (``ttl`` up to its max_ttl,
    which the client knows too once connected); this keeps a bad value from being turned
    into a deadline first (a negative timeout became "try once", ``"5"`` a ``TypeError``).
    """
    check_timeout(timeout)
    check_ttl(ttl, max_ttl)


def check_timeout(timeout: object) -> float | None:
    """None (wait for as long as it takes), 0 (try once) or seconds in (0, a year]."""
    if timeout is None:
        return None
    if isinstance(timeout, int | float) and not isinstance(timeout, bool) and timeout == 0:
        return 0.0  # try once, never wait
    return finite_seconds("timeout", timeout, MAX_TIMEOUT)


def _ttl(policy: Policy, ttl: object) -> float:
    if ttl is None:
        return policy.lease.default_ttl
    return finite_seconds("ttl", ttl, policy.lease.max_ttl)


def _tenant(tenant: object, holder: Holder | None) -> str:
    if tenant is None:
        return holder.job_id if holder is not None and holder.job_id else "default"
    return check_name("tenant", tenant)


def _node(node: object) -> str | None:
    if node is None:
        return None
    if not isinstance(node, str) or not node or len(node) > 200 or not node.isascii():
        raise InvalidRequest(f"node: got {shown(node)}, expected a Ray node id in hex")
    return node


def _key(key: object) -> str | None:
    if key is None:
        return None
    return check_name("idempotency_key", key)


def _within(within: object) -> tuple[str | None, str | None]:
    """A budget to draw from: None, or ``[lease_id, budget key]`` (``Scheduler.budget_key``)."""
    if within is None:
        return None, None
    if (
        isinstance(within, list | tuple)
        and len(within) == 2
        and all(isinstance(part, str) and 0 < len(part) <= 200 for part in within)
    ):
        return check_name("within", within[0]), str(within[1])
    raise InvalidRequest(f"within: got {shown(within)}, expected the budget's [lease_id, key]")


def _flag(what: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidRequest(f"{what}: got {shown(value)}, expected True or False")
    return value


MAX_BUNDLES = 1000  # bundles in one gang (Ray's placement groups take about as many)


def _gang(
    policy: Policy,
    resources: Mapping[str, Any],
    bundles: object,
    strategy: object,
    **options: Any,
) -> Request:
    """``build_request`` for ``bundles=``: each bundle checked as a request's resources."""
    amounts, chosen = check_gang(resources, bundles, strategy, options.get("node"))
    summed: dict[str, int] = {}
    for bundle in amounts:
        for name, amount in bundle.items():
            summed[name] = summed.get(name, 0) + amount
    for name, amount in summed.items():
        if amount > MAX_AMOUNT:
            raise InvalidRequest(
                f"bundles: {len(amounts)} bundles ask for more {name} in all than can be "
                f"counted; expected a total below {format_amount(name, MAX_AMOUNT)}"
            )
    # The rest (pools, priority, tenant, ttl...) is checked as for any request, with the
    # first bundle as its resources; the gang then takes the sum of all of them.
    assert isinstance(bundles, list | tuple)
    first = {**bundles[0], **({"pools": resources["pools"]} if "pools" in resources else {})}
    whole = build_request(policy, first, **options)
    if len(amounts) == 1:
        return whole  # one bundle: a one-node request, whatever the strategy
    reserved = _reserve(policy, options.get("reserve"), summed, whole.within, gang=True)
    return replace(
        whole, resources=summed, bundles=tuple(amounts), strategy=chosen, reserve=reserved
    )


def check_gang(
    resources: object, bundles: object, strategy: object, node: object = None
) -> tuple[list[dict[str, int]], str]:
    """A gang's bundles in core units and its strategy, or ``InvalidRequest`` naming what
    was wrong: no bundles or more than ``MAX_BUNDLES``, an empty bundle, a bundle naming
    a pool or an unknown resource, a bad amount, a strategy not among Ray's four, node
    resources beside ``bundles=``, or a ``node=`` (a gang's nodes are its strategy's)."""
    if bundles is None:
        raise InvalidRequest(
            f"strategy: got {shown(strategy)} without bundles; expected bundles=[...] with it"
        )
    chosen = _strategy(strategy)
    if not isinstance(bundles, list | tuple) or not bundles:
        raise InvalidRequest(
            f"bundles: got {shown(bundles)}, expected a non-empty list of mappings such as "
            "[{'cpu': 2, 'gpu': 1}, {'cpu': 2, 'gpu': 1}]"
        )
    if len(bundles) > MAX_BUNDLES:
        raise InvalidRequest(
            f"bundles: got {len(bundles):,} bundles, expected at most {MAX_BUNDLES:,}"
        )
    if not isinstance(resources, Mapping):
        raise InvalidRequest(f"resources: got {shown(resources)}, expected a mapping")
    extra = [name for name in resources if name != "pools"]
    if extra:
        raise InvalidRequest(
            f"resources: got {shown(extra)} beside bundles=; expected the node resources "
            "in the bundles, and only 'pools' (cluster-wide) beside them"
        )
    if node is not None:
        raise InvalidRequest(
            f"node: got {shown(node)} with bundles=; a gang's nodes are chosen "
            "by its strategy, expected node=None"
        )
    return [_bundle(index, bundle) for index, bundle in enumerate(bundles)], chosen


# What Ray can reserve of a lease: disk is not a Ray resource, pools are ours alone.
RAY_RESERVED = ("cpu", "gpu", "memory")


def _reserve(
    policy: Policy, reserve: object, amounts: Mapping[str, int], within: str | None, gang: bool
) -> bool:
    """Whether the lease is reserved in Ray before its grant is told.

    Never for what Ray cannot reserve (pools, disk) or for a lease drawn from a budget
    (it runs in its budget's reservation); else as asked, and by default for a gang and
    when the policy says ``lease.reserve_at: grant``.
    """
    if reserve is not None and not isinstance(reserve, bool):
        raise InvalidRequest(f"reserve: got {shown(reserve)}, expected True, False or None")
    if within is not None or not any(amounts.get(r) for r in RAY_RESERVED):
        return False
    if reserve is not None:
        return reserve
    return gang or policy.lease.reserve_at == "grant"


def _strategy(strategy: object) -> str:
    if strategy is None:
        return "PACK"
    if isinstance(strategy, str) and strategy.upper() in STRATEGIES:
        return strategy.upper()
    raise InvalidRequest(f"strategy: got {shown(strategy)}, expected one of {list(STRATEGIES)}")


def _bundle(index: int, bundle: object) -> dict[str, int]:
    """One bundle's node resources in core units: not empty, no pools."""
    if not isinstance(bundle, Mapping):
        raise InvalidRequest(
            f"bundle {index}: got {shown(bundle)}, expected a mapping such as {{'cpu': 2}}"
        )
    amounts: dict[str, int] = {}
    for name, value in bundle.items():
        if name not in NODE_RESOURCES:
            raise InvalidRequest(
                f"bundle {index}: {shown(name)} is not a node resource; expected some of "
                f"{list(NODE_RESOURCES)} (pools are cluster-wide: expected them in the "
                "gang's pools=, resources={'pools': {...}})"
            )
        try:
            amount = to_units(name, value)
        except InvalidRequest as exc:
            raise InvalidRequest(f"bundle {index}: {exc}") from None
        if amount:
            amounts[name] = amount
    if not amounts:
        raise InvalidRequest(
            f"bundle {index}: {shown(dict(bundle))} asks for nothing; expected amounts > 0"
        )
    return amounts
