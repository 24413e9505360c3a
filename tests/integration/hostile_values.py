"""Hostile values for every field of an order, as hypothesis strategies, and the JSON that carries
them: the same values go into HTTP bodies and into records produced straight to the topic.

Nothing here decides which values are valid: `tests.integration.input_judge` does, from the
documented rules (it also prices an envelope's items, for a total that can be right). Each field
is valid-looking three times in four, so that plenty of orders are accepted and travel the whole
way, and the hostile quarter spreads over every field.
"""

from __future__ import annotations

import json
import math
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, cast

from hypothesis import strategies as st

from tests.integration import input_judge

# Characters and sequences that have broken text pipelines somewhere: C0/C1 controls, lone
# surrogates, line separators, bidi controls ("Trojan Source"), BOM, zero widths, combining marks,
# noncharacters, private use, tag characters, RTL scripts, emoji with ZWJ and variation selectors.
SPECIALS = (
    "\x00",
    "\x01",
    "\x08",
    "\t",
    "\n",
    "\r",
    "\x1b",
    "\x1f",
    "\x7f",
    "\x80",
    "\x85",
    "\x9f",
    "\xa0",
    "\xad",
    "\ud800",
    "\udbff",
    "\udc00",
    "\udfff",
    "\u200b",
    "\u200c",
    "\u200d",
    "\u200e",
    "\u200f",
    "\u061c",
    "\u2028",
    "\u2029",
    "\u202a",
    "\u202b",
    "\u202c",
    "\u202d",
    "\u202e",
    "\u2066",
    "\u2067",
    "\u2068",
    "\u2069",
    "\ufeff",
    "\ufffe",
    "\uffff",
    "\ue000",
    "\U0010ffff",
    "\U000e0001",
    "\u0301",
    "e\u0301",
    "\u05e9\u05dc\u05d5\u05dd",  # Hebrew
    "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",  # Persian with a ZWNJ
    "\U0001f600",
    "\U0001f468\u200d\U0001f469\u200d\U0001f467",  # family: ZWJ sequence
    "\U0001f3f3\ufe0f\u200d\U0001f308",  # rainbow flag: variation selector and ZWJ
    "\U0001f1eb\U0001f1f7",  # regional indicators
    "\U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f",  # tag flag
    "'",
    '"',
    "\\",
    "%00",
    "${jndi:ldap://x}",
    "<script>",
    "\\u0000",
)

# What free text is documented to refuse (app/free_text.py's docstring), to build allowed text.
_FORMAT_REFUSED = "\u2028\u2029\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\ufeff"
ANY_CHARACTER = st.characters(exclude_categories=())  # surrogates included
ALLOWED_CHARACTER = st.characters(
    exclude_categories=("Cc", "Cs"), exclude_characters=_FORMAT_REFUSED
)
ALLOWED_SPECIALS = tuple(
    s
    for s in SPECIALS
    if not any(unicodedata.category(c) in ("Cc", "Cs") or c in _FORMAT_REFUSED for c in s)
)
CUSTOMER_CHARACTER = st.sampled_from(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:@-"
)
# Bytes a header value can carry (RFC 9110 field-vchar and obs-text; spaces and tabs inside).
HEADER_CHARACTER = st.sampled_from(
    [chr(b) for b in range(0x21, 0x7F)] + [chr(b) for b in range(0x80, 0x100)] + [" ", "\t"]
)


@dataclass(frozen=True)
class Raw:
    """A JSON fragment written as is: number spellings Python would not write (1E400, -0,
    NaN, a 5,000-digit integer)."""

    text: str


def mostly(
    valid: st.SearchStrategy[Any], hostile: st.SearchStrategy[Any], odds: int = 4
) -> st.SearchStrategy[Any]:
    """`hostile` once in `odds` draws, else `valid` (what shrinking moves towards)."""
    return st.sampled_from((False,) * (odds - 1) + (True,)).flatmap(
        lambda bad: hostile if bad else valid
    )


def texts(alphabet: st.SearchStrategy[str], *sizes: int) -> st.SearchStrategy[str]:
    """Text of exactly one of `sizes` characters (code points)."""
    return st.sampled_from(sizes).flatmap(lambda n: st.text(alphabet, min_size=n, max_size=n))


def pieces(alphabet: st.SearchStrategy[str], max_size: int) -> st.SearchStrategy[str]:
    """Text from single characters mixed with the multi-character specials."""
    return st.lists(st.one_of(alphabet, st.sampled_from(SPECIALS)), max_size=max_size).map("".join)


def hostile_text(max_size: int = 70) -> st.SearchStrategy[str]:
    return st.one_of(
        pieces(ANY_CHARACTER, max_size),
        st.text(ANY_CHARACTER, max_size=max_size),
        texts(ALLOWED_CHARACTER, 0, 65, 66, 200),
        st.builds(
            lambda left, bad, right: left + bad + right,
            st.text(ALLOWED_CHARACTER, max_size=30),
            st.sampled_from(SPECIALS),
            st.text(ALLOWED_CHARACTER, max_size=30),
        ),
    )


NOT_A_STRING = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.just([]),
    st.just({}),
    st.lists(st.text(max_size=3), min_size=1, max_size=2),
)


def skus() -> st.SearchStrategy[Any]:
    allowed = st.one_of(
        st.text(ALLOWED_CHARACTER, min_size=1, max_size=64),
        texts(ALLOWED_CHARACTER, 1, 63, 64),
        st.lists(st.sampled_from(ALLOWED_SPECIALS), min_size=1, max_size=8)
        .map("".join)
        .map(lambda s: s[:64]),
    )
    return mostly(allowed, st.one_of(hostile_text(), NOT_A_STRING))


def customer_ids(prefix: str, pool: list[str]) -> st.SearchStrategy[Any]:
    """Strings always begin with `prefix` (the test's run id), so that no customer accepted here
    is one another test of the session also used; `pool` customers get many orders each."""
    room = 64 - len(prefix)
    allowed = st.one_of(
        st.sampled_from(pool),
        texts(CUSTOMER_CHARACTER, 1, room - 1, room).map(lambda s: prefix + s),
    )
    hostile = st.one_of(
        hostile_text(60).map(lambda s: prefix + s),
        texts(CUSTOMER_CHARACTER, room + 1, room + 100).map(lambda s: prefix + s),
        st.just(""),
        NOT_A_STRING,
    )
    return mostly(allowed, hostile)


CURRENCIES = ("EUR", "USD", "JPY", "BHD", "CLF", "XXX", "XTS", "CHE")
ODD_CURRENCIES = (
    "eur",
    "EU",
    "EURO",
    "",
    " EUR",
    "EUR ",
    "E\x00R",
    "EU\u0301R",
    "\u20ac",
    "\uff25\uff35\uff32",  # fullwidth EUR
    "EUR\n",
    "\ufeffEUR",
    "ZZZ",
)


def currencies() -> st.SearchStrategy[Any]:
    hostile = st.one_of(
        st.sampled_from(ODD_CURRENCIES),
        st.text(st.characters(min_codepoint=0x41, max_codepoint=0x5A), min_size=3, max_size=3),
        hostile_text(8),
        NOT_A_STRING,
    )
    return mostly(st.sampled_from(CURRENCIES), hostile)


def quantities() -> st.SearchStrategy[Any]:
    allowed = st.one_of(
        st.integers(1, 10_000),
        st.sampled_from([1, 9_999, 10_000, 1.0, 78.0, 10_000.0]),
        st.sampled_from(
            [Raw("1E2"), Raw("1e4"), Raw("1.0000000000000001"), Raw("0.99999999999999999")]
        ),
    )
    hostile = st.one_of(
        st.sampled_from([0, -1, 10_001, 2**31, 2**63, 2**64, 10**30, -(2**63)]),
        st.integers(),
        st.floats(),
        st.sampled_from(
            [
                Raw("NaN"),
                Raw("Infinity"),
                Raw("-Infinity"),
                Raw("1E400"),
                Raw("-0"),
                Raw("-0.0"),
                Raw("1" + "0" * 5000),
                Raw("10000.00000000001"),
                Raw("1.5"),
            ]
        ),
        st.sampled_from(["1", "", "one", "\uff11", " 1", "10000"]),
        NOT_A_STRING,
    )
    return mostly(allowed, hostile)


AMOUNT_REGEX = r"[0-9]{1,10}(\.[0-9]{1,4})?"
ODD_AMOUNTS = (
    "1.23456",
    "0.00001",
    "-1",
    "-0",
    "+1",
    "1e2",
    "1E+2",
    "NaN",
    "Infinity",
    "12345678901",
    "99999999999.9999",
    " 1",
    "1 ",
    "1.",
    ".5",
    "1_000",
    "\uff11",  # fullwidth one
    "\u0661",  # Arabic-Indic one
    "0x10",
    "1,5",
    "",
    "1.2.3",
    "1\x00",
)


def unit_prices() -> st.SearchStrategy[Any]:
    allowed = st.one_of(
        st.from_regex(AMOUNT_REGEX, fullmatch=True),
        st.sampled_from(["0", "0.1", "1.2345", "9999999999.9999", "007.5", "0000000000.0000"]),
    )
    hostile = st.one_of(
        st.sampled_from(ODD_AMOUNTS),
        st.decimals(allow_nan=True).map(str),
        st.floats(),
        st.integers(),
        st.sampled_from([Raw("1E400"), Raw("NaN"), Raw("-0"), Raw("1.5")]),
        hostile_text(20),
        st.none(),
    )
    return mostly(allowed, hostile)


@st.composite
def with_oddities(draw: st.DrawFn, obj: dict[str, Any]) -> Any:
    """`obj` as it is (most of the time), or a member missing, extra, null or wrapped."""
    change = draw(st.sampled_from(["none"] * 12 + ["drop", "extra", "null", "wrap"]))
    if change == "none" or not obj:
        return obj
    odd = dict(obj)
    name = draw(st.sampled_from(sorted(odd)))
    if change == "drop":
        del odd[name]
    elif change == "extra":
        odd[draw(st.one_of(st.just("extra"), hostile_text(10)))] = draw(
            st.one_of(st.none(), st.integers(), hostile_text(10))
        )
    elif change == "null":
        odd[name] = None
    else:
        odd[name] = [odd[name]]
    return odd


def order_lines() -> st.SearchStrategy[Any]:
    line = st.fixed_dictionaries(
        {"sku": skus(), "quantity": quantities(), "unit_price": unit_prices()}
    ).flatmap(with_oddities)
    simple = st.builds(
        lambda n: {"sku": f"s{n}", "quantity": 1, "unit_price": "0.5"}, st.integers(0, 99)
    )
    hostile = st.one_of(
        st.just([]),
        st.lists(simple, min_size=100, max_size=101),
        line,  # an object instead of an array
        NOT_A_STRING,
    )
    return mostly(st.lists(line, min_size=1, max_size=3), hostile)


def order_bodies(prefix: str, pool: list[str]) -> st.SearchStrategy[Any]:
    """A POST /orders body: an object with hostile members, or something that is no object."""
    body = st.fixed_dictionaries(
        {
            "customer_id": customer_ids(prefix, pool),
            "items": order_lines(),
            "currency": currencies(),
        }
    ).flatmap(with_oddities)
    not_an_object = st.one_of(
        body.map(lambda b: [b]), st.just([]), st.just("order"), st.just(1), st.none()
    )
    return mostly(body, not_an_object)


# --- JSON as bytes -----------------------------------------------------------------------------

# How a document is written out: escaped to ASCII (lone surrogates as \ud800, exactly what a
# client sends), raw UTF-8 (a lone surrogate then makes invalid UTF-8), raw UTF-8 with control
# characters left unescaped inside strings (not JSON), or behind a byte order mark.
ENCODINGS = ("ascii", "utf-8", "ascii", "utf-8", "ascii", "utf-8", "raw-controls", "bom")


def to_json(value: Any, encoding: str = "ascii") -> bytes:
    text = _write(value, raw_controls=encoding == "raw-controls", ascii=encoding == "ascii")
    data = text.encode("utf-8", "surrogatepass")
    return b"\xef\xbb\xbf" + data if encoding == "bom" else data


def _write(value: Any, *, raw_controls: bool, ascii: bool) -> str:
    def write(v: Any) -> str:
        if isinstance(v, Raw):
            return v.text
        if isinstance(v, dict):
            return "{" + ",".join(f"{write(str(k))}:{write(x)}" for k, x in v.items()) + "}"
        if isinstance(v, list | tuple):
            return "[" + ",".join(write(x) for x in v) + "]"
        if isinstance(v, str) and raw_controls:
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, float) and not math.isfinite(v):
            return json.dumps(v)  # NaN, Infinity, -Infinity: not JSON, sent anyway
        return json.dumps(v, ensure_ascii=ascii)

    return write(value)


# --- records produced straight to the topic ---------------------------------------------------


@dataclass(frozen=True)
class Fill:
    """A value known only when the record is produced: its fresh order id (`kind` "order_id",
    "ORDER_ID" or "order_id+NUL"), or an instant `seconds` from then written in `form`."""

    kind: str
    seconds: int = 0
    form: str = "offset"  # or "Z", or "naive"


ACCEPTED_AT = (Fill("instant"), Fill("instant", form="Z"))
# Valid ISO 8601 instants that fall outside Python's years once in UTC: the contract refuses them
# (they were once stored, and no read of them answered).
OUT_OF_RANGE_ACCEPTED_AT = ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00")
ODD_ACCEPTED_AT = (
    *OUT_OF_RANGE_ACCEPTED_AT,
    Fill("instant", form="naive"),
    "0001-01-01T00:00:00+00:00",
    "9999-12-31T23:59:59+00:00",
    "2024-02-30T00:00:00+00:00",
    "",
    None,
)
ACCEPT_BY = (Fill("instant", 120), Fill("instant", 120, "Z"), "9999-12-31T23:59:59+00:00")
ODD_ACCEPT_BY = (
    Fill("instant", -120),  # appended after its deadline: never processed, never set aside
    Fill("instant", 120, "naive"),
    "tomorrow",
    None,
)
ODD_ORDER_IDS = (Fill("ORDER_ID"), Fill("order_id+NUL"), "", "not-a-uuid", None, 7)


def _total(items: Any) -> Decimal | None:
    """The items' exact total when they are valid lines (the judge prices them), else None."""
    try:
        lines = input_judge.parse_json(to_json(items), bom=False)
        priced = input_judge.order({"customer_id": "c", "items": lines, "currency": "EUR"})
    except input_judge.Refused:
        return None
    return priced.total


@st.composite
def totals(draw: st.DrawFn, items: Any) -> Any:
    exact = _total(items)
    if exact is None:
        return draw(st.sampled_from(["0", "1", None]))
    exact_forms: list[Any] = [str(exact), f"{exact:.4f}"]
    if exact == int(exact):
        exact_forms.append(int(exact))
    wrong = [str(exact + Decimal("0.0001")), "NaN", None, "", f"-{exact}" if exact else "1"]
    return draw(mostly(st.sampled_from(exact_forms), st.sampled_from(wrong), odds=8))


@st.composite
def envelopes(draw: st.DrawFn, prefix: str, pool: list[str]) -> Any:
    items = draw(order_lines())
    envelope = {
        "schema_version": draw(mostly(st.just(1), st.sampled_from([2, 0, "1", None, 1.5]), odds=8)),
        "order_id": draw(mostly(st.just(Fill("order_id")), st.sampled_from(ODD_ORDER_IDS), odds=8)),
        "customer_id": draw(customer_ids(prefix, pool)),
        "items": items,
        "total": draw(totals(items)),
        "currency": draw(currencies()),
        "accepted_at": draw(mostly(st.sampled_from(ACCEPTED_AT), st.sampled_from(ODD_ACCEPTED_AT))),
        "accept_by": draw(
            mostly(st.sampled_from(ACCEPT_BY), st.sampled_from(ODD_ACCEPT_BY), odds=8)
        ),
    }
    return draw(with_oddities(envelope))


NOT_AN_ENVELOPE = (b"", b"not json", b"null", b"[]", b"{}", b'{"schema_version":1}', None)
RECORD_HEADERS = (
    (),
    (),
    (("request-id", b"\x00\xff\xfe"),),
    (("schema-version", b"2"),),
    (("content-type", b"text/plain"),),
)


@dataclass(frozen=True)
class RecordPlan:
    """A record to produce: its value (an envelope with Fills, or bytes), how it is written."""

    value: Any
    encoding: str
    headers: tuple[tuple[str, bytes], ...]

    @property
    def customer_id(self) -> Any:
        return self.value.get("customer_id") if isinstance(self.value, dict) else None

    def render(self, order_id: uuid.UUID, now: datetime) -> bytes | None:
        if self.value is None or isinstance(self.value, bytes):
            return cast("bytes | None", self.value)
        return to_json(_filled(self.value, order_id, now), self.encoding)


def record_plans(prefix: str, pool: list[str]) -> st.SearchStrategy[RecordPlan]:
    value = mostly(
        envelopes(prefix, pool),
        st.one_of(st.sampled_from(NOT_AN_ENVELOPE), st.binary(max_size=40)),
    )
    return st.builds(RecordPlan, value, st.sampled_from(ENCODINGS), st.sampled_from(RECORD_HEADERS))


def _filled(value: Any, order_id: uuid.UUID, now: datetime) -> Any:
    if isinstance(value, dict):
        return {key: _filled(item, order_id, now) for key, item in value.items()}
    if isinstance(value, list):
        return [_filled(item, order_id, now) for item in value]
    if not isinstance(value, Fill):
        return value
    if value.kind == "instant":
        instant = now + timedelta(seconds=value.seconds)
        if value.form == "naive":
            return instant.replace(tzinfo=None).isoformat()
        written = instant.isoformat()
        return written.replace("+00:00", "Z") if value.form == "Z" else written
    return {
        "order_id": str(order_id),
        "ORDER_ID": str(order_id).upper(),
        "order_id+NUL": f"{order_id}\x00",
    }[value.kind]
