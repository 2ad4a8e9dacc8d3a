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


class AcquireAborted(ResourceError):
    """The request ended before it was granted, for a reason other than its timeout:
    the node it was pinned to was lost, the process or Ray job that waited ended, or
    the budget it was to be drawn from ended. Nothing is held."""


# What a waiter sees for each way a request is refused (``core.model.RejectReason``
# values); any other reason aborted it.
_REJECTED_AS: dict[str, type[ResourceError]] = {
    "timeout": AcquireTimeout,
    "cancelled": AcquireTimeout,
    "infeasible": Infeasible,
}


def rejection_error(reason: str, message: str) -> ResourceError:
    """The exception a waiter sees for a request refused for ``reason``."""
    return _REJECTED_AS.get(reason, AcquireAborted)(message)


def error_named(name: str, message: str) -> ResourceError:
    """An error the coordinator sent by class name, rebuilt here (never a raw one)."""
    cls = globals().get(name)
    if isinstance(cls, type) and issubclass(cls, ResourceError):
        return cls(message)
    return ResourceError(message)


__all__ = [
    "AcquireAborted",
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
    "error_named",
    "rejection_error",
]
