"""How money is written on the wire: one exact form, for the API, the worker and the schema.

A decimal string of 1 to 10 digits, optionally a point and 1 to 4 more: "0", "0.10", "19.99",
"9999999999.9999". No sign (prices are never negative), no exponent, no spaces, no JSON number:
a JSON number goes through a binary float on its way in (0.1 is not 0.1 there), and a schema
cannot say which numbers a float keeps exact. Leading zeros are allowed ("007.50" is 7.50).
This is exactly a NUMERIC with 14 digits, 4 of them after the point, and not negative.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Final

PATTERN: Final = r"^[0-9]{1,10}(\.[0-9]{1,4})?$"
_AMOUNT = re.compile(r"[0-9]{1,10}(?:\.[0-9]{1,4})?")


def parse_amount(value: object) -> Decimal:
    """An amount from its wire form (a string) or from a Decimal made in code; else ValueError."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, Decimal):
        # Written out in full ("1E+2" -> "100") so it travels in the wire form, and judged as such.
        text = format(value, "f")
    else:
        msg = 'an amount is a decimal string such as "19.99" (not a JSON number)'
        raise ValueError(msg)  # noqa: TRY004 (pydantic turns ValueError into a field error)
    if _AMOUNT.fullmatch(text) is None:
        msg = "an amount has 1 to 10 digits, optionally a point and 1 to 4 more, no sign"
        raise ValueError(msg)
    return Decimal(text)
