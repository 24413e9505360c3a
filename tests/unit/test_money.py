"""Amounts travel as one exact decimal form, and the schema's pattern says exactly which."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app import money

SCHEMA_PATTERN = re.compile(money.PATTERN)


def accepted(value: object) -> bool:
    try:
        money.parse_amount(value)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize(
    ("text", "amount"),
    [("0", "0"), ("0.10", "0.10"), ("007.50", "7.50"), ("9999999999.9999", "9999999999.9999")],
)
def test_plain_decimal_strings_are_amounts(text: str, amount: str) -> None:
    assert money.parse_amount(text) == Decimal(amount)
    assert str(money.parse_amount(text)) == amount


@pytest.mark.parametrize(
    "refused",
    [
        1.5,  # a JSON number: it went through a float
        2,
        True,
        None,
        "",
        "-1",
        "+1",
        "-0",
        "1.",
        ".5",
        " 1",
        "1 ",
        "1\n",
        "1e2",
        "1E+2",
        "1_000",
        "NaN",
        "Infinity",
        "1.00001",
        "12345678901",
        "١٢",  # Arabic-Indic digits: Decimal() reads them, the wire form does not
    ],
)
def test_anything_else_is_refused(refused: object) -> None:
    assert not accepted(refused)


def test_decimals_made_in_code_are_judged_in_their_written_out_form() -> None:
    assert str(money.parse_amount(Decimal("1E+2"))) == "100"
    assert not accepted(Decimal("-0"))
    assert not accepted(Decimal("0.00001"))
    assert not accepted(Decimal("NaN"))


@given(st.text(alphabet="0123456789.-+eE ", max_size=18))
def test_a_string_is_an_amount_exactly_when_the_pattern_matches(text: str) -> None:
    assert accepted(text) == bool(SCHEMA_PATTERN.fullmatch(text))


@given(st.from_regex(SCHEMA_PATTERN, fullmatch=True))
def test_every_amount_the_pattern_allows_round_trips_in_the_same_form(text: str) -> None:
    assert SCHEMA_PATTERN.fullmatch(str(money.parse_amount(text)))
