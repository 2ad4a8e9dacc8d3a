"""One hierarchy for every error anya-resource raises.

Every error names what was wrong and what was expected. Ray's own exceptions are
translated into these at the actor boundary (see ``actors/``), so callers never
need to import anything from Ray to handle a failure.
"""

from __future__ import annotations


class ResourceError(Exception):
    """Base class of every anya-resource error."""


class InvalidRequest(ResourceError, ValueError):
    """Bad input: a malformed amount, an unknown resource, pool, node or priority."""


class ConfigError(InvalidRequest):
    """A policy file or dict that does not validate (names the file and key path)."""


class Infeasible(ResourceError):
    """The request can never be granted: larger than any node, pool or tenant limit."""


class AcquireTimeout(ResourceError, TimeoutError):
    """The request was not granted before its timeout; nothing is held."""


class LeaseExpired(ResourceError):
    """The lease was not renewed within its TTL and has been reclaimed."""


class LeaseRevoked(ResourceError):
    """The lease was taken back (preemption, node loss, holder death, pressure)."""


class NotLeaseHolder(ResourceError):
    """The token presented does not match the lease's secret token."""


class Overloaded(ResourceError):
    """Too many requests wait already (per manager, or in the whole queue); names the limit."""


class ManagerUnavailable(ResourceError):
    """The coordinator cannot be reached (no Ray cluster, or it is restarting)."""


__all__ = [
    "AcquireTimeout",
    "ConfigError",
    "Infeasible",
    "InvalidRequest",
    "LeaseExpired",
    "LeaseRevoked",
    "ManagerUnavailable",
    "NotLeaseHolder",
    "Overloaded",
    "ResourceError",
]
