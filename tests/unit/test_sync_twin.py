"""``SyncResourceManager`` is generated from ``ResourceManager`` (tools/async_to_sync.py),
is current, is thin, and keeps the blocking API it had."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import sys
from pathlib import Path
from types import ModuleType

import pytest

from anya_resource.client_async import ResourceManager
from anya_resource.client_sync import SyncResourceManager

ROOT = Path(__file__).resolve().parents[2]

# What the hand-written twin offered before it was generated: all of it stays.
BEFORE = {
    "connect",
    "acquire",
    "allocate_memory",
    "acquire_connection",
    "release",
    "use_warm",
    "end_use",
    "release_quietly",
    "renew",
    "snapshot",
    "what_if",
    "budget_key",
    "budgets",
    "warm_statistics",
    "submit_job",
    "jobs",
    "cancel_job",
    "wait_job",
    "check_resource_health",
    "leases",
    "history",
    "close",
    "__enter__",
    "__exit__",
}


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("async_to_sync", ROOT / "tools/async_to_sync.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["async_to_sync"] = module
    spec.loader.exec_module(module)
    return module


def test_the_generated_twin_is_current() -> None:
    tool = _tool()
    assert tool.generate(tool.SOURCE.read_text()) == tool.TARGET.read_text()
    assert tool.main(["--check"]) == 0


def test_the_twin_is_thin() -> None:
    """One line per method, and nothing private of the async manager is touched."""
    tree = ast.parse((ROOT / "src/anya_resource/client_sync.py").read_text())
    private = [
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "_async"
        and node.attr.startswith("_")
        and node.attr not in ("__aexit__",)
    ]
    assert private == []
    (twin,) = [n for n in tree.body if isinstance(n, ast.ClassDef)]
    for method in twin.body:
        if isinstance(method, ast.FunctionDef) and method.name != "_on_loop":
            statements = [
                s
                for s in method.body
                if not isinstance(s, ast.Expr) or not isinstance(s.value, ast.Constant)
            ]
            assert len(statements) == 1, method.name


def test_the_blocking_api_keeps_its_names_and_takes_what_the_async_one_takes() -> None:
    names = {n for n in dir(SyncResourceManager) if not n.startswith("_")} | {
        "__enter__",
        "__exit__",
    }
    assert names >= BEFORE
    tool = _tool()
    for name in names - {"__enter__", "__exit__", "connect"}:
        source = {v: k for k, v in tool.RENAMES.items()}.get(name, name)
        mine = inspect.signature(getattr(SyncResourceManager, name))
        theirs = inspect.signature(getattr(ResourceManager, source))
        assert list(mine.parameters.values()) == list(theirs.parameters.values()), name
    connect = inspect.signature(SyncResourceManager.connect).parameters
    assert list(connect) == list(inspect.signature(ResourceManager.new).parameters)


def test_a_method_the_generator_was_not_told_about_stops_it() -> None:
    tool = _tool()
    source = tool.SOURCE.read_text().replace(
        "    def warm_statistics(self)",
        "    def frobnicate(self) -> int:\n        return 1\n\n    def warm_statistics(self)",
    )
    with pytest.raises(tool.GenerationError, match="frobnicate"):
        tool.generate(source)
    renamed = tool.SOURCE.read_text().replace("    def end_use(", "    async def finish_use(")
    with pytest.raises(tool.GenerationError, match="end_use"):
        tool.generate(renamed)
