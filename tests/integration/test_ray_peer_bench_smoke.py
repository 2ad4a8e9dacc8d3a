"""``benchmarks/ray_peer_bench.py --quick`` runs and writes every figure (no timing asserted).

The benchmark starts its own private Ray instances (one node, then a 1 head + 3 worker
cluster), each in a process of its own, so it runs in a subprocess: never inside a
pytest process that may already have Ray initialised by another test module.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.raytools import run_benchmark

pytestmark = [pytest.mark.ray, pytest.mark.cluster, pytest.mark.timeout(660)]

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks" / "ray_peer_bench.py"
CONTENDERS = ("ray_cap", "semaphore", "leased")
CONFIGURATIONS = {"single": 1, "cluster": 4}
POINTS = tuple(f"{kind}/cap{cap}" for kind in ("noop", "sleep2ms", "sleep20ms") for cap in (4, 32))
PRIORITY_FIGURES = (
    "high_over_low_p99",
    "high_p99_ms",
    "low_p99_ms",
    "high_p50_ms",
    "low_p50_ms",
    "high_count",
    "low_count",
)


def test_quick_run_writes_all_figures(tmp_path: Path) -> None:
    out = tmp_path / "ray_peer_bench.json"
    done = run_benchmark(BENCH, "--quick", "--json", str(out), timeout=600)
    assert "@leased against Ray's own cap" in done.stdout

    result = json.loads(out.read_text())
    machine = result["machine"]
    assert machine["nproc"] and machine["python"] and machine["ray"]
    assert result["config"]["quick"] is True
    assert set(result["configurations"]) == set(CONFIGURATIONS)
    for name, nodes in CONFIGURATIONS.items():
        config = result["configurations"][name]
        assert "error" not in config, config.get("error")
        assert config["nodes"] == nodes
        assert config["addresses"] == ["127.0.0.1"]

        assert set(config["throughput"]) == set(POINTS)
        for key, point in config["throughput"].items():
            for contender in CONTENDERS:
                row = point["contenders"][contender]
                assert row["rate_per_s"] > 0, f"{name} {key} {contender}: {row}"
                assert len(row["rates_per_s"]) == result["config"]["rounds"]
                assert not row["errors"], row["errors"]
            for contender in ("semaphore", "leased", "driver_cap"):
                assert point["vs_ray_cap"][contender] > 0

        priority = config["priority"]
        for contender in CONTENDERS:
            row = priority["contenders"][contender]
            for figure in PRIORITY_FIGURES:
                assert figure in row, f"{name} priority {contender} has no {figure}"
            assert row["high_count"] > 0 and row["low_count"] > 0
            assert not row["errors"], row["errors"]
        assert set(priority["vs_ray_cap"]) == {"semaphore", "leased"}

        kill = config["kill"]["contenders"]
        for contender in CONTENDERS:
            assert {"recovery_s", "worst_s", "recoveries_s", "recovered"} <= set(kill[contender])
        # Ray frees a dead worker's resources; a semaphore actor never gets its unit back.
        assert kill["ray_cap"]["recovered"] and kill["ray_cap"]["recovery_s"] >= 0
        assert not kill["semaphore"]["recovered"]
        assert isinstance(config["leases_left"], int)

    targets = result["targets"]
    for name in (
        "leased_rate_vs_ray_cap",
        "leased_priority_high_over_low_p99",
        "leased_kill_recovery_s",
    ):
        assert isinstance(targets[name]["met"], bool)
    assert targets["leased_rate_vs_ray_cap"]["min"] == 1.0
    assert targets["leased_priority_high_over_low_p99"]["max"] == 0.1
    assert targets["leased_kill_recovery_s"]["max"] == 1.0
