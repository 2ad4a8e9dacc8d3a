"""``benchmarks/lease_bench.py --quick`` runs and writes every figure (no timing asserted).

The benchmark starts its own private Ray, so it runs in a subprocess: never inside a
pytest process that may already have Ray initialised by another test module.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.raytools import run_benchmark

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks" / "lease_bench.py"
PHASES = (
    "raw_async",
    "raw_sync",
    "lease_seq",
    "warm_seq",
    "raw_tasks",
    "lease_tasks",
    "raw_actors",
    "lease_actors",
)
FIGURES = ("rate_per_s", "rates_per_s", "count", "p50_ms", "p99_ms", "cpu_ms_per_op")


def test_quick_run_writes_all_figures(tmp_path: Path) -> None:
    out = tmp_path / "lease_bench.json"
    done = run_benchmark(BENCH, "--quick", "--json", str(out), timeout=240)
    assert "Leases through Ray" in done.stdout

    result = json.loads(out.read_text())
    machine = result["machine"]
    assert machine["nproc"] and machine["python"] and machine["ray"]
    for phase in PHASES:
        row = result["phases"][phase]
        for figure in FIGURES:
            assert figure in row, f"{phase} has no {figure}"
        assert row["count"] > 0 and row["rate_per_s"] > 0
        assert 0 < row["p50_ms"] <= row["p99_ms"]
    for phase in ("lease_seq", "warm_seq", "lease_tasks", "lease_actors"):
        assert result["ratios"][phase]["vs_raw_async"] > 0
        assert "cpu_in_raw_calls" in result["ratios"][phase]
    assert result["ratios"]["lease_tasks"]["vs_raw_tasks"] > 0
    assert result["ratios"]["lease_actors"]["vs_raw_actors"] > 0
    target = result["target"]
    assert target["sequential_ratio_min"] == 0.5
    assert isinstance(target["met"], bool)
    assert target["warm_ratio_min"] == 30.0 and isinstance(target["warm_met"], bool)
    # Every release sent in the background arrived: nothing is left held.
    assert result["leases_left"] == 0
