"""`make bench-e2e`'s per-customer check (scripts/bench/e2e_check.py), on small made-up runs."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts" / "bench"))

from e2e_check import Accepted, Row, check, parse_accepted  # noqa: E402

# Customer a on partition 0 (offsets 0, 2, 3), customer b on partition 1 (offsets 0, 1).
ACCEPTED = [
    Accepted("o1", 0, 0),
    Accepted("o2", 1, 0),
    Accepted("o3", 0, 2),
    Accepted("o4", 1, 1),
    Accepted("o5", 0, 3),
]
ROWS = [
    Row("o1", "a", 1, 0, 0),
    Row("o2", "b", 1, 1, 0),
    Row("o3", "a", 2, 0, 2),
    Row("o4", "b", 2, 1, 1),
    Row("o5", "a", 3, 0, 3),
]


def test_every_order_stored_once_in_order() -> None:
    result = check(ACCEPTED, ROWS)
    assert result.passed
    assert (result.accepted, result.stored_of_accepted, result.customers) == (5, 5, 2)


def test_an_order_stored_without_its_answer_read_is_allowed() -> None:
    # Offset 1 of partition 0: produced and stored, its 202 never read (in flight at the end).
    result = check(ACCEPTED, [*ROWS, Row("o6", "a", 4, 0, 4)])
    assert result.passed
    assert result.unaccepted_rows == 1


def test_a_missing_order_fails() -> None:
    result = check(ACCEPTED, [row for row in ROWS if row.order_id != "o5"])
    assert not result.passed
    assert result.missing == 1
    assert "o5" in result.examples[0]


def test_a_customer_numbered_against_acceptance_order_fails() -> None:
    # o1 and o3 (offsets 0 and 2 of partition 0) numbered the other way round.
    renumbered = {"o1": 2, "o3": 1}
    swapped = [
        Row(
            r.order_id, r.customer_id, renumbered.get(r.order_id, r.sequence), r.partition, r.offset
        )
        for r in ROWS
    ]
    result = check(ACCEPTED, swapped)
    assert not result.passed
    assert result.customers_out_of_order == 1
    assert result.customers_with_sequence_gaps == 0


def test_a_sequence_gap_or_another_record_fails() -> None:
    gap = [Row("o5", "a", 4, 0, 3) if r.order_id == "o5" else r for r in ROWS]
    assert check(ACCEPTED, gap).customers_with_sequence_gaps == 1
    moved = [Row("o4", "b", 2, 1, 7) if r.order_id == "o4" else r for r in ROWS]
    assert check(ACCEPTED, moved).other_record == 1
    assert not check(ACCEPTED, moved).passed


def test_an_order_answered_twice_fails() -> None:
    result = check([*ACCEPTED, Accepted("o2", 1, 0)], ROWS)
    assert not result.passed
    assert result.duplicate_answers == 1


def test_parse_accepted_bodies() -> None:
    lines = [
        '{"order_id":"o1","partition":0,"offset":12}',
        "",
        '{"order_id":"o2","partition":3,"offset":"4"}',
    ]
    assert parse_accepted(lines) == [Accepted("o1", 0, 12), Accepted("o2", 3, 4)]
