"""anya-resource: an actor-based distributed resource scheduler on Ray.

``import anya_resource`` is cheap: the client, the lease types and ``@leased`` (which pull
in Ray, psutil, psycopg and httpx) load on first use of their names, and
``anya_resource.core``, the pure scheduling core, never loads them at all.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from anya_resource.config import Policy, Priority
from anya_resource.errors import (
    AcquireTimeout,
    ConfigError,
    Infeasible,
    InvalidRequest,
    LeaseExpired,
    LeaseRevoked,
    ManagerUnavailable,
    NotLeaseHolder,
    Overloaded,
    ResourceError,
)

if TYPE_CHECKING:
    from anya_resource.client_async import ResourceManager
    from anya_resource.client_sync import SyncResourceManager
    from anya_resource.health import NodeHealth, ResourceHealth
    from anya_resource.integrations import current_lease, leased, leased_statistics
    from anya_resource.lease import Lease, ResourceConnection

# name -> the module that defines it, imported when the name is first used
_LAZY = {
    "ResourceManager": "anya_resource.client_async",
    "SyncResourceManager": "anya_resource.client_sync",
    "NodeHealth": "anya_resource.health",
    "ResourceHealth": "anya_resource.health",
    "current_lease": "anya_resource.integrations",
    "leased": "anya_resource.integrations",
    "leased_statistics": "anya_resource.integrations",
    "Lease": "anya_resource.lease",
    "ResourceConnection": "anya_resource.lease",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'anya_resource' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "AcquireTimeout",
    "ConfigError",
    "Infeasible",
    "InvalidRequest",
    "Lease",
    "LeaseExpired",
    "LeaseRevoked",
    "ManagerUnavailable",
    "NodeHealth",
    "NotLeaseHolder",
    "Overloaded",
    "Policy",
    "Priority",
    "ResourceConnection",
    "ResourceError",
    "ResourceHealth",
    "ResourceManager",
    "SyncResourceManager",
    "current_lease",
    "leased",
    "leased_statistics",
]
