"""What a client checks before it sends anything (issue 18, item 2), with no Ray: each bad
value is an ``InvalidRequest`` (that very class) naming the value as the caller gave it,
amounts in the units people use; and the command line refuses the same before it
connects, in one line, exit 2. The same calls on a real Ray, through the client and the
coordinator: ``tests/integration/test_errors.py``."""

from __future__ import annotations

import math
from typing import Any

import pytest
from typer.testing import CliRunner

from anya_resource.cli import app
from anya_resource.cli_ops import parse_resources
from anya_resource.core.requests import (
    MAX_WHAT_IF,
    check_count,
    check_fields,
    check_lease_id,
    check_seconds,
    check_ttl,
)
from anya_resource.errors import InvalidRequest
from anya_resource.quantities import MILLI, format_quantity, format_request

GIB = 1024**3
HUGE = 10**5000  # past Python's 4,300-digit int-to-str limit


def refused(call: Any, *args: Any, **kwargs: Any) -> str:
    """The message of the ``InvalidRequest`` (exactly that class) ``call`` raises."""
    with pytest.raises(InvalidRequest) as caught:
        call(*args, **kwargs)
    assert type(caught.value) is InvalidRequest
    message = str(caught.value)
    assert "\n" not in message and "ray::" not in message
    return message


@pytest.mark.parametrize(
    ("count", "named"),
    [
        (0, "got 0"),
        (-1, "got -1"),
        (MAX_WHAT_IF + 1, "got 100001"),
        (True, "got True"),  # an int to Python, not a count to anybody
        (False, "got False"),
        (2.0, "got 2.0"),
        ("3", "got '3'"),
        (None, "got None"),
        # named by its size, never a crash (nor a test id Python cannot print)
        pytest.param(HUGE, "an integer of about 5,001 digits", id="10**5000"),
    ],
)
def test_what_if_count_is_a_whole_number_up_to_the_limit(count: Any, named: str) -> None:
    message = refused(check_count, count)
    assert message.startswith("count: ") and named in message
    assert "[1, 100,000]" in message


def test_good_counts_pass() -> None:
    assert check_count(1) == 1 and check_count(MAX_WHAT_IF) == MAX_WHAT_IF


BAD_FIELDS: list[tuple[dict[str, Any], str]] = [
    # amounts, each named as given
    ({"resources": {"memory": math.inf}}, "amount of 'memory': got inf"),
    ({"resources": {"memory": "1e999"}}, "amount of 'memory': got '1e999'"),
    ({"resources": {"cpu": "1e999"}}, "amount of 'cpu': got '1e999'"),
    ({"resources": {"cpu": -0.5}}, "amount of 'cpu': got -0.5"),
    ({"resources": {"gpu": True}}, "amount of 'gpu': got True"),
    ({"resources": {"disk": HUGE}}, "an integer of about 5,001 digits"),
    ({"resources": {"memory": "12 parsecs"}}, "unknown unit 'parsecs'"),
    ({"resources": {"pools": {"postgres": 1.5}}}, "amount of 'postgres': got 1.5"),
    ({"resources": {"postgres": -1}}, "amount of 'postgres': got -1"),
    ({"resources": {"pools": ["postgres"]}}, "pools: got ['postgres']"),
    ({"resources": {"pools": {"": 1}}}, "pool: got ''"),
    ({"resources": {7: 1}}, "unknown resource 7"),
    ({"resources": "cpu=1"}, "resources: got 'cpu=1'"),
    # the rest of a request
    ({"priority": True}, "priority: got True"),
    ({"priority": 10**7}, "priority: got 10000000"),
    ({"priority": 2.5}, "priority: got 2.5"),
    ({"priority": ""}, "priority: got ''"),
    ({"tenant": ""}, "tenant: got ''"),
    ({"tenant": 7}, "tenant: got 7"),
    ({"tenant": "a\u202eb"}, "U+202E"),
    ({"node": 5}, "node: got 5"),
    ({"preemptible": "yes"}, "preemptible: got 'yes'"),
    ({"detached": 1}, "detached: got 1"),
    ({"timeout": -1}, "timeout: got -1"),
    ({"timeout": math.nan}, "timeout: got nan"),
    ({"timeout": "5"}, "timeout: got '5'"),
    ({"timeout": True}, "timeout: got True"),
    ({"ttl": 0}, "ttl: got 0"),
    ({"ttl": -0.0}, "ttl: got -0.0"),
    ({"ttl": math.nan}, "ttl: got nan"),
    ({"ttl": "60"}, "ttl: got '60'"),
    ({"ttl": True}, "ttl: got True"),
    ({"ttl": 2**1024}, "ttl: got 1797693134862315907729305190789024733617976978942306572734300"),
    ({"ttl": HUGE}, "ttl: got an integer of about 5,001 digits"),
    ({"ttl": 90_000}, "ttl: got 90000, expected seconds in (0, 86400]"),  # past max_ttl
]


@pytest.mark.parametrize(("fields", "named"), BAD_FIELDS)
def test_a_request_is_checked_before_it_is_sent(fields: dict[str, Any], named: str) -> None:
    given = {"resources": {"cpu": 1}, **fields}
    resources = given.pop("resources")
    assert named in refused(check_fields, resources, max_ttl=86_400.0, **given)


def test_a_good_request_passes() -> None:
    check_fields(
        {"memory": "2GiB", "cpu": 0.5, "postgres": 1, "pools": {"rpc": 2}},
        priority="high",
        tenant="ml",
        timeout=0,
        ttl=60,
        preemptible=True,
        node="ab12",
        detached=False,
        max_ttl=86_400.0,
    )
    check_fields({"cpu": 1}, priority=-5)


def test_ttl_seconds_and_lease_ids() -> None:
    assert check_ttl(None, 10) is None and check_ttl(10, 10) == 10.0
    assert "got 11" in refused(check_ttl, 11, 10)
    assert check_seconds("seconds", None) is None and check_seconds("seconds", 0) == 0.0
    assert "seconds: got -0.5" in refused(check_seconds, "seconds", -0.5)
    assert "seconds: got nan" in refused(check_seconds, "seconds", math.nan)
    assert check_lease_id("lease-0001") == "lease-0001"
    for bad, named in ((HUGE, "about 5,001 digits"), ("", "got ''"), (7, "got 7")):
        assert named in refused(check_lease_id, bad)


# -- amounts as people say them ----------------------------------------------------------


@pytest.mark.parametrize(
    ("resource", "amount", "said"),
    [
        ("cpu", 6 * MILLI, "6 CPUs"),
        ("cpu", MILLI, "1 CPU"),
        ("cpu", 500, "0.5 CPU"),
        ("cpu", 1500, "1.5 CPUs"),
        ("gpu", 2 * MILLI, "2 GPUs"),
        ("memory", 2 * GIB, "2.0 GiB of memory"),
        ("disk", 512, "512 B of disk"),
        ("postgres", 3, "3 slots of 'postgres'"),
        ("postgres", 1, "1 slot of 'postgres'"),
    ],
)
def test_amounts_are_said_in_the_units_people_use(resource: str, amount: int, said: str) -> None:
    assert format_quantity(resource, amount) == said


def test_a_request_is_said_whole() -> None:
    assert format_request({"cpu": 6000}) == "a request of 6 CPUs"
    assert (
        format_request({"cpu": 6000, "memory": 2 * GIB}, {"rpc": 2})
        == "a request of 6 CPUs, 2.0 GiB of memory and 2 slots of 'rpc'"
    )


# -- the command line, before it connects ------------------------------------------------


def test_json_numbers_too_large_stay_as_typed() -> None:
    assert parse_resources('{"memory": 1e999, "cpu": 1.5}') == {"memory": "1e999", "cpu": 1.5}
    assert "5,000 digits" in refused(parse_resources, '{"memory": ' + "9" * 5000 + "}")


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["what-if", '{"memory": 1e999}'], "amount of 'memory': got '1e999'"),
        (["what-if", "cpu=1e999"], "amount of 'cpu': got '1e999'"),
        (["what-if", "memory=lots"], "amount of 'memory': got 'lots'"),
        (["what-if", "cpu=1", "--tenant", ""], "tenant: got ''"),
        (["what-if", "cpu=1", "--priority", "99999999"], "priority: got 99999999"),
        (["what-if", "cpu=1", "--count", "0"], "--count"),
        (["what-if", "cpu=1", "--count", "100001"], "--count"),
        (["submit", "--cpu", "1e999", "--", "python", "x.py"], "amount of 'cpu': got '1e999'"),
        (["submit", "--memory", "2 parsecs", "--", "python", "x.py"], "unknown unit 'parsecs'"),
        (["submit", "--pool", "postgres=-1", "--", "python", "x.py"], "got -1"),
        (["submit", "--cpu", "1", "--tenant", "", "--", "python", "x.py"], "tenant: got ''"),
        (["submit", "--cpu", "1", "--", "python\x07"], "control character"),
    ],
)
def test_the_command_line_names_bad_input_before_it_connects(args: list[str], named: str) -> None:
    # h:1 is never reached: the input is refused first. Options go before submit's "--".
    split = args.index("--") if "--" in args else len(args)
    args = [*args[:split], "--address", "h:1", *args[split:]]
    result = CliRunner().invoke(app, args, env={"RAY_ADDRESS": ""})
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("anya-resource: error: "), result.output
    assert named in lines[0]
    assert not any(trace in result.output for trace in ("ray::", "RayTaskError", "Traceback"))


# -- options checked where they are given ------------------------------------------------


def test_leased_options_are_checked_when_decorated() -> None:
    from anya_resource.integrations import leased

    def task() -> None: ...

    assert "max_pending: got an integer of about 5,001 digits" in refused(
        leased(max_pending=-HUGE), task
    )
    assert "timeout: got '5'" in refused(leased(timeout="5"), task)
    assert "timeout: got -1" in refused(leased(timeout=-1), task)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"ttl": 0}, "ttl: got 0"),
        ({"ttl": 90_000}, "ttl: got 90000, expected seconds in (0, 86400]"),  # past max_ttl
        ({"timeout": math.nan}, "timeout: got nan"),
        ({"tenant": ""}, "tenant: got ''"),
        ({"priority": True}, "priority: got True"),
        ({"preemptible": "no"}, "preemptible: got 'no'"),
        ({"node": 3}, "node: got 3"),
    ],
)
def test_a_connections_options_are_checked_before_a_slot_is_asked_for(
    options: dict[str, Any], named: str
) -> None:
    from anya_resource.config import Policy
    from anya_resource.pools.registry import checkout_from

    assert named in refused(checkout_from, options, Policy.default(), None)
