"""Parsing and formatting of resource amounts (anya_resource.quantities)."""

from __future__ import annotations

import math
from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from anya_resource.errors import InvalidRequest, ResourceError
from anya_resource.quantities import (
    BUILTIN_RESOURCES,
    BYTE_RESOURCES,
    FRACTIONAL_RESOURCES,
    MAX_AMOUNT,
    MILLI,
    format_amount,
    format_bytes,
    from_units,
    number_or_text,
    parse_bytes,
    parse_cores,
    parse_count,
    to_units,
)

KIB, MIB, GIB, TIB, PIB = (1024**n for n in range(1, 6))


def rejection(parse: Callable[[], object], value: object) -> str:
    """The message of the ``InvalidRequest`` that ``parse()`` raises; it names ``value``."""
    with pytest.raises(InvalidRequest) as info:
        parse()
    error = info.value
    assert isinstance(error, ValueError)
    assert isinstance(error, ResourceError)
    message = str(error)
    assert repr(value) in message  # names the value ...
    return message


def test_resource_sets() -> None:
    assert {"memory", "disk"} == BYTE_RESOURCES
    assert {"cpu", "gpu"} == FRACTIONAL_RESOURCES
    assert BUILTIN_RESOURCES == BYTE_RESOURCES | FRACTIONAL_RESOURCES
    assert MAX_AMOUNT == 2**63 - 1


# -- parse_bytes ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("256MiB", 268_435_456),
        ("1.5GB", 1_500_000_000),
        ("512k", 512_000),
        ("512K", 512_000),
        ("512kb", 512_000),
        ("512KiB", 512 * KIB),
        ("2Ki", 2 * KIB),
        ("2GiB", 2 * GIB),
        ("2gib", 2 * GIB),
        ("1TiB", TIB),
        ("1PiB", PIB),
        ("3MB", 3_000_000),
        ("3M", 3_000_000),
        ("1T", 10**12),
        ("1P", 10**15),
        ("100", 100),
        ("100B", 100),
        ("100b", 100),
        ("0", 0),
        ("0GiB", 0),
        (" 8 GiB ", 8 * GIB),
        ("8 GiB", 8 * GIB),
        (".5k", 500),
        ("1e3", 1000),
        ("1E3", 1000),
        ("1.5e3k", 1_500_000),
        ("2e-3k", 2),
        ("0.5KiB", 512),
    ],
)
def test_parse_bytes_strings(text: str, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, 0), (1, 1), (1024, 1024), (MAX_AMOUNT, MAX_AMOUNT), (1.0, 1), (2.0**20, MIB)],
)
def test_parse_bytes_numbers(value: int | float, expected: int) -> None:
    result = parse_bytes(value)
    assert result == expected
    assert type(result) is int


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1.5, 2),
        ("1.5", 2),
        (0.001, 1),
        ("0.001", 1),
        ("1.1B", 2),
        ("0.1KiB", 103),  # 102.4 bytes
        ("1e-999999999", 1),  # any positive fraction is at least one byte
        ("1.0000000000000000000000000001GiB", GIB + 1),  # beyond 28 digits of precision
    ],
)
def test_parse_bytes_rounds_fractions_up(value: str | float, expected: int) -> None:
    assert parse_bytes(value) == expected


def test_parse_bytes_largest_amount() -> None:
    assert parse_bytes(str(MAX_AMOUNT)) == MAX_AMOUNT
    assert parse_bytes(f"{MAX_AMOUNT - 1}.5") == MAX_AMOUNT
    assert parse_bytes("8191PiB") == 8191 * PIB


@pytest.mark.parametrize(
    "value",
    [
        -1,
        -0.5,
        "-1",
        "-1GiB",
        "+1",
        float("nan"),
        float("inf"),
        float("-inf"),
        "nan",
        "inf",
        "NaN GiB",
        True,
        False,
        2**63,
        2**100,
        float(2**63),
        1e300,
        str(2**63),
        f"{MAX_AMOUNT}.5",
        "9EiB",
        "8193PiB",
        "1e19",
        "1e999999",
        "1e999999999",  # overflows the default decimal context
        "1e999999PiB",
        "1e9999999999999999999999",
        "",
        "   ",
        "GiB",
        "1.2.3",
        "5.",
        "1 000",
        "1,5GB",
        "0x10",
        "1GiB extra",
        "12XB",
        "1gigabyte",
        "1 MiB/s",
        None,
        [],
        [1],
        {},
        {"memory": 1},
        b"1024",
        (1,),
        Decimal("1"),
        1 + 0j,
        object(),
    ],
)
def test_parse_bytes_rejects(value: object) -> None:
    message = rejection(lambda: parse_bytes(value), value)
    assert "expected a non-negative byte count" in message  # ... and what was expected


def test_parse_bytes_unknown_unit_is_named() -> None:
    with pytest.raises(InvalidRequest, match=r"unknown unit 'XB'"):
        parse_bytes("12XB")


def test_parse_bytes_names_what_is_parsed() -> None:
    with pytest.raises(InvalidRequest, match=r"^reserve\.memory: got 'lots'"):
        parse_bytes("lots", what="reserve.memory")


def test_parse_bytes_huge_exponent_is_fast() -> None:
    # Rejected on magnitude, without building a million-digit int.
    with pytest.raises(InvalidRequest):
        parse_bytes("9" * 50 + "e999999")


@given(st.integers(min_value=0, max_value=MAX_AMOUNT))
def test_parse_bytes_int_and_its_text_agree(n: int) -> None:
    assert parse_bytes(n) == n
    assert parse_bytes(str(n)) == n
    assert parse_bytes(f"{n}B") == n


@given(
    st.integers(min_value=0, max_value=2**30),
    st.sampled_from([("KiB", KIB), ("MiB", MIB), ("GiB", GIB), ("kB", 1000), ("GB", 1000**3)]),
)
def test_parse_bytes_units_multiply(n: int, unit: tuple[str, int]) -> None:
    suffix, factor = unit
    assert parse_bytes(f"{n}{suffix}") == n * factor
    assert parse_bytes(f"{n} {suffix.lower()}") == n * factor


@given(st.decimals(min_value=0, max_value=10**6, places=6, allow_nan=False, allow_infinity=False))
def test_parse_bytes_decimal_text_is_the_exact_ceiling(amount: Decimal) -> None:
    text = f"{amount:f}"
    assert parse_bytes(text) == math.ceil(amount)
    assert parse_bytes(text + "KiB") == math.ceil(amount * KIB)


@given(st.floats(min_value=0, max_value=2.0**62, allow_nan=False, allow_infinity=False))
def test_parse_bytes_float_never_less_than_asked(value: float) -> None:
    result = parse_bytes(value)
    assert Fraction(value) <= result < Fraction(value) + 1


# -- parse_cores ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0.5, 0.5), (0, 0.0), (2, 2.0), (1.25, 1.25), ("0.5", 0.5), (" 4 ", 4.0), ("1e2", 100.0)],
)
def test_parse_cores(value: object, expected: float) -> None:
    result = parse_cores(value)
    assert result == expected
    assert type(result) is float


@pytest.mark.parametrize(
    "value",
    [
        -0.5,
        -1,
        "-1",
        float("nan"),
        float("inf"),
        float("-inf"),
        "nan",
        "inf",
        "1e400",  # float("1e400") is inf
        True,
        False,
        2**63,
        MAX_AMOUNT // MILLI + 1,
        1e300,
        "",
        "  ",
        "two",
        "2 cores",
        "50%",
        None,
        [],
        {},
        b"1",
        object(),
    ],
)
def test_parse_cores_rejects(value: object) -> None:
    message = rejection(lambda: parse_cores(value), value)
    assert "expected a non-negative finite number of cores" in message


def test_parse_cores_largest() -> None:
    assert parse_cores(MAX_AMOUNT // MILLI) == float(MAX_AMOUNT // MILLI)


# -- parse_count ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"), [(0, 0), (3, 3), (4.0, 4), (MAX_AMOUNT, MAX_AMOUNT)]
)
def test_parse_count(value: object, expected: int) -> None:
    result = parse_count(value)
    assert result == expected
    assert type(result) is int


@pytest.mark.parametrize(
    "value", [-1, 1.5, float("nan"), float("inf"), True, False, 2**63, "3", "", None, [], object()]
)
def test_parse_count_rejects(value: object) -> None:
    message = rejection(lambda: parse_count(value), value)
    assert "expected a non-negative whole number of slots" in message


# -- to_units / from_units -----------------------------------------------------


@pytest.mark.parametrize(
    ("resource", "value", "expected"),
    [
        ("memory", "256MiB", 268_435_456),
        ("memory", 1024, 1024),
        ("disk", "1.5GB", 1_500_000_000),
        ("cpu", 0.5, 500),
        ("cpu", 2, 2000),
        ("cpu", "0.25", 250),
        ("gpu", 1, 1000),
        ("gpu", 0.001, 1),
        ("gpu", 0.0001, 1),  # rounded up: never granted less than asked
        ("cpu", 0.1 + 0.2, 300),  # float noise is not an extra milli-core
        ("cpu", 0, 0),
        ("postgres", 3, 3),
        ("bitcoin-rpc", 16.0, 16),
    ],
)
def test_to_units(resource: str, value: object, expected: int) -> None:
    result = to_units(resource, value)
    assert result == expected
    assert type(result) is int


@pytest.mark.parametrize(
    ("resource", "value"),
    [
        ("memory", "lots"),
        ("memory", -1),
        ("disk", True),
        ("cpu", -0.5),
        ("cpu", float("nan")),
        ("gpu", "one"),
        ("postgres", 1.5),
        ("postgres", -1),
        ("postgres", "2"),
    ],
)
def test_to_units_rejects_and_names_the_resource(resource: str, value: object) -> None:
    message = rejection(lambda: to_units(resource, value), value)
    assert f"amount of {resource!r}" in message
    assert "expected" in message


@pytest.mark.parametrize(
    ("resource", "amount", "expected"),
    [("cpu", 500, 0.5), ("gpu", 1000, 1.0), ("memory", 1024, 1024), ("postgres", 3, 3)],
)
def test_from_units(resource: str, amount: int, expected: float | int) -> None:
    assert from_units(resource, amount) == expected


@given(st.sampled_from(sorted(BYTE_RESOURCES)), st.integers(min_value=0, max_value=MAX_AMOUNT))
def test_bytes_round_trip(resource: str, amount: int) -> None:
    assert to_units(resource, from_units(resource, amount)) == amount


@given(st.sampled_from(["postgres", "bitcoin-rpc"]), st.integers(min_value=0, max_value=MAX_AMOUNT))
def test_slots_round_trip(resource: str, amount: int) -> None:
    assert to_units(resource, from_units(resource, amount)) == amount


# Up to ten million cores: float division keeps milli-cores exact well past that.
@given(st.sampled_from(sorted(FRACTIONAL_RESOURCES)), st.integers(min_value=0, max_value=10**10))
def test_cores_round_trip(resource: str, milli: int) -> None:
    assert to_units(resource, from_units(resource, milli)) == milli


@given(
    st.sampled_from(sorted(FRACTIONAL_RESOURCES)),
    st.decimals(min_value=0, max_value=10**6, places=3, allow_nan=False, allow_infinity=False),
)
def test_cores_with_three_decimals_are_exact(resource: str, cores: Decimal) -> None:
    milli = int(cores * MILLI)
    assert to_units(resource, float(cores)) == milli
    assert to_units(resource, f"{cores:f}") == milli
    assert from_units(resource, milli) == float(cores)


@given(
    st.sampled_from(sorted(FRACTIONAL_RESOURCES)),
    st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False),
)
def test_cores_never_granted_less_than_asked(resource: str, cores: float) -> None:
    milli = to_units(resource, cores)
    # At most one milli-core more than asked, and never measurably less.
    assert milli >= cores * MILLI - 1e-6 * max(1.0, cores)
    assert milli < cores * MILLI + 1 + 1e-6 * max(1.0, cores)


# -- formatting ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("nbytes", "expected"),
    [
        (0, "0 B"),
        (1, "1 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (268_435_456, "256.0 MiB"),
        (8 * GIB, "8.0 GiB"),
        (1_500_000_000, "1.4 GiB"),
        (TIB, "1.0 TiB"),
        (PIB, "1024.0 TiB"),  # TiB is the largest unit
        (MAX_AMOUNT, "8388608.0 TiB"),
        (512.0, "512 B"),
        (-2048, "-2.0 KiB"),
    ],
)
def test_format_bytes(nbytes: int | float, expected: str) -> None:
    assert format_bytes(nbytes) == expected


# Below 2**62: near 2**63 the rounded text ("8388608.0 TiB") is 2**63 itself.
@given(st.integers(min_value=0, max_value=2**62))
def test_format_bytes_parses_back_within_rounding(nbytes: int) -> None:
    text = format_bytes(nbytes)
    number, unit = text.split()
    assert unit in {"B", "KiB", "MiB", "GiB", "TiB"}
    back = parse_bytes(number + ("" if unit == "B" else unit))
    # One decimal of the unit: off by at most half a tenth of it.
    scale = {"B": 1, "KiB": KIB, "MiB": MIB, "GiB": GIB, "TiB": TIB}[unit]
    assert abs(back - nbytes) <= 0.05 * scale + 1


@pytest.mark.parametrize(
    ("resource", "amount", "expected"),
    [
        ("memory", 1536, "1.5 KiB"),
        ("disk", 10, "10 B"),
        ("cpu", 500, "0.5"),
        ("cpu", 2000, "2"),
        ("gpu", 1, "0.001"),
        ("postgres", 20, "20"),
    ],
)
def test_format_amount(resource: str, amount: int, expected: str) -> None:
    assert format_amount(resource, amount) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1", 1), ("0.5", 0.5), ("4GiB", "4GiB"), ("1e3", 1000.0), ("postgres", "postgres")],
)
def test_number_or_text(text: str, expected: object) -> None:
    value = number_or_text(text)
    assert value == expected
    assert type(value) is type(expected)
