"""The core benchmark runs (quick mode) and produces figures for every point.

No timing is asserted here: timings belong in docs/performance.md, not in CI.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "core_bench.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("core_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building
    spec.loader.exec_module(module)
    return module


def test_quick_run_has_figures_for_each_point(tmp_path: Path) -> None:
    bench = _load()
    out = tmp_path / "results" / "core_bench.json"
    figures = bench.main(["--quick", "--json", str(out)])
    points = [(row["nodes"], row["waiting"]) for row in figures["points"]]
    assert points == list(bench.POINTS)
    for row in figures["points"]:
        for key in ("cycles_per_s", "us_per_decision", "baseline_ns_per_op", "ratio_to_baseline"):
            assert row[key] > 0, (key, row)
    assert figures["summary"]["large_over_small"] > 0
    assert json.loads(out.read_text()) == figures


def test_scarce_bench_places_gpu_cycles_on_the_few_gpu_nodes(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("scarce_bench", BENCH.parent / "scarce_bench.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "scarce_bench.json"
    figures = bench.main(["--json", str(out)])
    assert [row["nodes"] for row in figures["points"]] == list(bench.NODE_COUNTS)
    assert [row["gpu_nodes"] for row in figures["points"]] == [1, 5]
    assert all(row["gpu_us_per_cycle"] > 0 for row in figures["points"])
    assert json.loads(out.read_text()) == figures
