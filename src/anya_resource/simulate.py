"""A discrete-event simulation of the scheduling core: no Ray, no sleeping.

A synthetic cluster (``nodes`` alike) and a synthetic workload (Poisson arrivals,
a weighted mix of request sizes, priorities and tenants, exponential hold times)
drive the pure ``Scheduler`` on a simulated clock. Holders are well behaved: they
release at the end of their hold, and a holder told to let go (``Revoke``)
releases at a random moment before its deadline. The scheduler is ticked every
heartbeat, as the coordinator does.

The result is a ``SimSummary``: grants, rejections by reason, waits per priority,
time-weighted utilisation per resource, preemptions and the binding bottleneck
(from ``snapshot()["bottlenecks"]``, sampled during the run).
"""

from __future__ import annotations

import heapq
import math
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from anya_resource.config import Policy
from anya_resource.core import (
    Decision,
    Grant,
    LeaseRecord,
    Reclaim,
    Reject,
    Request,
    Revoke,
    Scheduler,
    build_request,
    check_invariants,
)
from anya_resource.core.admission import never_fits
from anya_resource.core.bottleneck import binding
from anya_resource.core.model import NODE_RESOURCES, RevokeCause
from anya_resource.core.views import percentile
from anya_resource.errors import Infeasible, InvalidRequest
from anya_resource.quantities import number_or_text, to_units

DEFAULT_PRIORITY_MIX = "critical:5,high:15,normal:40,low:30,batch:10"
# Relative weight, then the request as ``build_request`` takes it.
DEFAULT_SIZES: tuple[tuple[float, dict[str, Any]], ...] = (
    (50.0, {"cpu": 0.5, "memory": "1GiB"}),
    (30.0, {"cpu": 2, "memory": "4GiB"}),
    (15.0, {"cpu": 4, "memory": "16GiB"}),
)
# Added to the defaults when the nodes have GPUs.
DEFAULT_GPU_SIZE: tuple[float, dict[str, Any]] = (5.0, {"cpu": 4, "memory": "16GiB", "gpu": 1})

ProgressCallback = Callable[[float, float], None]
"""Called as ``progress(simulated_seconds_done, duration)``."""


class SimConfigError(InvalidRequest):
    """A simulation setting that cannot work; ``field`` names the setting."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class SimConfig:
    """The synthetic cluster and workload. Amounts as people write them."""

    nodes: int = 10
    memory_per_node: int | str = "64GiB"
    cpu_per_node: float | str = 16
    gpu_per_node: float | str = 0
    disk_per_node: int | str = 0
    rate: float = 12.0  # arrivals per simulated second (Poisson)
    duration: float = 60.0  # simulated seconds of arrivals
    priority_mix: str | Mapping[str, float] = DEFAULT_PRIORITY_MIX
    tenant_mix: str | Mapping[str, float] | None = None  # None: every request is "default"
    preemptible_share: float = 0.3
    hold_mean: float = 10.0  # mean of the exponential hold time, seconds
    timeout: float | None = 60.0  # a request's wait limit; None waits forever
    sizes: Sequence[tuple[float, Mapping[str, Any]]] | None = None  # None: DEFAULT_SIZES
    policy: Policy | str | os.PathLike[str] | Mapping[str, Any] | None = None
    seed: int = 0
    heartbeat: float | None = None  # None: the policy's heartbeat_s
    check_every: int = 0  # check_invariants every N events (0: only at the end)
    bottleneck_samples: int = 20  # snapshots taken to find the binding bottleneck


@dataclass
class SimSummary:
    """What a run showed. ``to_dict()`` is what ``simulate --json`` prints."""

    nodes: int
    duration: float
    seed: int
    rate: float
    submitted: int
    grants: int
    rejections: dict[str, int]
    waits: dict[str, dict[str, float | int | None]]
    utilisation: dict[str, float]
    pool_utilisation: dict[str, float]
    preemptions: int
    revocations: int
    reclaims: dict[str, int]
    still_waiting: int
    held_at_end: int
    peak_waiting: int
    bottleneck: dict[str, Any] | None
    invariant_checks: int
    events: int
    wall_seconds: float
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- parsing the workload ------------------------------------------------------------------


def parse_mix(text: str | Mapping[str, float], what: str) -> dict[str, float]:
    """``"critical:5,high:15"`` (or a mapping) as ``{name: weight}``; weights > 0."""
    items: list[tuple[str, object]] = []
    if isinstance(text, Mapping):
        items.extend(text.items())
    else:
        for part in str(text).split(","):
            name, sep, weight_text = part.strip().partition(":")
            if not sep or not name.strip():
                raise SimConfigError(
                    what, f"got {text!r}, expected name:weight pairs such as 'high:15,batch:10'"
                )
            items.append((name.strip(), _number(what, weight_text.strip())))
    mix: dict[str, float] = {}
    for name, weight in items:
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            raise SimConfigError(what, f"weight of {name!r}: got {weight!r}, expected a number")
        if not math.isfinite(weight) or weight < 0:
            raise SimConfigError(what, f"weight of {name!r}: got {weight!r}, expected >= 0")
        if weight > 0:
            mix[name] = mix.get(name, 0.0) + float(weight)
    if not mix:
        raise SimConfigError(what, f"got {text!r}, expected at least one weight above 0")
    return mix


def parse_size(text: str) -> tuple[float, dict[str, Any]]:
    """``"30:cpu=2,memory=4GiB"`` as ``(30.0, {"cpu": 2, "memory": "4GiB"})``.

    ``bundles=N`` makes it a gang of N such bundles (``strategy=`` one of Ray's four,
    PACK by default): ``"5:cpu=2,gpu=1,bundles=4,strategy=STRICT_SPREAD"``.
    """
    weight_text, sep, spec = text.partition(":")
    if not sep:
        weight_text, spec = "1", text
    weight = _number("size", weight_text.strip())
    if weight <= 0:
        raise SimConfigError("size", f"weight in {text!r} must be above 0")
    resources: dict[str, Any] = {}
    for part in spec.split(","):
        name, eq, amount = part.strip().partition("=")
        if not eq or not name.strip() or not amount.strip():
            raise SimConfigError(
                "size",
                f"got {text!r}, expected WEIGHT:resource=amount,... such as 30:cpu=2,memory=4GiB",
            )
        resources[name.strip()] = number_or_text(amount.strip())
    return weight, resources


def _number(what: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise SimConfigError(what, f"got {text!r}, expected a number") from None
    if not math.isfinite(value):
        raise SimConfigError(what, f"got {text!r}, expected a finite number")
    return value


# -- the run -------------------------------------------------------------------------------

_TICK, _RELEASE, _ARRIVAL = 0, 1, 2


@dataclass(slots=True)
class _Pending:
    hold: float  # how long the holder will keep the lease once granted
    priority: str
    submitted_at: float


@dataclass
class _Prepared:
    policy: Policy
    capacity: dict[str, int]
    sizes: list[dict[str, Any]]
    size_weights: list[float]
    priorities: list[str]
    priority_weights: list[float]
    tenants: list[str | None]
    tenant_weights: list[float]
    heartbeat: float


def _prepare(config: SimConfig) -> _Prepared:
    if isinstance(config.nodes, bool) or not isinstance(config.nodes, int):
        raise SimConfigError("nodes", f"got {config.nodes!r}, expected a whole number")
    if not 1 <= config.nodes <= 100_000:
        raise SimConfigError("nodes", f"got {config.nodes}, expected 1..100000")
    _positive("rate", config.rate)
    _positive("duration", config.duration)
    _positive("hold_mean", config.hold_mean)
    if config.timeout is not None:
        _positive("timeout", config.timeout)
    share = config.preemptible_share
    if isinstance(share, bool) or not isinstance(share, int | float) or not 0 <= share <= 1:
        raise SimConfigError("preemptible_share", f"got {share!r}, expected a fraction in [0, 1]")
    if config.check_every < 0:
        raise SimConfigError("check_every", f"got {config.check_every}, expected >= 0")
    policy = Policy.coerce(config.policy)
    heartbeat = policy.heartbeat_s if config.heartbeat is None else config.heartbeat
    _positive("heartbeat", heartbeat)
    capacity = {
        "memory": _capacity("memory_per_node", "memory", config.memory_per_node),
        "cpu": _capacity("cpu_per_node", "cpu", config.cpu_per_node),
        "gpu": _capacity("gpu_per_node", "gpu", config.gpu_per_node),
        "disk": _capacity("disk_per_node", "disk", config.disk_per_node),
    }
    if config.sizes is not None:
        sized = [(float(w), dict(r)) for w, r in config.sizes]
        if not sized:
            raise SimConfigError("size", "expected at least one request size")
    else:
        sized = [(w, dict(r)) for w, r in DEFAULT_SIZES]
        if capacity["gpu"] >= to_units("gpu", 1):
            sized.append((DEFAULT_GPU_SIZE[0], dict(DEFAULT_GPU_SIZE[1])))
    priorities = parse_mix(config.priority_mix, "priority_mix")
    unknown = sorted(set(priorities) - set(policy.priorities))
    if unknown:
        raise SimConfigError(
            "priority_mix",
            f"unknown priority {unknown}; expected some of {list(policy.priorities)}",
        )
    tenants: dict[str | None, float] = {None: 1.0}
    if config.tenant_mix is not None:
        tenants = {name: w for name, w in parse_mix(config.tenant_mix, "tenant_mix").items()}
    return _Prepared(
        policy=policy,
        capacity=capacity,
        sizes=[r for _, r in sized],
        size_weights=[w for w, _ in sized],
        priorities=list(priorities),
        priority_weights=list(priorities.values()),
        tenants=list(tenants),
        tenant_weights=list(tenants.values()),
        heartbeat=heartbeat,
    )


def _positive(what: str, value: object) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise SimConfigError(what, f"got {value!r}, expected a number above 0")


def _capacity(what: str, resource: str, value: object) -> int:
    try:
        return to_units(resource, value)
    except InvalidRequest as exc:
        raise SimConfigError(what, str(exc)) from None


def _check_sizes(scheduler: Scheduler, prepared: _Prepared) -> None:
    """Every size must be able to fit somewhere, else the run would only measure rejections."""
    for resources in prepared.sizes:
        for tenant in prepared.tenants:
            try:
                request = request_of(prepared.policy, resources, tenant=tenant)
            except InvalidRequest as exc:
                raise SimConfigError("size", f"{_show(resources)}: {exc}") from None
            reason = never_fits(scheduler.state, request)
            if reason is not None:
                raise SimConfigError(
                    "size",
                    f"{_show(resources)} can never be granted on this cluster ({reason}); "
                    "give the nodes more capacity or pass smaller sizes",
                )


def request_of(policy: Policy, size: Mapping[str, Any], **options: Any) -> Request:
    """The request of one size: its resources, or a gang of ``bundles`` of them."""
    if "bundles" not in size and "strategy" not in size:
        return build_request(policy, size, **options)
    count = size.get("bundles", 1)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise SimConfigError("size", f"bundles={count!r}: expected a whole number of bundles >= 1")
    bundle = {k: v for k, v in size.items() if k not in ("bundles", "strategy", "pools")}
    resources = {"pools": size["pools"]} if "pools" in size else {}
    return build_request(
        policy, resources, bundles=[bundle] * count, strategy=size.get("strategy"), **options
    )


def _show(resources: Mapping[str, Any]) -> str:
    return ",".join(f"{name}={amount}" for name, amount in resources.items())


class Simulation:
    """One run. ``Simulation(config).run(progress)`` returns the ``SimSummary``."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.prepared = _prepare(config)
        self.rng = random.Random(config.seed)
        self.scheduler = Scheduler(self.prepared.policy)
        for _ in range(config.nodes):
            node_id = f"{self.rng.getrandbits(224):056x}"  # looks like a Ray node id
            self.scheduler.node_up(node_id, self.prepared.capacity, 0.0)
        _check_sizes(self.scheduler, self.prepared)
        self.events: list[tuple[float, int, int, str]] = []
        self._seq = 0
        self.now = 0.0
        self.pending: dict[str, _Pending] = {}  # submitted, not yet granted or rejected
        self.held: dict[str, LeaseRecord] = {}  # lease id -> lease, while the holder has it
        self.granted: dict[str, int] = dict.fromkeys(NODE_RESOURCES, 0)
        self.pool_granted: dict[str, int] = dict.fromkeys(self.scheduler.pools, 0)
        self.area: dict[str, float] = dict.fromkeys(NODE_RESOURCES, 0.0)
        self.pool_area: dict[str, float] = dict.fromkeys(self.scheduler.pools, 0.0)
        self.waits: dict[str, list[float]] = {name: [] for name in self.prepared.priorities}
        self.outcomes: dict[str, dict[str, int]] = {
            name: {"granted": 0, "rejected": 0} for name in self.prepared.priorities
        }
        self.rejections: dict[str, int] = {}
        self.reclaims: dict[str, int] = {}
        self.submitted = self.grants = self.preemptions = self.revocations = 0
        self.peak_waiting = self.invariant_checks = self.event_count = 0
        self.bottlenecks: dict[tuple[str, str], dict[str, Any]] = {}
        self.bottleneck_samples = 0

    # -- the event loop --------------------------------------------------------------

    def run(self, progress: ProgressCallback | None = None) -> SimSummary:
        started = time.perf_counter()
        config, heartbeat = self.config, self.prepared.heartbeat
        self._push(self.rng.expovariate(config.rate), _ARRIVAL, "")
        self._push(heartbeat, _TICK, "")
        sample_every = config.duration / max(1, config.bottleneck_samples)
        next_sample = sample_every
        while self.events and self.events[0][0] <= config.duration:
            at, _, kind, subject = heapq.heappop(self.events)
            self._advance(at)
            if kind == _ARRIVAL:
                self._arrive()
                self._push(at + self.rng.expovariate(config.rate), _ARRIVAL, "")
            elif kind == _RELEASE:
                self._release(subject)
            else:
                self._apply(self.scheduler.tick(at))
                self._push(at + heartbeat, _TICK, "")
                if at >= next_sample:
                    self._sample_bottleneck()
                    next_sample += sample_every
                if progress is not None:
                    progress(at, config.duration)
            self.event_count += 1
            self.peak_waiting = max(self.peak_waiting, len(self.scheduler.queue))
            if config.check_every and self.event_count % config.check_every == 0:
                self._check()
        self._advance(config.duration)
        self._check()
        if progress is not None:
            progress(config.duration, config.duration)
        return self._summary(time.perf_counter() - started)

    def _push(self, at: float, kind: int, subject: str) -> None:
        self._seq += 1
        heapq.heappush(self.events, (at, self._seq, kind, subject))

    def _advance(self, at: float) -> None:
        """Integrate what is granted over time (for the time-weighted utilisation)."""
        span = at - self.now
        if span > 0:
            for resource, amount in self.granted.items():
                self.area[resource] += amount * span
            for pool, slots in self.pool_granted.items():
                self.pool_area[pool] += slots * span
        self.now = max(self.now, at)

    def _arrive(self) -> None:
        prepared, rng = self.prepared, self.rng
        resources = rng.choices(prepared.sizes, prepared.size_weights)[0]
        priority = rng.choices(prepared.priorities, prepared.priority_weights)[0]
        tenant = rng.choices(prepared.tenants, prepared.tenant_weights)[0]
        preemptible = rng.random() < self.config.preemptible_share
        hold = rng.expovariate(1.0 / self.config.hold_mean)
        lease_policy = prepared.policy.lease
        # The holder renews as asked; modelled by a TTL that outlives the hold.
        ttl = min(lease_policy.max_ttl, hold + lease_policy.default_ttl)
        request: Request = request_of(
            prepared.policy,
            resources,
            priority=priority,
            tenant=tenant,
            ttl=ttl,
            timeout=self.config.timeout,
            preemptible=preemptible,
        )
        self.submitted += 1
        try:
            request_id, decisions = self.scheduler.submit(request, self.now)
        except Infeasible:
            self.rejections["infeasible"] = self.rejections.get("infeasible", 0) + 1
            self._waited(priority, "rejected", 0.0)
            return
        self.pending[request_id] = _Pending(hold, priority, self.now)
        self._apply(decisions)

    def _release(self, lease_id: str) -> None:
        lease = self.held.get(lease_id)
        if lease is None:
            return  # already reclaimed (revoked and past its deadline, expired, ...)
        self._apply(self.scheduler.release(lease_id, lease.token, self.now))

    def _apply(self, decisions: list[Decision]) -> None:
        for decision in decisions:
            if isinstance(decision, Grant):
                self._granted(decision)
            elif isinstance(decision, Reclaim):
                lease = self.held.pop(decision.lease_id, None)
                if lease is not None:
                    self._uncount(lease)
                reason = decision.reason.value
                self.reclaims[reason] = self.reclaims.get(reason, 0) + 1
            elif isinstance(decision, Revoke):
                self.revocations += 1
                if decision.cause is RevokeCause.PREEMPTED:
                    self.preemptions += 1
                if decision.lease_id in self.held:
                    # A well-behaved holder lets go some time before the deadline.
                    at = self.rng.uniform(self.now, max(self.now, decision.deadline))
                    self._push(at, _RELEASE, decision.lease_id)
            elif isinstance(decision, Reject):
                gone = self.pending.pop(decision.request_id, None)
                if gone is not None:  # it waited until now, in vain
                    self._waited(gone.priority, "rejected", self.now - gone.submitted_at)
                reason = decision.reason.value
                self.rejections[reason] = self.rejections.get(reason, 0) + 1

    def _granted(self, grant: Grant) -> None:
        lease = grant.lease
        pending = self.pending.pop(grant.request_id, None)
        if pending is None or lease.lease_id in self.held:
            return  # not one of ours (never happens) or a replayed grant
        self.grants += 1
        self.held[lease.lease_id] = lease
        for resource, amount in lease.resources.items():
            self.granted[resource] += amount
        for pool, slots in lease.pools.items():
            self.pool_granted[pool] += slots
        self._waited(pending.priority, "granted", grant.waited)
        self._push(self.now + pending.hold, _RELEASE, lease.lease_id)

    def _waited(self, priority: str, outcome: str, seconds: float) -> None:
        self.waits[priority].append(seconds)
        self.outcomes[priority][outcome] += 1

    def _uncount(self, lease: LeaseRecord) -> None:
        for resource, amount in lease.resources.items():
            self.granted[resource] -= amount
        for pool, slots in lease.pools.items():
            self.pool_granted[pool] -= slots

    def _check(self) -> None:
        check_invariants(self.scheduler.state)
        self.invariant_checks += 1

    def _sample_bottleneck(self) -> None:
        self.bottleneck_samples += 1
        finding = binding(self.scheduler.snapshot(self.now)["bottlenecks"])
        if finding is None:
            return
        key = (finding["kind"], finding["name"])
        seen = self.bottlenecks.get(key)
        count = 1 if seen is None else seen["count"] + 1
        self.bottlenecks[key] = {"count": count, "finding": finding}

    # -- the summary ------------------------------------------------------------------

    def _summary(self, wall: float) -> SimSummary:
        duration = self.config.duration
        nodes = self.scheduler.nodes.values()
        utilisation: dict[str, float] = {}
        for resource in NODE_RESOURCES:
            grantable = sum(node.grantable(resource) for node in nodes)
            if grantable > 0:
                utilisation[resource] = round(self.area[resource] / (grantable * duration), 6)
        pool_utilisation = {
            pool: round(self.pool_area[pool] / (ledger.size * duration), 6)
            for pool, ledger in self.scheduler.pools.items()
            if self.pool_area[pool] > 0
        }
        # Waits of every request, not only of the granted ones: under saturation the
        # low classes are granted seldom, and their few (early) grants alone would
        # look fast. A rejected request waited until its rejection; one still waiting
        # counts with its wait so far (a lower bound).
        still: dict[str, list[float]] = {name: [] for name in self.waits}
        for pending in self.pending.values():
            still[pending.priority].append(self.now - pending.submitted_at)
        waits: dict[str, dict[str, float | int | None]] = {}
        for name, done in self.waits.items():
            samples = done + still[name]
            waits[name] = {
                "granted": self.outcomes[name]["granted"],
                "rejected": self.outcomes[name]["rejected"],
                "waiting": len(still[name]),
                "mean": _round(sum(samples) / len(samples)) if samples else None,
                "p50": _round(percentile(samples, 50)),
                "p95": _round(percentile(samples, 95)),
                "p99": _round(percentile(samples, 99)),
            }
        return SimSummary(
            nodes=self.config.nodes,
            duration=duration,
            seed=self.config.seed,
            rate=self.config.rate,
            submitted=self.submitted,
            grants=self.grants,
            rejections=dict(sorted(self.rejections.items())),
            waits=waits,
            utilisation=utilisation,
            pool_utilisation=pool_utilisation,
            preemptions=self.preemptions,
            revocations=self.revocations,
            reclaims=dict(sorted(self.reclaims.items())),
            still_waiting=len(self.scheduler.queue),
            held_at_end=len(self.held),
            peak_waiting=self.peak_waiting,
            bottleneck=self._bottleneck(),
            invariant_checks=self.invariant_checks,
            events=self.event_count,
            wall_seconds=round(wall, 3),
            config=self._config_echo(),
        )

    def _bottleneck(self) -> dict[str, Any] | None:
        """The finding that was binding in most samples, with its latest figures."""
        if not self.bottlenecks:
            return None
        (kind, name), seen = max(self.bottlenecks.items(), key=lambda item: item[1]["count"])
        finding = seen["finding"]
        return {
            "kind": kind,
            "name": name,
            "message": finding["message"],
            "recommendation": finding["recommendation"],
            "binding_in": seen["count"],
            "samples": self.bottleneck_samples,
        }

    def _config_echo(self) -> dict[str, Any]:
        prepared = self.prepared
        return {
            "capacity_per_node": dict(prepared.capacity),
            "priority_mix": dict(zip(prepared.priorities, prepared.priority_weights, strict=True)),
            "tenant_mix": {
                t or "default": w
                for t, w in zip(prepared.tenants, prepared.tenant_weights, strict=True)
            },
            "sizes": [
                {"weight": w, "resources": {k: str(v) for k, v in r.items()}}
                for w, r in zip(prepared.size_weights, prepared.sizes, strict=True)
            ],
            "preemptible_share": self.config.preemptible_share,
            "hold_mean": self.config.hold_mean,
            "timeout": self.config.timeout,
            "heartbeat": prepared.heartbeat,
            "placement": prepared.policy.placement,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def simulate(config: SimConfig, progress: ProgressCallback | None = None) -> SimSummary:
    """Run one simulation. Raises ``SimConfigError``/``ConfigError`` for bad settings."""
    return Simulation(config).run(progress)
