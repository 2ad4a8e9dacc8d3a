"""The discrete-event simulation of the core, and the ``simulate`` command."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from anya_resource.cli import app
from anya_resource.core.model import NODE_RESOURCES
from anya_resource.errors import ConfigError, InvalidRequest
from anya_resource.simulate import (
    SimConfig,
    SimConfigError,
    Simulation,
    parse_mix,
    parse_size,
    simulate,
)

REPO = Path(__file__).resolve().parents[2]
ML_POLICY = REPO / "cluster-configs" / "examples" / "ml-inference.yaml"

# 4 nodes of 16 cores: about 2.3x more cpu asked for than there is, all run long.
SATURATED = SimConfig(
    nodes=4, rate=10.0, duration=240.0, hold_mean=10.0, timeout=None, seed=7, check_every=200
)
SUMMARY_KEYS = {
    "nodes",
    "duration",
    "seed",
    "submitted",
    "grants",
    "rejections",
    "waits",
    "utilisation",
    "pool_utilisation",
    "preemptions",
    "revocations",
    "still_waiting",
    "peak_waiting",
    "bottleneck",
    "invariant_checks",
}


@pytest.fixture(scope="module")
def saturated() -> Simulation:
    simulation = Simulation(SATURATED)
    simulation.run()
    return simulation


def test_a_light_load_is_granted_at_once() -> None:
    summary = simulate(SimConfig(nodes=4, rate=2.0, duration=60.0, seed=1, check_every=10))
    assert summary.submitted > 60
    assert summary.grants == summary.submitted
    assert summary.rejections == {}
    assert summary.still_waiting == 0
    assert all(row["p99"] == 0.0 for row in summary.waits.values() if row["granted"])
    assert summary.invariant_checks > 10


def test_same_seed_same_run() -> None:
    config = SimConfig(nodes=3, rate=8.0, duration=40.0, seed=3)
    first, second = simulate(config).to_dict(), simulate(config).to_dict()
    first.pop("wall_seconds")
    second.pop("wall_seconds")
    assert first == second
    third = simulate(replace(config, seed=4)).to_dict()
    assert third["submitted"] != first["submitted"] or third["waits"] != first["waits"]


def test_high_waits_less_than_batch_under_saturation(saturated: Simulation) -> None:
    waits = saturated._summary(0.0).waits
    assert waits["high"]["granted"] and waits["batch"]["waiting"]
    assert waits["high"]["p50"] is not None and waits["batch"]["p50"] is not None
    assert waits["high"]["mean"] < waits["batch"]["mean"]  # type: ignore[operator]
    assert waits["high"]["p95"] < waits["batch"]["p95"]  # type: ignore[operator]
    assert waits["critical"]["p95"] <= waits["high"]["p95"]  # type: ignore[operator]


def test_saturation_shows_utilisation_preemption_and_the_bottleneck(
    saturated: Simulation,
) -> None:
    summary = saturated._summary(0.0)
    assert set(summary.utilisation) == {"memory", "cpu"}  # no gpu or disk on these nodes
    assert all(0 < value <= 1 for value in summary.utilisation.values())
    assert summary.utilisation["cpu"] > 0.8  # cpu is what binds
    assert summary.preemptions > 0 and summary.revocations >= summary.preemptions
    assert summary.peak_waiting > 0
    assert summary.bottleneck is not None
    assert (summary.bottleneck["kind"], summary.bottleneck["name"]) == ("resource", "cpu")
    assert summary.invariant_checks > 1


def test_the_simulation_counts_what_the_scheduler_holds(saturated: Simulation) -> None:
    scheduler = saturated.scheduler
    for resource in NODE_RESOURCES:
        held = sum(node.granted[resource] for node in scheduler.nodes.values())
        assert saturated.granted[resource] == held
    assert len(saturated.held) == len(scheduler.leases)
    summary = saturated._summary(0.0)
    assert summary.grants == sum(row["granted"] for row in summary.waits.values())  # type: ignore[misc]
    assert summary.still_waiting == sum(row["waiting"] for row in summary.waits.values())  # type: ignore[misc]
    # Everything submitted was granted, rejected, or still waits.
    rejected = sum(summary.rejections.values())
    assert rejected == sum(row["rejected"] for row in summary.waits.values())  # type: ignore[misc]
    assert summary.submitted == summary.grants + rejected + summary.still_waiting


def test_timeouts_become_rejections() -> None:
    summary = simulate(replace(SATURATED, timeout=5.0, duration=60.0, check_every=0))
    assert summary.rejections.get("timeout", 0) > 0
    # A timed-out request leaves no grant behind; p99 wait can pass the timeout by at
    # most one heartbeat (timeouts are found on the tick).
    assert all(row["p99"] is None or row["p99"] <= 5.0 + 1.0 for row in summary.waits.values())


def test_pools_tenants_and_a_policy_file() -> None:
    config = SimConfig(
        nodes=4,
        gpu_per_node=4,
        rate=6.0,
        duration=60.0,
        policy=ML_POLICY,
        tenant_mix="ml:3,batch:1",
        sizes=[parse_size("50:cpu=1,memory=2GiB,model-server=1"), parse_size("20:gpu=1")],
        check_every=20,
    )
    summary = simulate(config)
    assert summary.grants > 0
    assert 0 < summary.pool_utilisation["model-server"] <= 1
    assert "gpu" in summary.utilisation
    assert summary.config["placement"] == "pack"


def test_progress_is_reported_up_to_the_duration() -> None:
    seen: list[tuple[float, float]] = []
    simulate(
        SimConfig(nodes=2, rate=1.0, duration=10.0), lambda done, total: seen.append((done, total))
    )
    assert seen[-1] == (10.0, 10.0)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    assert len(seen) >= 10  # once per heartbeat


def test_mix_and_size_parsing() -> None:
    assert parse_mix("high:15, batch:10,low:0", "mix") == {"high": 15.0, "batch": 10.0}
    assert parse_size("30:cpu=2,memory=4GiB,postgres=1") == (
        30.0,
        {"cpu": 2, "memory": "4GiB", "postgres": 1},
    )
    assert parse_size("cpu=0.5") == (1.0, {"cpu": 0.5})
    for bad in ("high", "high:x", ":3", "high:-1", "high:0"):
        with pytest.raises(SimConfigError):
            parse_mix(bad, "mix")
    for bad in ("x:cpu=1", "0:cpu=1", "3:cpu", "3:"):
        with pytest.raises(SimConfigError):
            parse_size(bad)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"nodes": 0}, "nodes"),
        ({"rate": -1.0}, "rate"),
        ({"duration": float("nan")}, "duration"),
        ({"preemptible_share": 1.5}, "preemptible_share"),
        ({"memory_per_node": "64XB"}, "memory_per_node"),
        ({"priority_mix": "urgent:1"}, "priority_mix"),
        ({"sizes": [(1.0, {"cpu": 64})]}, "size"),  # larger than any node
        ({"sizes": [(1.0, {"cpu": 1, "bogus": 1})]}, "size"),
    ],
)
def test_bad_settings_name_the_setting(change: dict[str, object], field: str) -> None:
    with pytest.raises(SimConfigError) as caught:
        Simulation(replace(SimConfig(), **change))  # type: ignore[arg-type]
    assert caught.value.field == field
    assert isinstance(caught.value, InvalidRequest)


def test_a_bad_policy_file_is_a_config_error(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("placement: sideways\n")
    with pytest.raises(ConfigError, match="placement"):
        Simulation(SimConfig(policy=policy))


# -- the command ---------------------------------------------------------------------


runner = CliRunner()


def test_cli_simulate_json() -> None:
    result = runner.invoke(app, ["simulate", "--duration", "30", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert set(summary) >= SUMMARY_KEYS
    assert summary["grants"] > 0
    assert set(summary["waits"]) == {"critical", "high", "normal", "low", "batch"}
    assert summary["duration"] == 30.0


def test_cli_simulate_table() -> None:
    result = runner.invoke(
        app, ["simulate", "--nodes", "2", "--duration", "20", "--rate", "5", "--seed", "2"]
    )
    assert result.exit_code == 0, result.output
    for text in ("grants", "p95", "Utilisation", "cpu", "Bottleneck"):
        assert text in result.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--nodes", "abc"], "--nodes"),
        (["--nodes", "0"], "--nodes"),
        (["--rate", "-3"], "--rate"),
        (["--memory-per-node", "64XB"], "--memory-per-node"),
        (["--priority-mix", "urgent:5"], "--priority-mix"),
        (["--size", "1:cpu=500"], "--size"),
        (["--timeout", "soon"], "--timeout"),
        (["--policy", "/nonexistent/policy.yaml"], "policy"),
        (["--bogus"], "--bogus"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(args: list[str], expected: str) -> None:
    result = runner.invoke(app, ["simulate", "--duration", "5", *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("anya-resource: error:")
    assert expected in lines[0]
    assert "Traceback" not in result.output
    assert result.stdout == ""
