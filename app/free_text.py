"""Which characters free text (an order line's `sku`) may hold: the one rule, and its pattern.

Refused, as fixed code point ranges (so the rule does not move with the Unicode version):
- every control character (general category Cc): C0 U+0000-U+001F, DEL U+007F, C1 U+0080-U+009F.
  PostgreSQL refuses U+0000 in `text` and `jsonb`, so a NUL accepted here would jam every worker;
  the others break logs, terminals and CSV exports;
- surrogates (Cs, U+D800-U+DFFF): a lone one cannot be encoded to UTF-8, so nothing can store it
  (a valid astral character such as an emoji is one code point, never a surrogate pair, here);
- line and paragraph separators U+2028-U+2029: line breaks, like U+000A;
- the bidirectional embeddings, overrides and isolates U+202A-U+202E and U+2066-U+2069, which
  make text display in another order than it is stored ("Trojan Source", CVE-2021-42574);
- U+FEFF, the byte order mark (zero width no-break space).
Everything else is allowed, including the other format characters (Cf) that scripts and emoji
need: ZWNJ and ZWJ (U+200C, U+200D: emoji sequences, Persian, Indic scripts), the marks LRM/RLM,
the soft hyphen, and the tag characters of subdivision flags; unassigned, private use and
noncharacter code points are stored as they are (PostgreSQL takes any Unicode scalar value but
U+0000).

Lengths are counted in Unicode code points (Python's `len`, JSON Schema's `maxLength`), not in
UTF-8 bytes and not in UTF-16 units: an emoji is one, a flag (two regional indicators) is two.
"""

from __future__ import annotations

import re
from typing import Final

SURROGATES: Final = (0xD800, 0xDFFF)
REFUSED_RANGES: Final = (
    (0x0000, 0x001F),
    (0x007F, 0x009F),
    SURROGATES,
    (0x2028, 0x202E),
    (0x2066, 0x2069),
    (0xFEFF, 0xFEFF),
)


def _character_class(ranges: tuple[tuple[int, int], ...]) -> str:
    # \\u escapes, not the characters: the schema document must stay printable, valid UTF-8.
    return "".join(
        f"\\u{low:04x}" if low == high else f"\\u{low:04x}-\\u{high:04x}" for low, high in ranges
    )


# The rule as a JSON Schema `pattern`, read alike by Python's `re`, ECMA-262 and Rust's regex
# (pydantic's, and jsonschema-rs's, the validator schemathesis uses). Without the surrogates:
# engines built on UTF-8 strings cannot name them and refuse the whole pattern; nor does a field
# need them: a lone surrogate is not text, and the server refuses one in any string before any
# pattern is tried (pydantic's `string_unicode` error).
PATTERN: Final = f"^[^{_character_class(tuple(r for r in REFUSED_RANGES if r != SURROGATES))}]*$"

# All of the rule, to find the first refused character in any Python str (which can hold a lone
# surrogate). A search for a refused character also avoids `re`'s `$`, which matches before a
# final newline.
_REFUSED = re.compile(f"[{_character_class(REFUSED_RANGES)}]")


def refused_character(text: str) -> str | None:
    """The first character `text` may not hold, described for an error message; None if none."""
    found = _REFUSED.search(text)
    if found is None:
        return None
    return f"U+{ord(found.group()):04X} at position {found.start()}"


def free_text(text: str) -> str:
    """A validator: `text` itself, or ValueError naming the first refused character."""
    refused = refused_character(text)
    if refused is not None:
        msg = f"control or format character {refused} is not allowed"
        raise ValueError(msg)
    return text
