"""What the benchmarks share: the facts of the machine a run was measured on, and the
check that the Ray they started is on loopback (each benchmark sets
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` before it imports Ray)."""

from __future__ import annotations

import os
import platform
from typing import Any

import ray


def on_loopback() -> list[str]:
    """The addresses of the connected Ray's nodes; raises unless they are all 127.0.0.1."""
    addresses = sorted({node["NodeManagerAddress"] for node in ray.nodes()})  # type: ignore[no-untyped-call]
    if addresses != ["127.0.0.1"]:
        raise RuntimeError(f"Ray is not on loopback: {addresses}")
    return addresses


def machine() -> dict[str, Any]:
    """Cores, Python, Ray, platform and the load at the start (each JSON says so)."""
    return {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "ray": ray.__version__,
        "platform": platform.platform(),
        "loadavg_start": list(os.getloadavg()),
    }
