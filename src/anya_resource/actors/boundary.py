"""The one boundary between anya-resource and Ray: every call to one of its actors.

Every call to an actor of anya-resource (the coordinator, a job's supervisor), from the
client, its blocking twin, the command line, the job queue or a node agent, and every
lookup, start and kill of such an actor, is made through this module; nothing else of
the package calls ``ray.get``, ``ray.get_actor`` or ``ray.kill``, or awaits an actor's
``ObjectRef`` itself (``tests/unit/test_boundary.py`` reads the sources to check). What
comes back is the actor's answer, or one of ``anya_resource.errors``:

* a refusal the actor raised (Ray hands it over as ``RayTaskError(InvalidRequest)``, a
  class made on the fly that is both, whose text is Ray's traceback from the actor's
  process) becomes the project's own exception of the very same class, with the
  actor's message only: ``type(error) is InvalidRequest``, and its text is what the
  coordinator wrote;
* Ray's own failures become ``ManagerUnavailable``, one line saying which: the actor
  died, it is unreachable (restarting, its node is failing), no answer in time, its
  reply was lost, Ray is not running in this process;
* anything else an actor raised (a bug, not a refusal) is a ``ResourceError`` naming
  its class and the first line of its message.

What a client reads of Ray's GCS store itself (job records, the deployed policy) is
read through ``send`` too, so that Ray's failures there are ``ManagerUnavailable`` as well.

Each is raised outside the ``except`` that caught Ray's, so no Ray exception is
chained to it (``__cause__`` and ``__context__`` are None): ``traceback.format_exception``
of what a caller catches shows no ``ray::`` frame and no ``RayTaskError``.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import ray
import ray.exceptions

from anya_resource.errors import ManagerUnavailable, ResourceError

T = TypeVar("T")

COORDINATOR = "the coordinator"
STORE = "Ray's GCS store"  # where job records and the deployed policy are read by clients
# The actor is being restarted (or its node is gone): worth a retry while patience lasts.
RETRYABLE = (
    ray.exceptions.ActorUnavailableError,
    ray.exceptions.ActorDiedError,
    ray.exceptions.RayActorError,
    ray.exceptions.GetTimeoutError,
)
RETRY_FIRST_S = 0.05
# A restarting coordinator answers within a second or two; polling it every quarter
# second at most finds it back soon after (each try fails at once while it restarts).
RETRY_MAX_S = 0.25
LINE_MAX = 300
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def translate(
    exc: BaseException, callee: str = COORDINATOR, waited: float | None = None
) -> ResourceError:
    """The error a caller sees for ``exc``, raised by a call to ``callee`` (an actor).

    Never a Ray exception, nor a class Ray made: see the module's doc. ``waited``: the
    seconds the call was given, when it had a timeout or was retried.
    """
    if isinstance(exc, ray.exceptions.RayTaskError):  # before ResourceError: Ray's dual class
        return _from_actor(exc, callee, waited)
    if isinstance(exc, ResourceError) and not isinstance(exc, ray.exceptions.RayError):
        return exc  # ours already (raised on this side of the boundary)
    if isinstance(exc, ray.exceptions.RayError):
        return ManagerUnavailable(f"{callee} is unavailable: {_ray_failure(exc, waited)}")
    if isinstance(exc, RuntimeError) and not ray.is_initialized():
        return ManagerUnavailable(
            f"{callee} cannot be called: Ray is not running in this process (it was shut "
            "down); connect again with ResourceManager.new()"
        )
    return ManagerUnavailable(
        f"the call to {callee} could not be made: {type(exc).__name__}: {_line(exc)}"
    )


def _from_actor(
    exc: ray.exceptions.RayTaskError, callee: str, waited: float | None
) -> ResourceError:
    """What the actor raised, rebuilt on this side: its class, its message only."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and cause is not exc:
        if isinstance(cause, ray.exceptions.RayError):  # the actor's own call failed
            return translate(cause, callee, waited)
        own = _own_class(cause)
        if own is not None:
            return own
        return ResourceError(
            f"{callee} failed on this call (a bug, not a refusal): "
            f"{type(cause).__name__}: {_line(cause)}"
        )
    return ResourceError(f"{callee} failed on this call: {_line(exc)}")


def _own_class(cause: BaseException) -> ResourceError | None:
    """``cause`` as a fresh instance of its own class of the hierarchy (the nearest one
    that is not Ray's and takes a message alone), with its message only; None if it is
    none of ours."""
    message = str(cause)
    for cls in type(cause).__mro__:
        if not issubclass(cls, ResourceError) or issubclass(cls, ray.exceptions.RayError):
            continue
        try:
            error = cls(message)
        except Exception:  # a constructor of its own (RpcCallError): its base will do
            continue
        return error
    return None


def _ray_failure(exc: BaseException, waited: float | None) -> str:
    """Which of Ray's failures ``exc`` is, in one line of our own words."""
    if isinstance(exc, ray.exceptions.GetTimeoutError):
        return "no answer" + (f" within {waited:g} s" if waited is not None else " in time")
    if isinstance(exc, ray.exceptions.ActorUnavailableError):
        return "its actor is unreachable for now (restarting, or its node is failing)"
    if isinstance(exc, ray.exceptions.RayActorError):  # ActorDiedError among them
        return "its actor died (its process or node was lost, or it was killed)"
    if isinstance(exc, ray.exceptions.TaskCancelledError):
        return "the call was cancelled"
    if isinstance(exc, ray.exceptions.ObjectLostError):
        return f"the call's reply was lost ({type(exc).__name__})"
    return f"Ray failed ({type(exc).__name__}: {_line(exc)})"


def _line(exc: BaseException) -> str:
    """The first line of ``exc``'s text, without colours, cut before any ``ray::``
    frame Ray put in it, and at ``LINE_MAX`` characters."""
    try:
        text = _ANSI.sub("", str(exc))
    except Exception:
        return f"<a {type(exc).__name__}>"
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    line = line.split("ray::", 1)[0].rstrip(" ,;:(")
    if len(line) > LINE_MAX:
        line = line[: LINE_MAX - 3] + "..."
    return line or type(exc).__name__


# -- making calls -------------------------------------------------------------------------


async def call(
    send: Callable[[], Awaitable[T]], callee: str = COORDINATOR, patience: float = 0.0
) -> T:
    """Await the call ``send()`` makes (``lambda: handle.method.remote(...)``).

    While ``callee`` is being restarted (died, unreachable) the call is made again, for
    up to ``patience`` seconds; then, or for any other failure, the translated error is
    raised (see the module's doc).
    """
    deadline = time.monotonic() + patience
    delay = RETRY_FIRST_S
    while True:
        try:
            return await send()
        except RETRYABLE as exc:
            if time.monotonic() + delay > deadline:
                error = translate(exc, callee)
                if patience > 0:
                    error = ManagerUnavailable(
                        f"{callee} did not come back within {patience:g} s: "
                        f"{_ray_failure(exc, None)}"
                    )
                break
        except Exception as exc:
            error = translate(exc, callee)
            break
        await asyncio.sleep(delay)
        delay = min(delay * 2, RETRY_MAX_S)
    raise error  # outside the except: nothing of Ray's chained to it


def get(send: Callable[[], Any], callee: str = COORDINATOR, timeout: float | None = None) -> Any:
    """Make the call ``send()`` returns the ``ObjectRef`` of, and wait for its answer
    (blocking, at most ``timeout`` s); translated errors, as ``call``."""
    try:
        return ray.get(send(), timeout=timeout)
    except Exception as exc:
        error = translate(exc, callee, timeout)
    raise error


def send(make: Callable[[], T], callee: str = COORDINATOR) -> T:
    """Start a call without waiting for it, or start an actor (``make()`` returns the
    ``ObjectRef`` or the handle); what fails at once is translated."""
    try:
        return make()
    except Exception as exc:
        error = translate(exc, callee)
    raise error


def find(name: str, namespace: str) -> Any | None:
    """The handle of the named actor, or None if there is no such actor."""
    try:
        return ray.get_actor(name, namespace=namespace)
    except ValueError:  # Ray's way of saying that no such actor exists
        return None
    except Exception as exc:
        error = translate(exc, f"the actor {name!r}")
    raise error


def kill(name: str, namespace: str) -> bool:
    """Remove the named actor for good (no restart); False if there was none."""
    handle = find(name, namespace)
    if handle is None:
        return False
    try:
        ray.kill(handle, no_restart=True)
        return True
    except ValueError:  # gone meanwhile
        return False
    except Exception as exc:
        error = translate(exc, f"the actor {name!r}")
    raise error


def end_this_actor() -> None:
    """End the actor this runs in, for good (a job's supervisor whose job has ended)."""
    ray.kill(ray.get_runtime_context().current_actor, no_restart=True)


def is_ours(exc: BaseException) -> bool:
    """Whether ``exc`` may reach a caller as it is: one of ``errors``, not Ray's."""
    return isinstance(exc, ResourceError) and not isinstance(exc, ray.exceptions.RayError)


__all__ = [
    "COORDINATOR",
    "RETRYABLE",
    "STORE",
    "call",
    "end_this_actor",
    "find",
    "get",
    "is_ours",
    "kill",
    "send",
    "translate",
]
