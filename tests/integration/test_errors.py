"""Every error a caller sees is ours (issue 18), on a real Ray.

One private Ray for the module (one node of 2 CPUs and 4 GiB, on loopback), deployed
with a small policy. A hostile caller's table: every public call of the client, async
and through its blocking twin, with each kind of bad value (amounts, ttl, timeout,
count, priority, names, leases it does not hold or that were never issued, a budget
that can never fit). For each, the error is exactly the project's class (``type(exc) is
InvalidRequest``, not Ray's ``RayTaskError(InvalidRequest)``), its text names the value
as it was given, in the units people use, and nothing a user prints or logs of it
(``str``, ``repr``, ``traceback.format_exception``) has ``ray::``, ``RayTaskError`` or
Ray's traceback in it. Then the coordinator alone (it never trusts a client), Ray's own
failures (a dead actor, no answer in time), and every command of the command line with
bad input, run as a user runs them.
"""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import ray
import ray.exceptions
from ray.cluster_utils import Cluster

from anya_resource import ResourceManager, SyncResourceManager
from anya_resource.actors import boundary, deploy
from anya_resource.errors import (
    ConfigError,
    Infeasible,
    InvalidRequest,
    ManagerUnavailable,
    NotLeaseHolder,
    ResourceError,
)
from anya_resource.lease import Lease
from tests.raytools import GiB, Loop

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[2]
CLI_TIMEOUT_S = 120
MAX_TTL = 3600.0
POLICY = {
    "heartbeat_s": 0.2,
    "reserve": {"memory": 0, "cpu": 0},
    "lease": {"default_ttl": 30.0, "renew_every": 5.0, "max_ttl": MAX_TTL},
    "pools": {"postgres": {"size": 2}},
}
HUGE = 10**5000  # past Python's 4,300-digit int-to-str limit
RAY_TRACES = ("ray::", "RayTaskError", "Traceback")

# Stand-ins in the table, replaced by real objects when a case runs.
HELD = "<a lease this manager holds>"
FORGED = "<that lease with another token>"
STRANGER = "<a lease id this cluster never issued>"


class Case(NamedTuple):
    call: str  # the method of ResourceManager (and of SyncResourceManager)
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    error: type[ResourceError]
    named: str  # what the message must say: the value as given, in people's units


def case(
    call: str, *args: Any, error: type[ResourceError] = InvalidRequest, named: str, **kw: Any
) -> Case:
    return Case(call, args, kw, error, named)


CPU = {"cpu": 1}
TTLS = [
    (0, "ttl: got 0"),
    (math.nan, "ttl: got nan"),
    (-0.0, "ttl: got -0.0"),
    ("5", "ttl: got '5'"),
    (True, "ttl: got True"),
    (MAX_TTL * 2, "ttl: got 7200.0, expected seconds in (0, 3600]"),
    (2**1024, "ttl: got 17976931348623159077"),
    (HUGE, "ttl: got an integer of about 5,001 digits"),
]
TIMEOUTS = [
    (-1, "timeout: got -1"),
    (math.nan, "timeout: got nan"),
    (math.inf, "timeout: got inf"),
    ("5", "timeout: got '5'"),
    (True, "timeout: got True"),
]
AMOUNTS = [
    ({"memory": math.inf}, "amount of 'memory': got inf"),
    ({"memory": "1e999"}, "amount of 'memory': got '1e999'"),
    ({"memory": "12 parsecs"}, "unknown unit 'parsecs'"),
    ({"cpu": -1}, "amount of 'cpu': got -1"),
    ({"cpu": math.nan}, "amount of 'cpu': got nan"),
    ({"cpu": "lots"}, "amount of 'cpu': got 'lots'"),
    ({"gpu": True}, "amount of 'gpu': got True"),
    ({"disk": HUGE}, "amount of 'disk': got an integer of about 5,001 digits"),
    ({"postgres": 1.5}, "amount of 'postgres': got 1.5"),
    ({"pools": {"postgres": -1}}, "amount of 'postgres': got -1"),
    # Only the coordinator knows its policy's names: refused there, ours here all the same.
    ({"teapots": 1}, "unknown resource 'teapots'"),
    ({"pools": {"nope": 1}}, "unknown pool 'nope'"),
    ({}, "asks for nothing"),
    ("cpu=1", "resources: got 'cpu=1'"),
]
OPTIONS = [
    ({"priority": "urgent"}, "priority: got 'urgent'"),  # the coordinator's to know
    ({"priority": True}, "priority: got True"),
    ({"priority": 10**7}, "priority: got 10000000"),
    ({"tenant": ""}, "tenant: got ''"),
    ({"tenant": 7}, "tenant: got 7"),
    ({"node": "ffff"}, "node: 'ffff' is not an alive node"),  # the coordinator's to know
    ({"preemptible": "yes"}, "preemptible: got 'yes'"),
]

CASES: list[Case] = [
    # acquire: every amount, every option, every ttl and timeout
    *(case("acquire", bad, named=named) for bad, named in AMOUNTS),
    *(case("acquire", CPU, named=named, **bad) for bad, named in OPTIONS),
    *(case("acquire", CPU, ttl=bad, named=named) for bad, named in TTLS),
    *(case("acquire", CPU, timeout=bad, named=named) for bad, named in TIMEOUTS),
    case("acquire", {"cpu": 6}, error=Infeasible, named="a request of 6 CPUs is larger than"),
    case("acquire", {"memory": "5GiB"}, error=Infeasible, named="a request of 5.0 GiB of memory"),
    case("allocate_memory", "1e999", named="amount of 'memory': got '1e999'"),
    case("allocate_memory", -1, named="amount of 'memory': got -1"),
    case("allocate_memory", 1024, ttl=0, named="ttl: got 0"),
    case("acquire_connection", "nope", named="unknown pool 'nope'"),
    case("acquire_connection", "postgres", timeout=-1, named="timeout: got -1"),
    case("acquire_connection", "postgres", ttl=math.nan, named="ttl: got nan"),
    case("acquire_connection", "postgres", priority="urgent", named="priority: got 'urgent'"),
    # renew: every ttl; leases it does not hold, or that never were
    *(case("renew", HELD, bad, named=named) for bad, named in TTLS),
    case("renew", FORGED, error=NotLeaseHolder, named="the token presented does not match"),
    case("renew", STRANGER, error=NotLeaseHolder, named="not a lease this cluster issued"),
    case("renew", "lease-1", named="renew: got 'lease-1', expected a Lease"),
    # release
    case("release", FORGED, error=NotLeaseHolder, named="the token presented does not match"),
    case("release", STRANGER, error=NotLeaseHolder, named="not a lease this cluster issued"),
    case("release", None, named="release: got None, expected a Lease"),
    # what_if: count, amounts, options
    case("what_if", CPU, 0, named="count: got 0"),
    case("what_if", CPU, -3, named="count: got -3"),
    case("what_if", CPU, True, named="count: got True"),
    case("what_if", CPU, 2.0, named="count: got 2.0"),
    case("what_if", CPU, 100_001, named="count: got 100001, expected a whole number"),
    case("what_if", CPU, HUGE, named="count: got an integer of about 5,001 digits"),
    *(case("what_if", bad, named=named) for bad, named in AMOUNTS),
    *(case("what_if", CPU, named=named, **bad) for bad, named in OPTIONS),
    case("what_if", CPU, ttl=MAX_TTL + 1, named="ttl: got 3601.0"),
    # budget_key, adopt
    case("budget_key", FORGED, error=NotLeaseHolder, named="the token presented does not match"),
    case("budget_key", STRANGER, error=NotLeaseHolder, named="not a lease this cluster issued"),
    case("budget_key", 5, named="budget_key: got 5"),
    case("adopt", STRANGER, error=NotLeaseHolder, named="not a lease this cluster issued"),
    case("adopt", {}, named="adopt: got {}"),
    # the job queue
    case(
        "submit_job",
        "python x.py",
        {"cpu": 6},
        error=Infeasible,
        named="this job can never start: a request of 6 CPUs is larger than any node",
    ),
    case("submit_job", "python x.py", {"memory": "1e999"}, named="got '1e999'"),
    case("submit_job", "python x.py", {"cpu": 1}, priority="urgent", named="got 'urgent'"),
    case("submit_job", "python x.py", {"cpu": 1}, runtime_env="x", named="runtime_env: got 'x'"),
    case("submit_job", "python x.py", {"cpu": 1}, preemptible="no", named="got 'no'"),
    case("submit_job", "", {"cpu": 1}, named="entrypoint: got ''"),
    case("submit_job", "python x.py", "cpu=1", named="resources: got 'cpu=1'"),
    case("cancel_job", "anya-job-000000000000", named="no such job"),
    case("cancel_job", "", named="job_id: got ''"),
    case("wait_job", "anya-job-000000000000", timeout=-1, named="timeout: got -1"),
    case("wait_job", 5, named="job_id: got 5"),
    case("history", -1, named="seconds: got -1"),
    case("history", "1h", named="seconds: got '1h'"),
]


def assert_ours(error: BaseException, cls: type[ResourceError], named: str) -> None:
    """``error`` is exactly ``cls``, names ``named``, and shows nothing of Ray's."""
    assert type(error) is cls, f"{type(error).__mro__}: {error}"
    assert named in str(error), str(error)
    for text in (str(error), repr(error)):
        assert not any(trace in text for trace in RAY_TRACES), text
        # One line, but for a policy's ConfigError: one line per key that is wrong.
        assert "\n" not in text or cls is ConfigError, text
    printed = "".join(traceback.format_exception(error))
    assert "ray::" not in printed and "RayTaskError" not in printed, printed
    assert error.__cause__ is None and not isinstance(error, ray.exceptions.RayError)


# -- the module's Ray, deployment and managers -------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    started = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "memory": 4 * GiB, "include_dashboard": False},
    )
    try:
        ray.init(address=started.address, logging_level="ERROR")
        assert {node["NodeManagerAddress"] for node in ray.nodes()} == {"127.0.0.1"}
        yield started
    finally:
        deploy.forget_handles()
        ray.shutdown()
        started.shutdown()


@pytest.fixture(scope="module")
def loop() -> Loop:
    return Loop()


@pytest.fixture(scope="module")
def manager(cluster: Cluster, loop: Loop) -> Iterator[ResourceManager]:
    made = loop.run(ResourceManager.new(policy=POLICY))
    yield made
    loop.run(made.close())


@pytest.fixture(scope="module")
def sync(manager: ResourceManager, cluster: Cluster) -> Iterator[SyncResourceManager]:
    made = SyncResourceManager.connect(address=cluster.address)
    yield made
    made.close()


@pytest.fixture(scope="module")
def held(manager: ResourceManager, loop: Loop) -> Lease:
    lease: Lease = loop.run(manager.acquire({"cpu": 0.5}, ttl=60))
    return lease


@pytest.fixture(scope="module")
def sync_held(sync: SyncResourceManager) -> Lease:
    return sync.acquire({"cpu": 0.5}, ttl=60)


def _stand_ins(args: tuple[Any, ...], lease: Lease) -> list[Any]:
    wrong = "0" * len(lease.token)
    made = {
        HELD: lease,
        FORGED: dataclasses.replace(lease, token=wrong, _manager=None),
        STRANGER: dataclasses.replace(lease, lease_id="lease-never-issued", token=wrong),
    }
    return [made.get(arg, arg) if isinstance(arg, str) else arg for arg in args]


def _ids(cases: list[Case]) -> list[str]:
    return [f"{c.call}-{i}-{c.named[:30]}" for i, c in enumerate(cases)]


# -- the public API, each call with each kind of bad value ----------------------------------


@pytest.mark.parametrize("bad", CASES, ids=_ids(CASES))
def test_async_api_refuses_in_our_own_words(
    manager: ResourceManager, loop: Loop, held: Lease, bad: Case
) -> None:
    args = _stand_ins(bad.args, held)

    async def attempt() -> BaseException | None:
        try:
            await getattr(manager, bad.call)(*args, **bad.kwargs)
        except Exception as exc:
            return exc
        return None

    error = loop.run(attempt())
    assert error is not None, f"{bad.call}{bad.args} was accepted"
    assert_ours(error, bad.error, bad.named)


@pytest.mark.parametrize("bad", CASES, ids=_ids(CASES))
def test_blocking_twin_refuses_in_our_own_words(
    sync: SyncResourceManager, sync_held: Lease, bad: Case
) -> None:
    args = _stand_ins(bad.args, sync_held)
    with pytest.raises(ResourceError) as caught:
        getattr(sync, bad.call)(*args, **bad.kwargs)
    assert_ours(caught.value, bad.error, bad.named)


def test_bad_calls_changed_nothing(
    manager: ResourceManager, loop: Loop, held: Lease, sync_held: Lease
) -> None:
    """After the whole table: the two leases are held and renewable, nothing else is."""
    assert loop.run(manager.renew(held)).valid
    snapshot = loop.run(manager.snapshot())
    assert snapshot["leases"] == 2 and snapshot["queue"]["waiting"] == 0
    assert loop.run(manager.budgets()) == {}


def test_new_refuses_bad_arguments(cluster: Cluster, loop: Loop) -> None:
    for kwargs, cls, named in [
        ({"address": 5}, InvalidRequest, "address: got 5"),
        ({"policy": {"heartbeat_s": -1}}, ConfigError, "heartbeat_s"),
        ({"budget": "garbage"}, InvalidRequest, "budget: got 'garbage'"),
        ({"budget": 7}, InvalidRequest, "budget: got 7"),
        ({"outlives_job": "yes"}, InvalidRequest, "outlives_job: got 'yes'"),
    ]:
        with pytest.raises(ResourceError) as caught:
            loop.run(ResourceManager.new(**kwargs))
        assert_ours(caught.value, cls, named)


def test_what_if_says_one_thing(
    manager: ResourceManager, loop: Loop, held: Lease, sync_held: Lease
) -> None:
    answer = loop.run(manager.what_if({"cpu": 6}, 3))
    assert answer["infeasible"] == (
        "a request of 6 CPUs is larger than any node can ever grant (capacity minus reserve)"
    )
    assert (answer["granted_now"], answer["granted_after_preemption"], answer["would_wait"]) == (
        0,
        0,
        0,
    )
    fits = loop.run(manager.what_if({"cpu": 0.5}, 3))  # 1 CPU of 2 is held: 2 fit, 1 waits
    assert fits["infeasible"] is None
    assert fits["granted_now"] + fits["would_wait"] == 3 and fits["would_wait"] >= 1


# -- the coordinator alone: it never trusts a client -------------------------------------------


def test_the_coordinator_refuses_what_a_client_did_not_check(
    manager: ResourceManager, loop: Loop, held: Lease
) -> None:
    handle = deploy.coordinator()
    spec = {"resources": {"cpu": 1}, "priority": "normal"}
    # What Ray itself hands over: its dual class, its traceback as the text.
    with pytest.raises(ray.exceptions.RayTaskError) as raw:
        ray.get(handle.what_if.remote(spec, 0))
    assert isinstance(raw.value, InvalidRequest) and "ray::" in str(raw.value)
    calls: list[tuple[Any, type[ResourceError], str]] = [
        (lambda: handle.what_if.remote(spec, HUGE), InvalidRequest, "about 5,001 digits"),
        (lambda: handle.what_if.remote(spec, True), InvalidRequest, "count: got True"),
        (
            lambda: handle.what_if.remote({"resources": {"memory": math.inf}}, 1),
            InvalidRequest,
            "amount of 'memory': got inf",
        ),
        (
            lambda: handle.renew.remote(held.lease_id, held.token, 0),
            InvalidRequest,
            "ttl: got 0",
        ),
        (
            lambda: handle.renew.remote(held.lease_id, held.token, MAX_TTL * 2),
            InvalidRequest,
            "ttl: got 7200.0, expected seconds in (0, 3600]",
        ),
        (
            lambda: handle.renew.remote(HUGE, held.token, None),
            InvalidRequest,
            "lease_id: got an integer of about 5,001 digits",
        ),
        (
            lambda: handle.release.remote("lease-never-issued", "0" * 48),
            NotLeaseHolder,
            "not a lease this cluster issued",
        ),
        (lambda: handle.history.remote(-1), InvalidRequest, "seconds: got -1"),
    ]
    for send, cls, named in calls:
        with pytest.raises(ResourceError) as caught:
            loop.run(boundary.call(send))
        assert_ours(caught.value, cls, named)
        with pytest.raises(ResourceError) as blocking:
            boundary.get(send, timeout=30)
        assert_ours(blocking.value, cls, named)
    answers = ray.get(
        handle.acquire_many.remote([{"resources": {"cpu": "1e999"}, "idempotency_key": "k"}])
    )
    assert answers == [["error", "InvalidRequest", answers[0][2]]]
    assert "got '1e999'" in answers[0][2]
    assert ray.get(handle.invariants.remote()) == []


# -- Ray's own failures: ManagerUnavailable, one line saying which -----------------------------


@ray.remote(num_cpus=0)
class Doomed:
    def ping(self) -> str:
        return "pong"

    def die(self) -> None:
        os._exit(1)  # its process dies under the call: Ray's ActorDiedError


def test_rays_own_failures_are_manager_unavailable_in_one_line(
    manager: ResourceManager, loop: Loop
) -> None:
    handle = deploy.coordinator()
    with pytest.raises(ResourceError) as late:  # a long poll that outlasts the wait
        boundary.get(lambda: handle.watch.remote("errors-test", 0, 5.0), timeout=0.3)
    assert_ours(
        late.value, ManagerUnavailable, "the coordinator is unavailable: no answer within 0.3 s"
    )

    doomed = Doomed.remote()
    assert ray.get(doomed.ping.remote()) == "pong"
    with pytest.raises(ResourceError) as died:
        boundary.get(lambda: doomed.die.remote(), "the doomed actor")
    assert_ours(died.value, ManagerUnavailable, "the doomed actor is unavailable: its actor died")
    with pytest.raises(ResourceError) as gave_up:
        loop.run(boundary.call(lambda: doomed.ping.remote(), "the doomed actor", patience=0.5))
    assert_ours(
        gave_up.value, ManagerUnavailable, "the doomed actor did not come back within 0.5 s"
    )


# -- the command line, as a user runs it --------------------------------------------------------


def _clis(*calls: tuple[str, ...]) -> list[subprocess.CompletedProcess[str]]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["COLUMNS"] = "160"
    started = [
        subprocess.Popen(
            [sys.executable, "-c", "from anya_resource.cli import main; main()", *call],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO,
        )
        for call in calls
    ]
    done = []
    for call, process in zip(calls, started, strict=True):
        try:
            out, err = process.communicate(timeout=CLI_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        done.append(subprocess.CompletedProcess(list(call), process.returncode, out, err))
    return done


def _one_line(result: subprocess.CompletedProcess[str], code: int, named: str) -> None:
    assert result.returncode == code, (result.args, result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("anya-resource: error: "), result.stderr
    assert named in lines[0], lines[0]
    everything = result.stdout + result.stderr
    assert not any(trace in everything for trace in RAY_TRACES), everything


def test_every_command_refuses_bad_input_in_one_line(
    cluster: Cluster, manager: ResourceManager, tmp_path: Path
) -> None:
    at = ("--address", cluster.address)
    bad_policy = tmp_path / "policy.yaml"
    bad_policy.write_text("lease: {max_ttl: -1}\n")
    cases: list[tuple[tuple[str, ...], int, str]] = [
        (("what-if", '{"memory": 1e999}', *at), 2, "amount of 'memory': got '1e999'"),
        (("what-if", "cpu=1", "--priority", "urgent", *at), 2, "priority: got 'urgent'"),
        (("what-if", "teapots=1", *at), 2, "unknown resource 'teapots'"),
        (("what-if", "cpu=1", "--count", "0", *at), 2, "--count"),
        (("what-if", "cpu=1", "--node", "ffff", *at), 2, "node: 'ffff' is not an alive node"),
        (
            ("submit", "--cpu", "6", *at, "--", "python", "x.py"),
            1,
            "Infeasible: this job can "
            "never start: a request of 6 CPUs is larger than any node can ever grant",
        ),
        (("submit", "--pool", "nope=1", *at, "--", "python", "x.py"), 2, "unknown resource 'nope'"),
        (("submit", "--cpu", "1", "--priority", "urgent", *at, "--", "x"), 2, "got 'urgent'"),
        (("cancel", "anya-job-000000000000", *at), 2, "no such job"),
        (("status", "--connect-timeout", "0", *at), 2, "--connect-timeout"),
        (("leases", "--connect-timeout", "soon", *at), 2, "--connect-timeout"),
        (("jobs", "--connect-timeout", "0", *at), 2, "--connect-timeout"),
        (("up", "--policy", str(bad_policy), *at), 2, "max_ttl"),
        (("down", "--connect-timeout", "0", *at), 2, "--connect-timeout"),
        (("simulate", "--nodes", "0"), 2, "--nodes"),
        (("demo", "--nodes", "0"), 2, "--nodes"),
    ]
    for start in range(0, len(cases), 6):  # a few processes at a time on a small machine
        batch = cases[start : start + 6]
        for result, (_, code, named) in zip(_clis(*(c for c, _, _ in batch)), batch, strict=True):
            _one_line(result, code, named)


def test_what_if_on_the_command_line_says_one_thing(
    cluster: Cluster, manager: ResourceManager
) -> None:
    (result,) = _clis(("what-if", "cpu=6", "--address", cluster.address))
    assert result.returncode == 0, result.stderr
    assert "a request of 6 CPUs is larger than any node can ever grant" in result.stdout
    assert "infeasible" in result.stdout and "would wait" not in result.stdout
    assert "6000" not in result.stdout
