"""Parsing and formatting of resource amounts.

The scheduling core counts everything in integers so that ``free + granted ==
capacity`` holds exactly: bytes for ``memory`` and ``disk``, thousandths of a
unit ("milli") for ``cpu`` and ``gpu``, whole slots for pools. This module turns
what people write (``"2GiB"``, ``0.5``, ``"1.5GB"``) into those integers and back.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from decimal import MAX_EMAX, MIN_EMIN, Context, Decimal, DecimalException
from typing import Final

from anya_resource.errors import InvalidRequest
from anya_resource.inputs import is_decimal_text, is_integer_text, shown

MAX_AMOUNT: Final = 2**63 - 1
MILLI: Final = 1000

BYTE_RESOURCES: Final = frozenset({"memory", "disk"})
FRACTIONAL_RESOURCES: Final = frozenset({"cpu", "gpu"})
BUILTIN_RESOURCES: Final = BYTE_RESOURCES | FRACTIONAL_RESOURCES

_UNITS: Final[dict[str, int]] = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "p": 1000**5,
    "pb": 1000**5,
    "ki": 1024,
    "kib": 1024,
    "mi": 1024**2,
    "mib": 1024**2,
    "gi": 1024**3,
    "gib": 1024**3,
    "ti": 1024**4,
    "tib": 1024**4,
    "pi": 1024**5,
    "pib": 1024**5,
}
_BYTES_RE: Final = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*$")


def _reject(what: str, value: object, expected: str) -> InvalidRequest:
    return InvalidRequest(f"{what}: got {shown(value)}, expected {expected}")


def _check_number(what: str, value: object, expected: str) -> float | int:
    # bool is an int subclass; True bytes is never what anyone meant.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _reject(what, value, expected)
    if isinstance(value, float) and not math.isfinite(value):
        raise _reject(what, value, expected)
    if value < 0:
        raise _reject(what, value, expected)
    return value


def parse_bytes(value: object, what: str = "byte amount") -> int:
    """``"256MiB" -> 268435456``; also ``"1.5GB"``, ``"512k"`` and plain ints.

    Fractions of a byte are rounded up: asking for 1.5 bytes reserves 2.
    """
    expected = "a non-negative byte count such as 1048576, '512MiB' or '1.5GB' (below 2**63)"
    if isinstance(value, str):
        match = _BYTES_RE.match(value)
        if not match:
            raise _reject(what, value, expected)
        number_text, unit = match.groups()
        factor = _UNITS.get(unit.lower())
        if factor is None:
            raise _reject(what, value, expected + f"; unknown unit {unit!r}")
        try:
            # An exact product: the default context's 28 digits and exponent range could
            # round a fraction of a byte away or overflow on "1e999999999".
            exact = Context(prec=len(number_text) + 20, Emin=MIN_EMIN, Emax=MAX_EMAX)
            amount = exact.multiply(Decimal(number_text), factor)
        except DecimalException:
            raise _reject(what, value, expected) from None
        if amount > MAX_AMOUNT:  # before int(): "1e999999" would build a huge int
            raise _reject(what, value, expected)
        result = int(amount.to_integral_value(rounding="ROUND_CEILING"))
    else:
        number = _check_number(what, value, expected)
        result = number if isinstance(number, int) else math.ceil(number)
    if result > MAX_AMOUNT:
        raise _reject(what, value, expected)
    return result


def parse_cores(value: object, what: str = "core count") -> float:
    """A non-negative, finite number of cores or devices (fractions allowed)."""
    expected = "a non-negative finite number of cores such as 0.5 or 2"
    number: object = value
    if isinstance(value, str):
        if not is_decimal_text(value):  # float() also takes non-ASCII digits and "0_0.5"
            raise _reject(what, value, expected)
        number = float(value.strip())
        if not math.isfinite(number) or number < 0:  # name "1e400", not the inf it became
            raise _reject(what, value, expected)
    number = _check_number(what, number, expected)
    if number * MILLI > MAX_AMOUNT:
        raise _reject(what, value, expected)
    return float(number)


def parse_count(value: object, what: str = "slot count") -> int:
    """A non-negative whole number of pool slots."""
    expected = "a non-negative whole number of slots"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value > MAX_AMOUNT:
        raise _reject(what, value, expected)
    return value


def number_or_text(text: str) -> int | float | str:
    """An amount as written on a command line: ``"1"`` -> 1, ``"0.5"`` -> 0.5, and
    ``"4GiB"`` stays a string (``to_units`` parses it, and names it as typed in an
    error). Only ASCII numbers become numbers, and only finite ones: ``"٣"`` and
    ``"1e309"`` stay text, refused as what was typed, not as the 3 or inf Python makes
    of them."""
    if is_integer_text(text) and len(text.strip()) <= 18:
        return int(text)
    if is_decimal_text(text) and math.isfinite(number := float(text)):
        return number
    return text


def to_units(resource: str, value: object) -> int:
    """The core's integer amount for ``value`` of ``resource`` (pools: slots)."""
    what = f"amount of {resource!r}"
    if resource in BYTE_RESOURCES:
        return parse_bytes(value, what)
    if resource in FRACTIONAL_RESOURCES:
        # Round up so that a request is never granted less than it asked for, in decimal
        # (8439369.276 cores is 8439369276 thousandths; the float product is ...277.00001)
        # and forgiving float noise past the sixth place (0.30000000000000004 is 300).
        return math.ceil(round(Decimal(repr(parse_cores(value, what))) * MILLI, 6))
    return parse_count(value, what)


def from_units(resource: str, amount: int) -> float | int:
    """The human amount for the core's integer ``amount`` of ``resource``."""
    if resource in FRACTIONAL_RESOURCES:
        return amount / MILLI
    return amount


def format_bytes(nbytes: int | float) -> str:
    """``1536 -> '1.5 KiB'``: binary units, at most one decimal."""
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            if unit == "B":
                return f"{int(value)} B"
            return f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_amount(resource: str, amount: int) -> str:
    """The core's integer amount, for a table cell."""
    if resource in BYTE_RESOURCES:
        return format_bytes(amount)
    if resource in FRACTIONAL_RESOURCES:
        return f"{amount / MILLI:g}"
    return str(amount)


_DEVICES: Final = {"cpu": "CPU", "gpu": "GPU"}


def format_quantity(resource: str, amount: int) -> str:
    """The core's integer ``amount`` of ``resource`` as people say it, for a message:
    ``6 CPUs``, ``0.5 GPU``, ``2.0 GiB of memory``, ``512 B of disk``, ``3 slots of
    'postgres'``. Never the core's units (thousandths of a core, bytes as a bare int)."""
    if resource in BYTE_RESOURCES:
        return f"{format_bytes(amount)} of {resource}"
    if resource in FRACTIONAL_RESOURCES:
        cores = amount / MILLI
        return f"{cores:g} {_DEVICES[resource]}{'s' if cores > 1 else ''}"
    return f"{amount} slot{'s' if amount != 1 else ''} of {resource!r}"


def format_request(amounts: Mapping[str, int], pools: Mapping[str, int] | None = None) -> str:
    """What a request asks for, as people say it: ``a request of 6 CPUs and 2.0 GiB of
    memory`` (``format_quantity`` for each, node resources first, then pool slots)."""
    parts = [format_quantity(r, a) for r, a in amounts.items()]
    parts += [format_quantity(p, n) for p, n in (pools or {}).items()]
    if not parts:
        return "a request of nothing"
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"a request of {listed}"
