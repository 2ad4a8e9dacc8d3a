"""Ray's exceptions, translated into the ``errors`` hierarchy at the actor boundary."""

from __future__ import annotations

import ray.exceptions

from anya_resource.errors import ManagerUnavailable, ResourceError

# The coordinator is being restarted (or its node is gone): worth a retry.
RETRYABLE = (
    ray.exceptions.ActorUnavailableError,
    ray.exceptions.ActorDiedError,
    ray.exceptions.RayActorError,
    ray.exceptions.GetTimeoutError,
)


def translate(exc: BaseException) -> BaseException:
    """The error a caller should see for ``exc`` raised by an actor call.

    Always one of ``errors``: a raw Ray exception never reaches the caller.
    """
    if isinstance(exc, ResourceError):
        return exc
    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = exc.cause
        if isinstance(cause, ResourceError):
            return cause
        return ManagerUnavailable(f"the coordinator failed: {type(cause).__name__}: {cause}")
    if isinstance(exc, RETRYABLE):
        return ManagerUnavailable(f"the coordinator is unavailable: {exc}")
    return ManagerUnavailable(f"the call to the coordinator failed: {type(exc).__name__}: {exc}")
