"""What the benchmarks share: the facts of the machine a run was measured on."""

from __future__ import annotations

import os
import platform
from typing import Any

import ray


def machine() -> dict[str, Any]:
    """Cores, Python, Ray, platform and the load at the start (each JSON says so)."""
    return {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "ray": ray.__version__,
        "platform": platform.platform(),
        "loadavg_start": list(os.getloadavg()),
    }
