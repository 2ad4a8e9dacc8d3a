"""``benchmarks/job_bench.py --jobs 1`` runs and writes every figure (no timing asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.raytools import run_benchmark

pytestmark = pytest.mark.ray

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "job_bench.py"


def test_one_job_each_way(tmp_path: Path) -> None:
    out = tmp_path / "job_bench.json"
    done = run_benchmark(BENCH, "--jobs", "1", "--json", str(out), timeout=300)
    assert "submit to running" in done.stdout
    result = json.loads(out.read_text())
    for way in ("ray", "ray_env", "queue"):
        row = result["ways"][way]
        assert 0 < row["running_s_median"] <= row["ended_s_median"]
    assert result["leases_left"] == 0
