"""What callers type, checked before anything else sees it: names, decimal text, and how
any value is shown in an error message.

* ``shown(value)``: a value as an error message names it. Never raises: an int of more
  than 4,300 digits cannot be turned into text by Python at all (``ValueError`` from the
  int-to-str limit), so it is named by its size; anything else is its ``repr``, cut at
  80 characters.
* ``check_name(what, value)``: tenant, pool, node and key names end up in tables,
  metrics labels and logs: 1 to 200 characters, none of them a control, format
  (bidirectional overrides, zero-width), separator-line or unassigned character.
* ``ASCII_DECIMAL``: the only way a number may be written as text: ASCII digits, one
  optional point, an optional exponent. Python's own ``float()`` and ``int()`` also take
  Arabic-Indic and full-width digits and underscores (``"\\u0660.\\u0665"``,
  ``"\\uff10.\\uff15"``, ``"0_0.5"``), which nobody means as an amount.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final

from anya_resource.errors import InvalidRequest

NAME_MAX: Final = 200
SHOWN_MAX: Final = 80
# Categories never allowed in a name: controls (Cc: NUL, newlines, escapes), formats
# (Cf: bidirectional overrides and isolates, zero-width joiners), line and paragraph
# separators, surrogates, private use, unassigned.
_FORBIDDEN: Final = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})
ASCII_DECIMAL: Final = re.compile(r"\s*[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\s*")
ASCII_INTEGER: Final = re.compile(r"\s*[+-]?[0-9]+\s*")
_HUGE_BITS: Final = 4000 * 3  # about 3,600 digits: well inside the int-to-str limit


def shown(value: object) -> str:
    """``value`` as an error message names it (see the module's doc)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > _HUGE_BITS:
        digits = int(value.bit_length() * 0.30103) + 1
        return f"an integer of about {digits:,} digits"
    try:
        text = repr(value)
    except Exception:
        text = f"<a {type(value).__name__} that cannot be shown>"
    return text if len(text) <= SHOWN_MAX else text[: SHOWN_MAX - 3] + "..."


def check_name(what: str, value: object) -> str:
    """``value`` if it is a fit name; else ``InvalidRequest`` naming what was wrong."""
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"{what}: got {shown(value)}, expected a non-empty name")
    if len(value) > NAME_MAX:
        raise InvalidRequest(
            f"{what}: got a name of {len(value)} characters, expected at most {NAME_MAX}"
        )
    for index, char in enumerate(value):
        if unicodedata.category(char) in _FORBIDDEN:
            raise InvalidRequest(
                f"{what}: got {shown(value)}, whose character {index} (U+{ord(char):04X}, "
                f"{unicodedata.name(char, 'unnamed')}) is not allowed; expected printable "
                "characters without controls, bidirectional or zero-width marks"
            )
    return value


def is_decimal_text(text: str) -> bool:
    return ASCII_DECIMAL.fullmatch(text) is not None


def is_integer_text(text: str) -> bool:
    return ASCII_INTEGER.fullmatch(text) is not None


__all__ = ["check_name", "is_decimal_text", "is_integer_text", "shown"]
