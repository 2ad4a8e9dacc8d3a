"""``benchmarks/submit_ahead_probe.py`` runs and writes every figure (no timing asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.raytools import run_benchmark

pytestmark = pytest.mark.ray

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "submit_ahead_probe.py"


def test_one_depth_each_way(tmp_path: Path) -> None:
    out = tmp_path / "probe.json"
    args = ("--depths", "2", "--n", "100", "--burst", "40", "--gap", "0.5", "--rounds", "1")
    done = run_benchmark(BENCH, *args, "--json", str(out), timeout=300)
    assert "tasks/s" in done.stdout
    figures = json.loads(out.read_text())["depths"]["2"]
    for way in ("ray_cap", "ray_pg", "leased", "leased_slots"):
        assert figures[way]["steady_per_s"] > 0 and figures[way]["burst_per_s"] > 0
        assert figures[way]["workers_started_per_burst"] >= 0
