"""No import cycles among the modules of ``anya_resource`` (issue 14, the house).

Every module is parsed (not imported) and every import of a module of the package is an
edge: at the top of a module, and inside functions and methods too (a lazy import
still makes the two modules depend on each other). Two kinds of import are left out:

* those under ``if TYPE_CHECKING:``, which never run (annotations only);
* a module importing itself (``ray_tasks`` does, in functions that Ray ships by value to
  a worker, to find the worker's copy of the module): that is no cycle between modules.

``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to
``pkg``; importing ``pkg.mod`` is not counted as importing ``pkg`` itself (else every
package would be in a cycle with its own ``__init__``).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "anya_resource"

# Cycles known and left for now, each with why (none today). Remove an entry once it is
# gone (the test says so).
KNOWN_CYCLES: dict[frozenset[str], str] = {}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, but none under ``if TYPE_CHECKING:``."""
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, ast.If) and _is_type_checking(child):
            for other in child.orelse:
                yield from _imports(ast.Module(body=[other], type_ignores=[]))
            continue
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        yield from _imports(child)


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parent, *([node.module] if node.module else [])])
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                    for alias in node.names
                ]
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's components of more than one module: each holds at least one cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for after in sorted(graph[node]):
            if after not in index:
                visit(after)
                low[node] = min(low[node], low[after])
            elif after in on_stack:
                low[node] = min(low[node], index[after])
        if low[node] == index[node]:
            component = set()
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.add(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def a_cycle(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """One cycle through the component, as the modules in import order."""
    start = min(component)
    paths = [[start]]
    while paths:
        path = paths.pop(0)
        for after in sorted(graph[path[-1]] & component):
            if after == start:
                return [*path, start]
            if after not in path:
                paths.append([*path, after])
    raise AssertionError(f"no cycle in {component}")


def test_there_is_no_import_cycle_in_the_package() -> None:
    graph = import_graph()
    assert "anya_resource.client_async" in graph and "anya_resource.core" in graph
    components = strongly_connected(graph)
    new = [c for c in components if frozenset(c) not in KNOWN_CYCLES]
    assert not new, "import cycles:\n" + "\n".join(" -> ".join(a_cycle(graph, c)) for c in new)
    gone = [sorted(k) for k in KNOWN_CYCLES if set(k) not in components]
    assert not gone, f"no longer cycles, take them out of KNOWN_CYCLES: {gone}"


def test_the_cycle_finder_names_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    (component,) = strongly_connected(graph)
    assert component == {"a", "b", "c"}
    assert a_cycle(graph, component) == ["a", "b", "c", "a"]


def test_lazy_and_type_checking_imports_are_told_apart() -> None:
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import anya_resource.client\n"
        "def f():\n    import anya_resource.jobs\n"
    )
    names = [alias.name for node in _imports(tree) for alias in node.names]
    assert names == ["TYPE_CHECKING", "anya_resource.jobs"]


def test_the_pieces_issue_14_named_import_no_cycle() -> None:
    graph = import_graph()
    client_side = {"anya_resource.lease", "anya_resource.cli", "anya_resource.cli_ops"}
    client_side |= {name for name in graph if name.startswith("anya_resource.pools")}
    for component in strongly_connected(graph):
        assert not component & client_side, component
    assert not any(t.startswith("anya_resource.client") for t in graph["anya_resource.pools"])
    assert "anya_resource.cli" not in graph["anya_resource.cli_ops"]
    assert "anya_resource.cli" not in graph["anya_resource.cli_jobs"]
