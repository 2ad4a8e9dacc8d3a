"""The one boundary (issue 18): every call to an actor goes through ``actors/boundary.py``,
and what it lets out is one of ``errors``, never Ray's (no Ray needed here).

* The sources are read (not imported): nothing but the boundary calls ``ray.get``,
  ``ray.wait``, ``ray.get_actor`` or ``ray.kill``, and every ``.remote(...)`` is made by
  a function handed to the boundary (``boundary.call/get/send``, or the client's
  ``_call`` and ``_send_later``, which hand it on), except a ``@leased`` task's or
  actor's own: the user's code, on Ray's terms.
* ``translate`` on Ray's real exception objects, as a call would raise them: a refusal
  comes back as the project's class itself with the coordinator's message only, Ray's
  failures as ``ManagerUnavailable`` in one line saying which, and the text a user would
  print or log has no ``ray::``, ``RayTaskError`` or traceback in it. On a real Ray:
  ``tests/integration/test_errors.py``.
"""

from __future__ import annotations

import ast
import traceback
from pathlib import Path

import pytest
import ray.exceptions

from anya_resource.actors.boundary import get, is_ours, send, translate
from anya_resource.cli import error_line
from anya_resource.errors import (
    Infeasible,
    InvalidRequest,
    LeaseExpired,
    ManagerUnavailable,
    NotLeaseHolder,
    ResourceError,
)
from anya_resource.pools.errors import RpcCallError, RpcError

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "anya_resource"
BOUNDARY = PACKAGE / "actors" / "boundary.py"
RAY_CALLS = {"get", "wait", "get_actor", "kill"}  # ray.<these>: the boundary's only
# Who may be handed a function that makes a ``.remote(...)`` call: the boundary, and the
# client's two methods that hand it straight on (client_async.py).
HANDED_TO = {"call", "get", "send", "_call", "_send_later"}
# ``.remote(...)`` calls that are the user's own Ray task or actor (``@leased``): not a
# call to one of anya-resource's actors. (file, function) pairs.
USERS_OWN = {("integrations/ray_tasks.py", "remote")}
RAY_TRACES = ("ray::", "RayTaskError", "Traceback")


def _sources() -> list[tuple[str, ast.Module]]:
    return [
        (str(path.relative_to(PACKAGE)), ast.parse(path.read_text(), filename=str(path)))
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != BOUNDARY
    ]


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def _called_name(call: ast.Call) -> str | None:
    func = call.func
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return None


def _handed_to_boundary(fn: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Whether the lambda or nested function ``fn`` is an argument of a call to one of
    ``HANDED_TO`` (a nested function: by its name, in the function around it)."""
    if isinstance(fn, ast.Lambda):
        call = parents.get(fn)
        return (
            isinstance(call, ast.Call)
            and _called_name(call) in HANDED_TO
            and (fn in call.args or any(k.value is fn for k in call.keywords))
        )
    assert isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
    outer = parents.get(fn)
    while outer is not None and not isinstance(outer, ast.FunctionDef | ast.AsyncFunctionDef):
        outer = parents.get(outer)
    if outer is None:
        return False
    return any(
        isinstance(node, ast.Call)
        and _called_name(node) in HANDED_TO
        and any(isinstance(a, ast.Name) and a.id == fn.name for a in node.args)
        for node in ast.walk(outer)
    )


def test_only_the_boundary_calls_ray_get_get_actor_or_kill() -> None:
    found = [
        f"{name}:{node.lineno}: ray.{node.func.attr}"
        for name, tree in _sources()
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in RAY_CALLS
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "ray"
    ]
    assert found == [], "make these through anya_resource.actors.boundary"


def test_every_actor_call_is_made_through_the_boundary() -> None:
    stray = []
    checked = 0
    for name, tree in _sources():
        parents = _parents(tree)
        for node in ast.walk(tree):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "remote"
                and not (isinstance(node.func.value, ast.Name) and node.func.value.id == "ray")
            ):
                continue  # ray.remote(...) makes a remote function or class: no call
            checked += 1
            fn = parents.get(node)
            while fn is not None and not isinstance(
                fn, ast.Lambda | ast.FunctionDef | ast.AsyncFunctionDef
            ):
                fn = parents.get(fn)
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef) and (
                (name, fn.name) in USERS_OWN
            ):
                continue
            if fn is None or not _handed_to_boundary(fn, parents):
                stray.append(f"{name}:{node.lineno}")
    assert checked > 20  # the client's calls, at least, were seen
    assert stray == [], "these .remote() calls do not go through actors/boundary.py"


# -- translate, on Ray's real exception objects ------------------------------------------------


def _from_actor(cause: BaseException) -> ray.exceptions.RayTaskError:
    """What ``await ref`` raises when the coordinator's method raised ``cause``: Ray's
    dual class, with Ray's text (a traceback through the actor's files)."""
    text = (
        'Traceback (most recent call last):\n  File "coordinator.py", line 1, in what_if\n'
        f"{type(cause).__name__}: {cause}"
    )
    wrapped = ray.exceptions.RayTaskError(
        "CoordinatorImpl.what_if",
        text,
        cause,
        proctitle="ray::CoordinatorImpl.what_if()",
        pid=4218,
        ip="127.0.0.1",
        actor_id="f3",
    )
    return wrapped.as_instanceof_cause()


def assert_clean(error: BaseException) -> None:
    """What a caller prints or logs of ``error`` shows nothing of Ray's."""
    assert is_ours(error), type(error).__mro__
    assert error.__cause__ is None
    for text in (str(error), repr(error)):
        assert not any(trace in text for trace in RAY_TRACES), text
        assert "\n" not in text
    printed = "".join(traceback.format_exception(error))
    assert "ray::" not in printed and "RayTaskError" not in printed, printed


@pytest.mark.parametrize(
    "cause",
    [
        InvalidRequest("count: got 0, expected a whole number of requests in [1, 100,000]"),
        NotLeaseHolder("lease lease-1: not a lease this cluster issued with that token"),
        Infeasible("a request of 6 CPUs is larger than any node can ever grant"),
        LeaseExpired("lease lease-1 ended (expired); acquire anew"),
    ],
)
def test_a_refusal_comes_back_as_its_own_class_with_its_message_only(cause: ResourceError) -> None:
    wrapped = _from_actor(cause)
    assert isinstance(wrapped, type(cause)) and "ray::" in str(wrapped)  # what Ray raises
    error = translate(wrapped)
    assert type(error) is type(cause)
    assert str(error) == str(cause)
    assert_clean(error)


def test_a_pool_error_with_a_constructor_of_its_own_keeps_its_family() -> None:
    error = translate(_from_actor(RpcCallError("getblock", -5, "Block not found")))
    assert type(error) is RpcError and "Block not found" in str(error)
    assert_clean(error)


def test_a_bug_in_the_actor_is_named_not_passed_off_as_unavailability() -> None:
    error = translate(_from_actor(KeyError("lease-1")))
    assert type(error) is ResourceError
    assert "KeyError" in str(error) and "a bug" in str(error)
    assert_clean(error)


@pytest.mark.parametrize(
    ("raised", "says"),
    [
        (ray.exceptions.ActorDiedError(), "its actor died"),
        (ray.exceptions.RayActorError(), "its actor died"),
        (ray.exceptions.ActorUnavailableError("the node is failing", None), "unreachable"),
        (ray.exceptions.GetTimeoutError("Get timed out: some object(s) not ready."), "no answer"),
        (ray.exceptions.ObjectLostError("ab" * 14, None, ""), "reply was lost"),
        (ray.exceptions.OwnerDiedError("ab" * 14, None, ""), "reply was lost"),
        (ray.exceptions.TaskCancelledError(), "cancelled"),
    ],
)
def test_rays_own_failures_are_manager_unavailable_in_one_line(
    raised: ray.exceptions.RayError, says: str
) -> None:
    error = translate(raised, "the coordinator")
    assert type(error) is ManagerUnavailable
    assert str(error).startswith("the coordinator is unavailable: ") and says in str(error)
    assert_clean(error)


def test_a_timeout_says_how_long_was_waited() -> None:
    error = translate(ray.exceptions.GetTimeoutError("timed out"), "the coordinator", 30.0)
    assert "no answer within 30 s" in str(error)


def test_ours_pass_through_untouched() -> None:
    mine = InvalidRequest("ttl: got 0, expected seconds in (0, 86400]")
    assert translate(mine) is mine


def test_the_helpers_raise_translated_with_nothing_chained() -> None:
    def refuse() -> None:
        raise _from_actor(InvalidRequest("count: got 0"))

    for helper in (send, get):
        with pytest.raises(InvalidRequest) as caught:
            helper(refuse)
        assert type(caught.value) is InvalidRequest
        assert caught.value.__context__ is None and caught.value.__cause__ is None
        assert_clean(caught.value)


def test_the_command_line_maps_every_error_in_one_place() -> None:
    assert error_line(InvalidRequest("count: got 0")) == ("count: got 0", 2)
    assert error_line(ManagerUnavailable("gone")) == ("ManagerUnavailable: gone", 1)
    # Were Ray's dual class ever to reach it, it is shown as ours, not as Ray's traceback.
    line, code = error_line(_from_actor(InvalidRequest("amount of 'memory': got '1e999'"))) or (
        "",
        0,
    )
    assert (line, code) == ("amount of 'memory': got '1e999'", 2)
    assert error_line(RuntimeError("a bug")) is None  # ours to fix: its traceback shows
