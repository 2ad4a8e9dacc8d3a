"""notebooks/cluster_capacity.ipynb: committed without outputs, and runs end to end.

The run uses the notebook's default: an embedded local Ray bound to 127.0.0.1, started
in the kernel and shut down by the notebook's last cell (and by the kernel's exit if a
cell fails before it). ``RAY_ADDRESS`` is removed from the kernel's environment so that
it never joins another cluster.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("matplotlib")
pytest.importorskip("pandas")

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "cluster_capacity.ipynb"
RUN_TIMEOUT_S = 150  # per cell; the whole notebook takes ~30 s on 2 idle cores
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _code_cells(notebook: Any) -> list[Any]:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def test_notebook_is_committed_without_outputs() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    for index, cell in enumerate(_code_cells(notebook)):
        assert cell.outputs == [], f"code cell {index} has outputs: run notebooks/strip_outputs.py"
        assert cell.execution_count is None, f"code cell {index} has an execution count"
    assert notebook.metadata.get("kernelspec", {}).get("name") == "python3"


@pytest.fixture(scope="module")
def executed() -> Iterator[Any]:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    saved = os.environ.pop("RAY_ADDRESS", None)  # the kernel inherits this environment
    try:
        client = nbclient.NotebookClient(
            notebook,
            timeout=RUN_TIMEOUT_S,
            kernel_name="python3",
            resources={"metadata": {"path": str(REPO)}},
        )
        client.execute()
    finally:
        if saved is not None:
            os.environ["RAY_ADDRESS"] = saved
    yield notebook


@pytest.mark.ray
def test_notebook_runs_and_draws_its_figures(executed: Any) -> None:
    outputs = [output for cell in _code_cells(executed) for output in cell.outputs]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, [f"{o.ename}: {o.evalue}" for o in errors]
    pngs = [
        base64.b64decode(o.data["image/png"])
        for o in outputs
        if o.output_type == "display_data" and "image/png" in o.get("data", {})
    ]
    assert len(pngs) >= 3, "expected the per-node bar chart, the utilisation and job wait plots"
    assert all(png.startswith(PNG_MAGIC) and len(png) > 5_000 for png in pngs)
    tables = [o for o in outputs if "text/html" in o.get("data", {})]
    assert len(tables) >= 3, "expected the snapshot, pool and bottleneck tables"


@pytest.mark.ray
def test_notebook_answers_the_what_if_and_finds_the_bottleneck(executed: Any) -> None:
    text = "\n".join(
        output.get("text", "") + output.get("data", {}).get("text/plain", "")
        for cell in _code_cells(executed)
        for output in cell.outputs
    )
    assert "of 20 replicas:" in text
    assert "they would preempt:" in text  # the batch leases are preemptible, lower priority
    assert "postgres pool:" in text  # eight workers on four slots: the binding pool
    assert "released" in text and "done" in text  # the clean-up cell ran
    assert "job queue: 3 job(s)" in text
    assert text.count(": succeeded, waited") == 3  # the three queued jobs ran
