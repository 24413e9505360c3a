"""The character rule for free text: one rule, and the schema's pattern says exactly the same."""

from __future__ import annotations

import re
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from app import free_text
from app.api import create_app
from app.contract import Sku

SCHEMA_PATTERN = re.compile(free_text.PATTERN)
SKU = TypeAdapter(Sku)


def server_accepts(sku: str) -> bool:
    try:
        SKU.validate_python(sku)
    except ValidationError:
        return False
    return True


def test_every_character_is_judged_alike_by_the_server_and_the_schema() -> None:
    low, high = free_text.SURROGATES
    differ = [
        f"U+{code:04X}"
        for code in range(sys.maxunicode + 1)
        if not low <= code <= high
        and server_accepts(chr(code)) != bool(SCHEMA_PATTERN.fullmatch(chr(code)))
    ]
    assert differ == []


def test_lone_surrogates_are_refused_though_the_pattern_cannot_name_them() -> None:
    low, high = free_text.SURROGATES
    assert not any(server_accepts(f"a{chr(code)}") for code in range(low, high + 1))
    assert all(free_text.refused_character(chr(code)) for code in range(low, high + 1))


@pytest.mark.parametrize(
    "code",
    [
        *(0x00, 0x09, 0x0A, 0x1F, 0x7F, 0x80, 0x85, 0x9F),  # controls
        *(0xD800, 0xDFFF),  # surrogates
        *(0x2028, 0x2029, 0x202A, 0x202E, 0x2066, 0x2069, 0xFEFF),  # separators, bidi, BOM
    ],
    ids=lambda code: f"U+{code:04X}",
)
def test_controls_surrogates_separators_bidi_overrides_and_the_bom_are_refused(code: int) -> None:
    assert free_text.refused_character(f"ab{chr(code)}c") == f"U+{code:04X} at position 2"
    assert not server_accepts(f"ab{chr(code)}c")


@pytest.mark.parametrize(
    "allowed",
    [
        "\U0001f468\u200d\U0001f469\u200d\U0001f467",  # ZWJ sequence
        "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",  # ZWNJ in Persian
        "\u05e9\u05dc\u05d5\u05dd",  # Hebrew, right to left
        "\u200e\u200f\u061c",  # directional marks (not overrides)
        "\U0001f3f4\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f",  # tag flag
        "\u00a0\u00ad\u200b",  # no-break space, soft hyphen, zero width space
        "\ue000\ufffe\uffff\U0010ffff",  # private use, noncharacters
    ],
)
def test_scripts_emoji_and_marks_are_kept(allowed: str) -> None:
    assert free_text.refused_character(allowed) is None
    assert server_accepts(allowed)
    allowed.encode("utf-8")  # and all of it can be stored


def test_length_is_counted_in_code_points() -> None:
    assert server_accepts("\U0001f600" * 64)
    assert not server_accepts("\U0001f600" * 65)
    assert not server_accepts("")


@given(st.text(max_size=64))
def test_any_text_is_accepted_exactly_when_the_pattern_matches(text: str) -> None:
    assert server_accepts(text) == (len(text) >= 1 and bool(SCHEMA_PATTERN.fullmatch(text)))


@given(st.from_regex(SCHEMA_PATTERN, fullmatch=True).filter(lambda s: 1 <= len(s) <= 64))
def test_what_the_pattern_generates_the_server_accepts(text: str) -> None:
    assert server_accepts(text)


def test_the_openapi_schema_carries_the_pattern_and_stays_valid_utf8() -> None:
    spec = create_app().openapi()
    sku = spec["components"]["schemas"]["OrderLine"]["properties"]["sku"]
    assert sku["pattern"] == free_text.PATTERN
    assert (sku["minLength"], sku["maxLength"]) == (1, 64)
    assert free_text.PATTERN.isascii()
