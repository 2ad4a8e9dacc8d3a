"""The scheduling policy: pydantic models, YAML loading, environment overrides.

A policy may be partial: whatever it leaves out comes from the shipped default
(``cluster-configs/policy.yaml`` mirrors these defaults). ``ANYA_RESOURCE_*``
environment variables override single settings, with ``__`` between the levels
of a key path (``ANYA_RESOURCE_AGING__PER_SECOND=2``,
``ANYA_RESOURCE_POOLS__POSTGRES__SIZE=10``).
"""

from __future__ import annotations

import copy
import enum
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from anya_resource.errors import ConfigError, InvalidRequest
from anya_resource.inputs import check_name, shown
from anya_resource.quantities import BUILTIN_RESOURCES, to_units

ENV_PREFIX = "ANYA_RESOURCE_"
# Settings read by the client and CLI, not part of the policy.
# Not settings of the policy: where to connect, and what a queued job is given (jobs.py).
_NON_POLICY_ENV = {"ADDRESS", "POLICY", "NAMESPACE", "SOAK_ITERATIONS", "BUDGET", "JOB_ID"}


class Priority(str, enum.Enum):
    """The named priority classes; the policy maps each to an integer."""

    CRITICAL = "critical"
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"
    BATCH = "batch"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_amounts(values: Mapping[str, Any], allow_percent: bool = False) -> dict[str, Any]:
    """Amount maps name builtin resources; pools are only counted in slots."""
    for resource, amount in values.items():
        if allow_percent and isinstance(amount, str) and amount.strip().endswith("%"):
            try:
                percent = float(amount.strip()[:-1])
            except ValueError:
                percent = math.nan
            if not 0 <= percent < 100:
                raise ValueError(f"{resource}: percent {amount!r} must be in [0, 100)")
            continue
        to_units(resource, amount)
    return dict(values)


class TenantPolicy(_Strict):
    """A tenant's quota: a guaranteed share, and a hard limit it may borrow up to."""

    guaranteed: dict[str, Any] = Field(default_factory=dict)
    limit: dict[str, Any] = Field(default_factory=dict)
    borrowing: bool = True

    @field_validator("guaranteed", "limit")
    @classmethod
    def _amounts(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _check_amounts(value)

    @model_validator(mode="after")
    def _guaranteed_within_limit(self) -> TenantPolicy:
        for resource, amount in self.guaranteed.items():
            if resource in self.limit and to_units(resource, amount) > to_units(
                resource, self.limit[resource]
            ):
                raise ValueError(
                    f"guaranteed.{resource} ({amount!r}) is above limit.{resource} "
                    f"({self.limit[resource]!r}); expected guaranteed <= limit"
                )
        return self


PoolKind = Literal["slot", "postgres", "bitcoin-rpc", "http"]


class PoolPolicy(_Strict):
    """A named pool of connection slots with a cluster-wide cap."""

    size: int = Field(ge=1, le=1_000_000)
    kind: PoolKind = "slot"
    url: str | None = None
    dsn: str | None = None
    username: str | None = None
    # Secrets never live in the policy file: only the name of the variable holding them.
    password_env: str | None = None
    cookie_file: str | None = None
    idle_timeout_s: float = Field(default=30.0, gt=0)
    max_lifetime_s: float = Field(default=1800.0, gt=0)
    leak_threshold_s: float = Field(default=60.0, gt=0)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    # Checking a connection before handing it out: postgres runs this SQL (default: an
    # empty query, the cheapest round trip), bitcoin-rpc calls this method with no params,
    # http sends GET to this path (default for both: no call, only a local check).
    validate_query: str | None = None
    # Only connections idle at least this long are checked with a round trip (0: always).
    validate_idle_s: float = Field(default=1.0, ge=0)


class PressurePolicy(_Strict):
    """Percent thresholds of measured use: above ``high`` shrink, below ``low`` restore."""

    memory_high: float = Field(default=85.0, gt=0, le=100)
    memory_low: float = Field(default=75.0, ge=0, le=100)
    cpu_high: float | None = Field(default=None, gt=0, le=100)
    cpu_low: float | None = Field(default=None, ge=0, le=100)

    @model_validator(mode="after")
    def _low_below_high(self) -> PressurePolicy:
        if self.memory_low >= self.memory_high:
            raise ValueError(
                f"memory_low ({self.memory_low}) must be below memory_high ({self.memory_high})"
            )
        if (self.cpu_high is None) != (self.cpu_low is None):
            raise ValueError("cpu_high and cpu_low go together: set both or neither")
        if self.cpu_high is not None and self.cpu_low is not None and self.cpu_low >= self.cpu_high:
            raise ValueError(f"cpu_low ({self.cpu_low}) must be below cpu_high ({self.cpu_high})")
        return self


class AgingPolicy(_Strict):
    """A waiting request gains ``per_second`` priority points, up to ``max_boost``."""

    per_second: float = Field(default=1.0, ge=0, le=1e6)
    max_boost: float = Field(default=40.0, ge=0, le=1e6)


class LeasePolicy(_Strict):
    """Lease lifetimes (seconds)."""

    default_ttl: float = Field(default=60.0, gt=0, le=86400 * 365)
    renew_every: float = Field(default=20.0, gt=0)
    max_ttl: float = Field(default=86400.0, gt=0, le=86400 * 365)
    # How long a revoked lease's holder has to let go before its capacity is reused.
    preemption_grace_s: float = Field(default=5.0, ge=0, le=3600)
    # How long a manager keeps a warm lease (acquired with warm=True) idle for its next
    # acquire of the same kind, unless waiting requests want it back first; 0: never.
    warm_idle_s: float = Field(default=2.0, ge=0, le=3600)
    # How many ``@leased`` tasks a warm lease carries at once: one running, the others
    # queued in Ray in its placement-group bundle, which Ray starts the moment the one
    # before ends (core/share.py ``queue_depth``). A lease given back takes no new task,
    # so a waiter that outranks its holder waits for at most this many of its tasks.
    submit_ahead: int = Field(default=4, ge=1, le=64)
    # When a one-node lease of node resources is reserved in Ray (a placement group):
    # "first_use" when its holder first needs it (``lease.placement_group``, a ``@leased``
    # task), "grant" before the grant is told. Gangs, queued jobs and acquires with
    # ``reserve=True`` are always reserved at grant (docs/architecture.md, "Reserved in Ray").
    reserve_at: Literal["grant", "first_use"] = "first_use"

    @model_validator(mode="after")
    def _renew_before_expiry(self) -> LeasePolicy:
        if self.renew_every >= self.default_ttl:
            raise ValueError(
                f"renew_every ({self.renew_every}) must be below default_ttl ({self.default_ttl})"
            )
        if self.default_ttl > self.max_ttl:
            raise ValueError(f"default_ttl ({self.default_ttl}) is above max_ttl ({self.max_ttl})")
        return self


class HealthPolicy(_Strict):
    """When ``check_resource_health`` calls the cluster unhealthy."""

    wait_threshold_s: float = Field(default=30.0, gt=0)
    missed_heartbeats: int = Field(default=3, ge=1, le=1000)


_DEFAULT_PRIORITIES = {"critical": 100, "high": 75, "normal": 50, "low": 25, "batch": 0}


class Policy(_Strict):
    """The whole scheduling policy. ``Policy.load(path)``, ``Policy.default()``."""

    placement: Literal["spread", "pack"] = "spread"
    heartbeat_s: float = Field(default=1.0, gt=0, le=3600)
    default_pool: str | None = "default"
    reserve: dict[str, Any] = Field(default_factory=lambda: {"memory": "10%", "cpu": 0.5})
    pressure: PressurePolicy = Field(default_factory=PressurePolicy)
    priorities: dict[str, int] = Field(default_factory=lambda: dict(_DEFAULT_PRIORITIES))
    aging: AgingPolicy = Field(default_factory=AgingPolicy)
    lease: LeasePolicy = Field(default_factory=LeasePolicy)
    health: HealthPolicy = Field(default_factory=HealthPolicy)
    tenants: dict[str, TenantPolicy] = Field(default_factory=dict)
    pools: dict[str, PoolPolicy] = Field(
        default_factory=lambda: {"default": PoolPolicy(size=64, kind="slot")}
    )

    @field_validator("reserve")
    @classmethod
    def _reserve(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = set(value) - BUILTIN_RESOURCES
        if unknown:
            raise ValueError(
                f"unknown resource(s) {sorted(unknown)}; expected some of {sorted(BUILTIN_RESOURCES)}"
            )
        return _check_amounts(value, allow_percent=True)

    @field_validator("priorities")
    @classmethod
    def _priorities(cls, value: dict[str, int]) -> dict[str, int]:
        if not value:
            raise ValueError("at least one priority class is needed")
        for name, level in value.items():
            if not -1_000_000 <= level <= 1_000_000:
                raise ValueError(f"{name}: {level} is outside [-1000000, 1000000]")
        return value

    @field_validator("tenants")
    @classmethod
    def _tenant_names(cls, value: dict[str, TenantPolicy]) -> dict[str, TenantPolicy]:
        for name in value:
            check_name("tenant name", name)
        return value

    @field_validator("pools")
    @classmethod
    def _pool_names(cls, value: dict[str, PoolPolicy]) -> dict[str, PoolPolicy]:
        for name in value:
            check_name("pool name", name)  # no controls or bidi marks in tables and labels
        clash = set(value) & (BUILTIN_RESOURCES | {"pools"})
        if clash:
            raise ValueError(f"pool name(s) {sorted(clash)} clash with builtin resource names")
        return value

    @model_validator(mode="after")
    def _default_pool_exists(self) -> Policy:
        if self.default_pool is not None and self.default_pool not in self.pools:
            raise ValueError(
                f"default_pool {self.default_pool!r} is not among pools {sorted(self.pools)}"
            )
        return self

    def priority_level(self, priority: Priority | str | int) -> int:
        """The integer level of a priority class name, a ``Priority`` or a raw int."""
        if isinstance(priority, bool):
            raise InvalidRequest(
                f"priority: got {shown(priority)}, expected a class name or an int"
            )
        if isinstance(priority, int):
            return priority
        name = priority.value if isinstance(priority, Priority) else priority
        if not isinstance(name, str) or name not in self.priorities:
            raise InvalidRequest(
                f"priority: got {shown(priority)}, expected one of {sorted(self.priorities)} or an int"
            )
        return self.priorities[name]

    # -- construction -------------------------------------------------------

    @classmethod
    def default(cls) -> Policy:
        """The shipped default, with ``ANYA_RESOURCE_*`` overrides applied."""
        return cls.from_dict({})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> Policy:
        """A (partial) policy from a dict, completed from the default.

        Mappings merge key by key into the default; a key set to ``None`` removes
        it (``pools: {default: null}`` drops the default pool).
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: expected a mapping at the top level, got {data!r}")
        merged = _merge(cls().model_dump(), data)
        overrides = _env_overrides(os.environ, merged)
        merged = _merge(merged, overrides)
        pools = merged.get("pools")
        if (
            "default_pool" not in data
            and "default_pool" not in overrides
            and isinstance(pools, Mapping)
            and merged.get("default_pool") not in pools
        ):
            # `pools: {default: null}` removes the default pool: it cannot stay the default
            # unless the policy names it (then the error below says it is missing).
            merged["default_pool"] = None
        try:
            return cls.model_validate(merged)
        except ValidationError as exc:
            message = _describe(exc, source)
            if overrides:
                message += f"\n  (after environment overrides {_policy_env_names(os.environ)})"
            raise ConfigError(message) from None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Policy:
        """A policy from a YAML file (partial files are completed from the default)."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read policy file: {exc.strerror}") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        return cls.from_dict({} if data is None else data, source=str(path))

    @classmethod
    def coerce(cls, policy: Policy | str | os.PathLike[str] | Mapping[str, Any] | None) -> Policy:
        """Accept what the public API accepts: a Policy, a path, a dict or None."""
        if policy is None:
            return cls.default()
        if isinstance(policy, Policy):
            return policy
        if isinstance(policy, str | os.PathLike):
            return cls.load(policy)
        if isinstance(policy, Mapping):
            return cls.from_dict(policy)
        raise ConfigError(f"policy: got {policy!r}, expected a Policy, a YAML path or a dict")


def _merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(dict(base))
    for key, value in update.items():
        if value is None and isinstance(merged.get(key), Mapping):
            del merged[key]
        elif isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _policy_env_names(environ: Mapping[str, str]) -> list[str]:
    names = []
    for name in sorted(environ):
        key = name.removeprefix(ENV_PREFIX)
        if key != name and key and key not in _NON_POLICY_ENV:
            names.append(name)
    return names


def _env_overrides(environ: Mapping[str, str], current: Mapping[str, Any]) -> dict[str, Any]:
    """``ANYA_RESOURCE_A__B=value`` as ``{"a": {"b": value}}`` (value parsed as YAML)."""
    overrides: dict[str, Any] = {}
    set_by: dict[tuple[str, ...], str] = {}  # key path -> the variable that set it
    for name in _policy_env_names(environ):
        key = name.removeprefix(ENV_PREFIX)
        try:
            value = yaml.safe_load(environ[name])
        except yaml.YAMLError as exc:
            raise ConfigError(f"environment variable {name}: not a valid value: {exc}") from None
        node, known = overrides, current
        parts = [part.lower() for part in key.split("__")]
        for index, part in enumerate(parts):
            # Env names cannot hold dashes: BITCOIN_RPC names the pool bitcoin-rpc.
            if isinstance(known, Mapping) and part not in known and part.replace("_", "-") in known:
                part = part.replace("_", "-")
            parts[index] = part
            if index == len(parts) - 1:
                node[part] = value
                break
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                break  # a variable set this whole part: reported below
            node = child
            known = known.get(part, {}) if isinstance(known, Mapping) else {}
        path = tuple(parts)
        for other_path, other in set_by.items():
            shorter = min(len(path), len(other_path))
            if path[:shorter] == other_path[:shorter]:
                raise ConfigError(
                    f"environment variables {other} and {name} both set "
                    f"{'.'.join(path[:shorter])}; expected only one of them"
                )
        set_by[path] = name
    return overrides


def _describe(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid policy"]
    for error in exc.errors():
        location = ".".join(str(part) for part in error["loc"]) or "<top>"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            model = _model_at(error["loc"][:-1])
            if model is not None:
                message = f"unknown key; expected one of {sorted(model.model_fields)}"
        if error["loc"]:  # a whole-policy error already quotes the values it is about
            message += f" (got {error.get('input')!r})"
        lines.append(f"  {location}: {message}")
    return "\n".join(lines)


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model validating the mapping at ``loc`` (``("pools", "x")`` -> PoolPolicy)."""
    model: type[BaseModel] = Policy
    parts = list(loc)
    while parts:
        field = model.model_fields.get(str(parts.pop(0)))
        if field is None:
            return None
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
            continue
        # dict[str, Model]: the next part is a tenant or pool name.
        args = get_args(annotation)
        if not (parts and args and isinstance(args[-1], type) and issubclass(args[-1], BaseModel)):
            return None
        parts.pop(0)
        model = args[-1]
    return model
