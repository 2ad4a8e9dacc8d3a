"""Packaging (issue 11, item 6): what ``pip install anya-resource`` pulls, what importing the
pure core loads, and that every command's ``--json`` is the same kind of option."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import tomllib
import typer

from anya_resource.cli import app

ROOT = Path(__file__).resolve().parents[2]
DEMO_ONLY = ("numpy", "scikit-learn", "python-bitcoinlib")
NEVER_IN_CORE = ("ray", "psutil", "psycopg", "httpx", "numpy", "sklearn", "bitcoin")


def _name(requirement: str) -> str:
    return requirement.split(";")[0].split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip()


def test_the_demos_workloads_are_an_extra_not_a_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = {_name(r) for r in project["dependencies"]}
    assert not required & set(DEMO_ONLY), required & set(DEMO_ONLY)
    assert {_name(r) for r in project["optional-dependencies"]["demo"]} == set(DEMO_ONLY)
    assert "anya-resource[demo]" in project["optional-dependencies"]["dev"]


def test_the_library_never_imports_the_demo() -> None:
    """The demo is a package of its own beside the library (``anya_resource_demo``)."""
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "src" / "anya_resource").rglob("*.py")
        if re.search(r"^\s*(from|import) anya_resource_demo", path.read_text(), re.MULTILINE)
        and path.name != "cli.py"  # the demo command imports it when run, and only then
    ]
    assert offenders == []
    assert not (ROOT / "src" / "anya_resource" / "workloads").exists()


def test_importing_the_core_loads_no_ray_psutil_psycopg_or_httpx() -> None:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import anya_resource.core"],
        capture_output=True,
        text=True,
        check=True,
    )
    loaded = {
        line.split("|")[-1].strip().split(".")[0]
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "anya_resource" in loaded  # the log is what we think it is
    assert not loaded & set(NEVER_IN_CORE), sorted(loaded & set(NEVER_IN_CORE))


def test_every_json_option_is_a_flag() -> None:
    command = typer.main.get_command(app)
    seen = []
    for name, sub in command.commands.items():  # type: ignore[attr-defined]
        for param in sub.params:
            if "--json" in getattr(param, "opts", ()):
                assert getattr(param, "is_flag", False), f"{name} --json takes a value"
                seen.append(name)
    assert {"status", "leases", "what-if", "demo", "simulate"} <= set(seen)


def _loaded_after(statement: str) -> list[str]:
    """The modules of ray (and of the heavy client dependencies) that ``statement``
    loads, in a fresh interpreter."""
    probe = (
        f"{statement}\nimport sys\n"
        "print('\\n'.join(m for m in sys.modules if m.split('.')[0] in "
        f"{NEVER_IN_CORE!r}))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return sorted(done.stdout.split())


def test_import_anya_resource_loads_no_ray() -> None:
    assert _loaded_after("import anya_resource") == []
    assert _loaded_after("import anya_resource.core") == []
    assert (
        _loaded_after("import anya_resource; anya_resource.Policy; anya_resource.Overloaded") == []
    )


def test_the_lazy_names_load_on_first_use() -> None:
    assert "ray" in _loaded_after("import anya_resource; anya_resource.SyncResourceManager")
    import anya_resource
    from anya_resource import client, client_async, client_sync

    assert anya_resource.ResourceManager is client.ResourceManager is client_async.ResourceManager
    assert anya_resource.SyncResourceManager is client.SyncResourceManager
    assert client.SyncResourceManager is client_sync.SyncResourceManager
    for name in anya_resource.__all__:
        assert getattr(anya_resource, name) is not None, name
