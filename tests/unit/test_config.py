"""The scheduling policy: defaults, YAML files, validation errors, env overrides."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from anya_resource.config import (
    AgingPolicy,
    LeasePolicy,
    Policy,
    PoolPolicy,
    PressurePolicy,
    Priority,
    TenantPolicy,
)
from anya_resource.errors import ConfigError, InvalidRequest, ResourceError

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "cluster-configs"
DEFAULT_FILE = CONFIGS / "policy.yaml"
BITCOIN_FILE = CONFIGS / "examples" / "bitcoin-node.yaml"
ML_FILE = CONFIGS / "examples" / "ml-inference.yaml"


@pytest.fixture(autouse=True)
def _no_env_overrides(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Overrides set in the developer's shell must not leak into these tests."""
    for name in list(os.environ):
        if name.startswith("ANYA_RESOURCE_"):
            monkeypatch.delenv(name)
    yield


def write(tmp_path: Path, text: str, name: str = "policy.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def config_error(data: Any, source: str = "test.yaml") -> str:
    """The message of the ConfigError that ``data`` raises."""
    with pytest.raises(ConfigError) as info:
        Policy.from_dict(data, source=source)
    error = info.value
    assert isinstance(error, InvalidRequest)
    assert isinstance(error, ValueError)
    assert isinstance(error, ResourceError)
    return str(error)


def load_error(path: Path) -> str:
    """The message of the ConfigError that loading ``path`` raises."""
    with pytest.raises(ConfigError) as info:
        Policy.load(path)
    return str(info.value)


# -- the shipped default -------------------------------------------------------


def test_default_equals_the_shipped_file() -> None:
    assert Policy.load(DEFAULT_FILE) == Policy.default()


def test_shipped_file_spells_out_every_key() -> None:
    # Not just equal after completion from defaults: the file lists every key.
    data = yaml.safe_load(DEFAULT_FILE.read_text())
    assert data == Policy.default().model_dump()


def test_shipped_file_explains_every_key() -> None:
    lines = DEFAULT_FILE.read_text().splitlines()
    for index, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or ":" not in stripped:
            continue
        key = stripped.split(":", 1)[0]
        commented = "#" in line or (index > 0 and lines[index - 1].strip().startswith("#"))
        # The priority classes are explained together, above `priorities:`.
        in_priorities = key in Policy.default().priorities
        assert commented or in_priorities, f"line {index + 1} ({key}) has no comment"


def test_default_values() -> None:
    policy = Policy.default()
    assert policy == Policy()
    assert policy.placement == "spread"
    assert policy.heartbeat_s == 1.0
    assert policy.default_pool == "default"
    assert policy.reserve == {"memory": "10%", "cpu": 0.5}
    assert policy.pressure == PressurePolicy(memory_high=85, memory_low=75)
    assert policy.priorities == {"critical": 100, "high": 75, "normal": 50, "low": 25, "batch": 0}
    assert policy.aging == AgingPolicy(per_second=1.0, max_boost=40)
    assert policy.lease.default_ttl == 60
    assert policy.lease.renew_every == 20
    assert policy.tenants == {}
    assert policy.pools == {"default": PoolPolicy(size=64, kind="slot")}


def test_policy_is_frozen() -> None:
    policy = Policy.default()
    with pytest.raises(ValueError):
        policy.placement = "pack"  # type: ignore[misc]


# -- the examples --------------------------------------------------------------


def test_bitcoin_example_loads() -> None:
    policy = Policy.load(BITCOIN_FILE)
    assert set(policy.tenants) == {"transactions", "sync"}
    transactions = policy.tenants["transactions"]
    assert "cpu" in transactions.guaranteed
    assert "cpu" in transactions.limit
    rpc = policy.pools["bitcoin-rpc"]
    assert rpc.kind == "bitcoin-rpc"
    assert rpc.url == "http://127.0.0.1:8332"
    assert rpc.size == 16
    assert rpc.cookie_file or (rpc.username and rpc.password_env)
    postgres = policy.pools["postgres"]
    assert postgres.kind == "postgres"
    assert postgres.dsn
    assert postgres.size == 20
    # Partial: the rest comes from the default, including the default pool.
    assert policy.pools["default"] == Policy.default().pools["default"]
    assert policy.priorities == Policy.default().priorities


def test_ml_example_loads() -> None:
    policy = Policy.load(ML_FILE)
    assert policy.placement == "pack"
    ml = policy.tenants["ml"]
    assert ml.guaranteed == {"gpu": 1, "memory": "8GiB"}
    assert ml.limit == {"memory": "64GiB"}
    assert "batch" in policy.tenants
    assert policy.pressure != PressurePolicy()
    assert policy.pressure.memory_low < policy.pressure.memory_high
    http = [pool for pool in policy.pools.values() if pool.kind == "http"]
    assert len(http) == 1
    assert http[0].url
    assert "default" in policy.pools


@pytest.mark.parametrize("path", [DEFAULT_FILE, BITCOIN_FILE, ML_FILE])
def test_files_hold_no_secrets(path: Path) -> None:
    for pool in Policy.load(path).pools.values():
        for text in (pool.url, pool.dsn):
            assert text is None or "@" not in text, "credentials belong in password_env"


# -- partial policies ----------------------------------------------------------


def test_empty_dict_is_the_default() -> None:
    assert Policy.from_dict({}) == Policy.default()


def test_partial_dict_is_completed_from_defaults() -> None:
    policy = Policy.from_dict({"placement": "pack", "aging": {"per_second": 2.5}})
    assert policy.placement == "pack"
    assert policy.aging.per_second == 2.5
    assert policy.aging.max_boost == 40  # the rest of `aging` kept
    assert policy.lease == LeasePolicy()
    assert policy.pools["default"].size == 64


def test_partial_pool_keeps_the_default_pool() -> None:
    policy = Policy.from_dict({"pools": {"postgres": {"size": 20, "kind": "postgres"}}})
    assert set(policy.pools) == {"default", "postgres"}
    assert policy.pools["postgres"].idle_timeout_s == 30  # model defaults fill the pool


def test_default_pool_can_be_resized() -> None:
    policy = Policy.from_dict({"pools": {"default": {"size": 8}}})
    assert policy.pools["default"] == PoolPolicy(size=8, kind="slot")


def test_default_pool_removed_with_null() -> None:
    policy = Policy.from_dict({"pools": {"default": None}})
    assert "default" not in policy.pools
    assert policy.pools == {}
    assert policy.default_pool is None


def test_default_pool_removed_and_another_named_default() -> None:
    policy = Policy.from_dict(
        {"pools": {"default": None, "pg": {"size": 2, "kind": "postgres"}}, "default_pool": "pg"}
    )
    assert set(policy.pools) == {"pg"}
    assert policy.default_pool == "pg"


def test_default_pool_removed_but_still_named_is_an_error() -> None:
    message = config_error({"pools": {"default": None}, "default_pool": "default"})
    assert "default_pool 'default' is not among pools []" in message


def test_null_section_restores_its_defaults() -> None:
    assert Policy.from_dict({"pressure": None, "tenants": None}) == Policy.default()


def test_optional_values_can_be_null() -> None:
    policy = Policy.from_dict({"default_pool": None})
    assert policy.default_pool is None
    assert "default" in policy.pools


def test_from_dict_does_not_change_its_input() -> None:
    data = {"pools": {"default": None, "x": {"size": 1}}, "default_pool": "x"}
    before = yaml.safe_dump(data)
    Policy.from_dict(data)
    assert yaml.safe_dump(data) == before


def test_partial_file(tmp_path: Path) -> None:
    path = write(tmp_path, "heartbeat_s: 2\nlease: {default_ttl: 120}\n")
    policy = Policy.load(path)
    assert policy.heartbeat_s == 2.0
    assert policy.lease.default_ttl == 120
    assert policy.lease.renew_every == 20
    assert policy.pools == Policy.default().pools


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_empty_file_is_the_default(tmp_path: Path, text: str) -> None:
    assert Policy.load(write(tmp_path, text)) == Policy.default()


def test_tenants_and_amounts() -> None:
    policy = Policy.from_dict(
        {
            "tenants": {
                "ml": {"guaranteed": {"gpu": 1, "memory": "8GiB"}, "limit": {"memory": "64GiB"}},
                "equal": {"guaranteed": {"cpu": 2}, "limit": {"cpu": "2"}, "borrowing": False},
            },
            "reserve": {"memory": "2GiB", "cpu": "5%", "disk": "0%", "gpu": 0},
        }
    )
    assert policy.tenants["ml"] == TenantPolicy(
        guaranteed={"gpu": 1, "memory": "8GiB"}, limit={"memory": "64GiB"}
    )
    assert policy.tenants["equal"].borrowing is False
    assert policy.reserve["cpu"] == "5%"


# -- validation errors ---------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "location", "expected"),
    [
        # unknown keys, at every level: the message lists the keys that are allowed
        ({"placment": "pack"}, "placment", "expected one of ['aging', 'default_pool'"),
        ({"lease": {"ttl": 5}}, "lease.ttl", "expected one of ['default_ttl', 'max_ttl'"),
        (
            {"pools": {"x": {"size": 1, "sise": 2}}},
            "pools.x.sise",
            "expected one of ['connect_timeout_s', 'cookie_file'",
        ),
        (
            {"tenants": {"t": {"guarantee": {"cpu": 1}}}},
            "tenants.t.guarantee",
            "expected one of ['borrowing', 'guaranteed', 'limit']",
        ),
        ({"health": {"missed": 1}}, "health.missed", "expected one of ['missed_heartbeats'"),
        # wrong types
        ({"heartbeat_s": "fast"}, "heartbeat_s", "valid number"),
        ({"heartbeat_s": [1]}, "heartbeat_s", "valid number"),
        ({"placement": "random"}, "placement", "'spread' or 'pack'"),
        ({"placement": 1}, "placement", "'spread' or 'pack'"),
        ({"pools": []}, "pools", "valid dictionary"),
        ({"pools": {"x": 5}}, "pools.x", "valid dictionary or instance of PoolPolicy"),
        ({"pools": {"x": {"size": "many"}}}, "pools.x.size", "valid integer"),
        ({"pools": {"x": {"size": 2.5}}}, "pools.x.size", "valid integer"),
        ({"pools": {"x": {"size": 1, "kind": "redis"}}}, "pools.x.kind", "'slot', 'postgres'"),
        ({"priorities": {"high": "top"}}, "priorities.high", "valid integer"),
        ({"priorities": {"high": 1.5}}, "priorities.high", "valid integer"),
        ({"priorities": {"high": 10**7}}, "priorities", "outside [-1000000, 1000000]"),
        ({"tenants": {"t": {"borrowing": "maybe"}}}, "tenants.t.borrowing", "valid boolean"),
        ({"tenants": ["ml"]}, "tenants", "valid dictionary"),
        ({"aging": {"per_second": -1}}, "aging.per_second", "greater than or equal to 0"),
        ({"lease": {"default_ttl": 0}}, "lease.default_ttl", "greater than 0"),
        ({"heartbeat_s": 0}, "heartbeat_s", "greater than 0"),
        ({"health": {"missed_heartbeats": 0}}, "health.missed_heartbeats", "greater than or eq"),
        # pressure thresholds
        (
            {"pressure": {"memory_low": 85}},
            "pressure",
            "memory_low (85.0) must be below memory_high",
        ),
        ({"pressure": {"memory_low": 90}}, "pressure", "must be below memory_high (85.0)"),
        ({"pressure": {"memory_high": 101}}, "pressure.memory_high", "less than or equal to 100"),
        ({"pressure": {"cpu_high": 90}}, "pressure", "cpu_high and cpu_low go together"),
        ({"pressure": {"cpu_high": 50, "cpu_low": 60}}, "pressure", "cpu_low (60.0) must be below"),
        # lease times
        ({"lease": {"renew_every": 60}}, "lease", "renew_every (60.0) must be below default_ttl"),
        ({"lease": {"max_ttl": 30}}, "lease", "default_ttl (60.0) is above max_ttl (30.0)"),
        # tenants: guaranteed above limit, bad amounts
        (
            {"tenants": {"t": {"guaranteed": {"cpu": 4}, "limit": {"cpu": 2}}}},
            "tenants.t",
            "guaranteed.cpu (4) is above limit.cpu (2); expected guaranteed <= limit",
        ),
        (
            {"tenants": {"t": {"guaranteed": {"memory": "8GiB"}, "limit": {"memory": "4GiB"}}}},
            "tenants.t",
            "expected guaranteed <= limit",
        ),
        (
            {"tenants": {"t": {"guaranteed": {"memory": "lots"}}}},
            "tenants.t.guaranteed",
            "amount of 'memory': got 'lots', expected a non-negative byte count",
        ),
        (
            {"tenants": {"t": {"limit": {"cpu": -1}}}},
            "tenants.t.limit",
            "expected a non-negative finite number of cores",
        ),
        # pools
        ({"pools": {"x": {"size": 0}}}, "pools.x.size", "greater than or equal to 1"),
        ({"pools": {"x": {"size": -5}}}, "pools.x.size", "greater than or equal to 1"),
        ({"pools": {"x": {"kind": "slot"}}}, "pools.x.size", "Field required"),
        ({"pools": {"x": {"size": 1, "idle_timeout_s": 0}}}, "pools.x.idle_timeout_s", "greater"),
        ({"pools": {"memory": {"size": 1}}}, "pools", "clash with builtin resource names"),
        ({"pools": {"default": {"size": 0}}}, "pools.default.size", "greater than or equal to 1"),
        # reserve
        ({"reserve": {"gpus": 1}}, "reserve", "unknown resource(s) ['gpus']; expected some of"),
        ({"reserve": {"postgres": 1}}, "reserve", "expected some of ['cpu', 'disk', 'gpu'"),
        ({"reserve": {"memory": "100%"}}, "reserve", "percent '100%' must be in [0, 100)"),
        ({"reserve": {"memory": "-5%"}}, "reserve", "must be in [0, 100)"),
        ({"reserve": {"memory": "abc%"}}, "reserve", "percent 'abc%' must be in [0, 100)"),
        ({"reserve": {"memory": "lots"}}, "reserve", "expected a non-negative byte count"),
        ({"reserve": {"cpu": -1}}, "reserve", "expected a non-negative finite number of cores"),
    ],
)
def test_invalid_values(data: dict[str, Any], location: str, expected: str) -> None:
    message = config_error(data, source="/etc/anya/policy.yaml")
    assert message.startswith("/etc/anya/policy.yaml: invalid policy")
    assert f"\n  {location}: " in message
    assert expected in message


def test_default_pool_naming_a_missing_pool() -> None:
    message = config_error({"default_pool": "nope"})
    assert message.startswith("test.yaml: invalid policy")
    assert "default_pool 'nope' is not among pools ['default']" in message


def test_every_error_is_reported_at_once() -> None:
    message = config_error({"heartbeat_s": "x", "lease": {"ttl": 1}, "pools": {"x": {"size": 0}}})
    for location in ("heartbeat_s", "lease.ttl", "pools.x.size"):
        assert f"\n  {location}: " in message


def test_error_quotes_the_bad_value() -> None:
    message = config_error({"pools": {"x": {"size": "sixteen"}}})
    assert "(got 'sixteen')" in message


@pytest.mark.parametrize("data", [[1, 2], "placement: pack", 42, None, ("a", 1)])
def test_non_mapping_top_level_dict(data: Any) -> None:
    message = config_error(data, source="inline")
    assert message.startswith("inline: expected a mapping at the top level")


def test_source_defaults_to_dict() -> None:
    with pytest.raises(ConfigError, match=r"^<dict>: invalid policy"):
        Policy.from_dict({"heartbeat_s": -1})


# -- files ---------------------------------------------------------------------


def test_file_errors_name_the_file_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, "pools:\n  bitcoin-rpc:\n    size: 0\n    kind: bitcoin-rpc\n")
    message = load_error(path)
    assert message.startswith(f"{path}: invalid policy")
    assert "pools.bitcoin-rpc.size: Input should be greater than or equal to 1" in message


def test_file_unknown_key(tmp_path: Path) -> None:
    path = write(tmp_path, "lease:\n  default_ttl: 60\n  renew_evry: 10\n")
    message = load_error(path)
    assert str(path) in message
    assert "lease.renew_evry: unknown key; expected one of" in message
    assert "'renew_every'" in message


@pytest.mark.parametrize(
    "text",
    [
        "placement: [spread\n",
        "pools:\n  default: {size: 64\n",
        "a: b: c\n",
        "key: 'open\n",
        "\t- x",
    ],
)
def test_invalid_yaml(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    message = load_error(path)
    assert message.startswith(f"{path}: not valid YAML")
    assert "line" in message  # where in the file


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n", "true\n"])
def test_non_mapping_top_level_file(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    assert load_error(path).startswith(f"{path}: expected a mapping at the top level")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    message = load_error(path)
    assert message.startswith(f"{path}: cannot read policy file")
    assert "No such file or directory" in message


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read policy file"):
        Policy.load(tmp_path)


def test_load_accepts_str_and_path(tmp_path: Path) -> None:
    path = write(tmp_path, "placement: pack\n")
    assert Policy.load(str(path)) == Policy.load(path)
    assert Policy.load(path).placement == "pack"


# -- environment overrides -----------------------------------------------------


def test_env_overrides_a_top_level_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANYA_RESOURCE_HEARTBEAT_S", "2.5")
    monkeypatch.setenv("ANYA_RESOURCE_PLACEMENT", "pack")
    policy = Policy.default()
    assert policy.heartbeat_s == 2.5
    assert policy.placement == "pack"


def test_env_overrides_a_nested_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANYA_RESOURCE_AGING__PER_SECOND", "2")
    monkeypatch.setenv("ANYA_RESOURCE_LEASE__DEFAULT_TTL", "90")
    policy = Policy.default()
    assert policy.aging.per_second == 2.0
    assert policy.aging.max_boost == 40
    assert policy.lease.default_ttl == 90


def test_env_overrides_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANYA_RESOURCE_POOLS__POSTGRES__SIZE", "10")
    policy = Policy.load(BITCOIN_FILE)
    assert policy.pools["postgres"].size == 10
    assert policy.pools["postgres"].kind == "postgres"  # the rest of the pool kept


def test_env_pool_name_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANYA_RESOURCE_POOLS__BITCOIN_RPC__SIZE", "8")
    policy = Policy.load(BITCOIN_FILE)
    assert policy.pools["bitcoin-rpc"].size == 8
    assert policy.pools["bitcoin-rpc"].url == "http://127.0.0.1:8332"
    assert "bitcoin_rpc" not in policy.pools


def test_env_overrides_the_default_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANYA_RESOURCE_POOLS__DEFAULT__SIZE", "4")
    assert Policy.default().pools["default"].size == 4
    assert Policy.from_dict({"pools": {"default": {"size": 9}}}).pools["default"].size == 4


def test_env_value_is_yaml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANYA_RESOURCE_RESERVE", "{memory: 1GiB}")
    monkeypatch.setenv("ANYA_RESOURCE_DEFAULT_POOL", "null")
    policy = Policy.default()
    assert policy.reserve == {"memory": "1GiB", "cpu": 0.5}  # merged into the default
    assert policy.default_pool is None


def test_env_names_are_case_insensitive_in_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANYA_RESOURCE_pressure__MEMORY_HIGH", "95")
    assert Policy.default().pressure.memory_high == 95


@pytest.mark.parametrize("name", ["ADDRESS", "POLICY", "NAMESPACE", "SOAK_ITERATIONS"])
def test_client_settings_are_not_policy(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(f"ANYA_RESOURCE_{name}", "anything")
    assert Policy.default() == Policy()


def test_other_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANYA_RESOURCE_", "x")
    monkeypatch.setenv("ANYA_HEARTBEAT_S", "x")
    monkeypatch.setenv("HEARTBEAT_S", "x")
    assert Policy.default() == Policy()


@pytest.mark.parametrize(
    ("name", "value", "location"),
    [
        ("ANYA_RESOURCE_HEARTBEAT_S", "fast", "heartbeat_s"),
        ("ANYA_RESOURCE_POOLS__DEFAULT__SIZE", "0", "pools.default.size"),
        ("ANYA_RESOURCE_PRESSURE__MEMORY_LOW", "99", "pressure"),
        ("ANYA_RESOURCE_NO_SUCH_SETTING", "1", "no_such_setting"),
    ],
)
def test_bad_env_value(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, location: str
) -> None:
    monkeypatch.setenv(name, value)
    message = load_error(DEFAULT_FILE)
    assert message.startswith(f"{DEFAULT_FILE}: invalid policy")
    assert f"\n  {location}: " in message
    assert name in message  # says the value came from the environment


def test_env_value_that_is_not_yaml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANYA_RESOURCE_RESERVE", "{memory: [1GiB")
    with pytest.raises(ConfigError, match="environment variable ANYA_RESOURCE_RESERVE"):
        Policy.default()


# -- priority_level ------------------------------------------------------------


@pytest.mark.parametrize(
    ("priority", "level"),
    [("critical", 100), ("high", 75), ("normal", 50), ("low", 25), ("batch", 0)],
)
def test_priority_level_by_name(priority: str, level: int) -> None:
    assert Policy.default().priority_level(priority) == level


def test_priority_level_by_enum_member() -> None:
    policy = Policy.default()
    for member in Priority:
        assert policy.priority_level(member) == policy.priorities[member.value]
    assert policy.priority_level(Priority.HIGH) == 75


@pytest.mark.parametrize("level", [0, 1, 75, -5, 1_000_000])
def test_priority_level_int_passes_through(level: int) -> None:
    assert Policy.default().priority_level(level) == level


def test_priority_level_uses_the_policy() -> None:
    policy = Policy.from_dict({"priorities": {"high": 10, "urgent": 500}})
    assert policy.priority_level("high") == 10
    assert policy.priority_level("urgent") == 500
    assert policy.priority_level(Priority.HIGH) == 10


@pytest.mark.parametrize("priority", ["urgent", "HIGH", "", " high", None, 1.5, [], "75"])
def test_priority_level_unknown(priority: Any) -> None:
    with pytest.raises(InvalidRequest) as info:
        Policy.default().priority_level(priority)
    message = str(info.value)
    assert repr(priority) in message
    assert "expected one of ['batch', 'critical', 'high', 'low', 'normal'] or an int" in message


def test_priorities_cannot_be_empty() -> None:
    # A partial dict merges into the default classes, so only the model sees {}.
    with pytest.raises(ValueError, match="at least one priority class"):
        Policy(priorities={})


def test_priority_enum_missing_from_policy() -> None:
    policy = Policy(priorities={"only": 1})
    with pytest.raises(InvalidRequest, match=r"expected one of \['only'\]"):
        policy.priority_level(Priority.NORMAL)


@pytest.mark.parametrize("priority", [True, False])
def test_priority_level_rejects_bools(priority: bool) -> None:
    with pytest.raises(InvalidRequest, match=r"priority: got (True|False), expected"):
        Policy.default().priority_level(priority)


# -- coerce --------------------------------------------------------------------


def test_coerce_none_is_the_default() -> None:
    assert Policy.coerce(None) == Policy.default()


def test_coerce_policy_is_returned_as_is() -> None:
    policy = Policy.from_dict({"placement": "pack"})
    assert Policy.coerce(policy) is policy


def test_coerce_paths() -> None:
    expected = Policy.load(BITCOIN_FILE)
    assert Policy.coerce(BITCOIN_FILE) == expected
    assert Policy.coerce(str(BITCOIN_FILE)) == expected


def test_coerce_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read policy file"):
        Policy.coerce(str(tmp_path / "missing.yaml"))


def test_coerce_dict() -> None:
    policy = Policy.coerce({"placement": "pack"})
    assert policy.placement == "pack"
    assert policy.pools == Policy.default().pools


def test_coerce_bad_dict() -> None:
    with pytest.raises(ConfigError, match=r"placement: Input should be 'spread' or 'pack'"):
        Policy.coerce({"placement": "everywhere"})


@pytest.mark.parametrize("bad", [42, 1.5, ["placement"], b"policy.yaml", object()])
def test_coerce_bad_type(bad: object) -> None:
    with pytest.raises(ConfigError) as info:
        Policy.coerce(bad)  # type: ignore[arg-type]
    message = str(info.value)
    assert message.startswith(f"policy: got {bad!r}")
    assert "expected a Policy, a YAML path or a dict" in message


@pytest.mark.parametrize(
    "whole", ["ANYA_RESOURCE_LEASE", "ANYA_RESOURCE_POOLS__BITCOIN_RPC"], ids=["top", "pool"]
)
def test_env_setting_a_part_twice_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, whole: str
) -> None:
    part = f"{whole}__SIZE" if "POOLS" in whole else f"{whole}__DEFAULT_TTL"
    monkeypatch.setenv(whole, "{}")
    monkeypatch.setenv(part, "8")
    with pytest.raises(ConfigError) as caught:
        Policy.load(BITCOIN_FILE)
    message = str(caught.value)
    assert whole in message and part in message and "expected only one" in message
