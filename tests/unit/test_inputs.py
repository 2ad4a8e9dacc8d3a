"""Hostile input a new user types (issue 11, item 5): each is an ``InvalidRequest`` that names
what was typed and what was expected, and changes nothing; and what ``acquire`` returns is
a real coroutine (item 4); and a lease in another process (pickled) fails clearly."""

from __future__ import annotations

import asyncio
import math
import pickle
import sys
from typing import Any

import pytest

from anya_resource.cli_ops import parse_resources
from anya_resource.config import Policy
from anya_resource.core import build_request
from anya_resource.core.requests import check_timing
from anya_resource.errors import ConfigError, InvalidRequest
from anya_resource.inputs import check_name, shown
from anya_resource.lease import AcquireContext, Lease, ResourceConnection
from anya_resource.quantities import number_or_text, to_units
from tests.unit.core_support import make_policy

POLICY = make_policy(pools={"default": {"size": 4}, "rpc": {"size": 2}})
HUGE = 10**5000  # past Python's 4,300-digit int-to-str limit
ARABIC_HALF = "\u0660.\u0665"  # Arabic-Indic zero point five
FULLWIDTH_HALF = "\uff10.\uff15"  # full-width zero point five
ARABIC_THREE = "\u0663"


def refused(call: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(InvalidRequest) as caught:
        call(*args, **kwargs)
    assert isinstance(caught.value, ValueError)
    return str(caught.value)


def test_shown_never_fails_and_names_a_huge_int_by_its_size() -> None:
    assert "digits" in shown(HUGE) and len(shown(HUGE)) < 60
    assert shown("x" * 500).endswith("...") and len(shown("x" * 500)) == 80
    assert shown(-(10**4500)).startswith("an integer of about")


@pytest.mark.parametrize(
    "resources",
    [{"memory": HUGE}, {"cpu": HUGE}, {"pools": {"rpc": HUGE}}, {"rpc": HUGE}],
)
def test_huge_ints_as_amounts(resources: dict[str, Any]) -> None:
    assert "digits" in refused(build_request, POLICY, resources)


def test_huge_ints_as_priority_and_count() -> None:
    assert "digits" in refused(build_request, POLICY, {"cpu": 1}, priority=HUGE)
    assert "digits" in refused(build_request, POLICY, {"cpu": 1}, priority=-HUGE)


@pytest.mark.parametrize(
    "bad", [2**1024, -(2**1024), "5", -1, -0.5, -math.inf, math.inf, math.nan, True, [1]]
)
@pytest.mark.parametrize("what", ["ttl", "timeout"])
def test_bad_ttl_and_timeout(what: str, bad: Any) -> None:
    message = refused(build_request, POLICY, {"cpu": 1}, **{what: bad})
    assert message.startswith(f"{what}: got")
    refused(check_timing, **{"timeout": None, "ttl": None, what: bad})


def test_a_timeout_of_zero_still_means_try_once() -> None:
    assert build_request(POLICY, {"cpu": 1}, timeout=0).timeout == 0.0
    check_timing(0, None)


@pytest.mark.parametrize("text", [ARABIC_HALF, FULLWIDTH_HALF, "0_0.5", "1_000", ARABIC_THREE])
@pytest.mark.parametrize("resource", ["cpu", "memory"])
def test_non_ascii_digits_and_underscores_are_not_amounts(resource: str, text: str) -> None:
    message = refused(to_units, resource, text)
    assert repr(text) in message


def test_the_command_line_keeps_what_was_typed() -> None:
    assert number_or_text(ARABIC_THREE) == ARABIC_THREE  # int() would make it 3
    assert number_or_text("1e309") == "1e309"  # float() would make it inf
    assert number_or_text("2") == 2 and number_or_text("0.5") == 0.5
    message = refused(to_units, "memory", number_or_text("1e309"))
    assert "'1e309'" in message and "inf" not in message
    assert "digits" in refused(parse_resources, '{"memory": ' + "9" * 5000 + "}")
    assert "NaN" in refused(parse_resources, '{"cpu": NaN}')
    resources = parse_resources(f"memory={ARABIC_THREE}")
    refused(build_request, POLICY, resources)


@pytest.mark.parametrize(
    "name",
    [
        "a\x00b",
        "line\nbreak",
        "tab\there",
        "bidi\u202eevil",
        "zero\u200bwidth",
        "\u2028",
        "",
        "x" * 201,
    ],
)
def test_names_with_controls_bidi_or_zero_width_marks(name: str) -> None:
    refused(check_name, "tenant", name)
    refused(build_request, POLICY, {"cpu": 1}, tenant=name)
    refused(build_request, POLICY, {"cpu": 1}, idempotency_key=name)
    if name:
        with pytest.raises(ConfigError):
            Policy.from_dict({"pools": {name: {"size": 1}}})
        with pytest.raises(ConfigError):
            Policy.from_dict({"tenants": {name: {"limit": {"cpu": 1}}}})


def test_ordinary_names_pass() -> None:
    for name in ("ml", "bitcoin-rpc", "tenant_1", "équipe", "日本"):
        assert check_name("tenant", name) == name


# -- what acquire returns is a coroutine -------------------------------------------------


class FakeLease:
    exits = 0

    async def __aexit__(self, *exc: object) -> None:
        FakeLease.exits += 1


async def granted() -> Any:
    await asyncio.sleep(0)
    return FakeLease()


def test_acquire_context_works_wherever_a_coroutine_does() -> None:
    async def main() -> None:
        assert asyncio.iscoroutine(AcquireContext(granted))
        assert isinstance(await asyncio.create_task(AcquireContext(granted)), FakeLease)
        both = await asyncio.gather(AcquireContext(granted), AcquireContext(granted))
        assert len(both) == 2
        assert isinstance(await asyncio.wait_for(AcquireContext(granted), 5), FakeLease)
        if sys.version_info >= (3, 11):
            async with asyncio.TaskGroup() as group:
                task = group.create_task(AcquireContext(granted))
            assert isinstance(task.result(), FakeLease)
            async with asyncio.timeout(5):
                assert isinstance(await AcquireContext(granted), FakeLease)
        before = FakeLease.exits
        async with AcquireContext(granted) as lease:
            assert isinstance(lease, FakeLease)
        assert FakeLease.exits == before + 1
        AcquireContext(granted).close()  # never started: nothing to warn about

    asyncio.run(main())


# -- a lease in another process --------------------------------------------------------


def test_a_pickled_lease_travels_without_its_process_and_says_how_to_release_it() -> None:
    lease = Lease("lease-1", "t" * 48, 1, "n1", {"cpu": 1.0}, "normal", "ml", 10.0)
    lease.on_revoked = print
    lease._manager = object()  # type: ignore[assignment]
    copy = pickle.loads(pickle.dumps(lease))
    assert (copy.lease_id, copy.token, copy.fencing_token) == ("lease-1", "t" * 48, 1)
    assert copy._manager is None and copy.on_revoked is None
    message = refused(asyncio.run, copy.release())
    assert "another process" in message and "manager.release(lease)" in message
    connection = ResourceConnection("lease-2", "u" * 48, 2, "n1", {}, "normal", "ml", 10.0)
    connection.connection = object()
    assert pickle.loads(pickle.dumps(connection)).connection is None
