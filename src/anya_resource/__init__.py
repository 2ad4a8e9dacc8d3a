"""anya-resource: an actor-based distributed resource scheduler on Ray."""

from anya_resource.client import ResourceManager, SyncResourceManager
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
    PoolExhausted,
    ResourceError,
)
from anya_resource.health import NodeHealth, ResourceHealth
from anya_resource.integrations import current_lease, leased
from anya_resource.lease import Lease, ResourceConnection

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
    "Policy",
    "PoolExhausted",
    "Priority",
    "ResourceConnection",
    "ResourceError",
    "ResourceHealth",
    "ResourceManager",
    "SyncResourceManager",
    "current_lease",
    "leased",
]
