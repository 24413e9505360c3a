"""The lab's tally (app/lab/semantics/tally.py): lost, doubled and reordered, counted right."""

from __future__ import annotations

import pytest

from app.lab.semantics.stream import Event, decode, encode, make_stream
from app.lab.semantics.tally import Received, percentile, tally


def copy(event_id: int, key: str = "a", seq: int | None = None) -> Received:
    return Received(event_id, key, event_id if seq is None else seq, 0.0, 0.0, "m1:1")


def test_everything_received_once_in_order_is_clean() -> None:
    counted = tally(3, {1, 2, 3}, [copy(1), copy(2), copy(3)])
    assert (counted.sent, counted.acknowledged) == (3, 3)
    assert (counted.lost, counted.duplicated, counted.out_of_order) == (0, 0, 0)


def test_an_acknowledged_event_never_received_is_lost() -> None:
    assert tally(3, {1, 2, 3}, [copy(1), copy(3)]).lost == 1


def test_an_event_the_producer_was_told_failed_is_not_lost() -> None:
    counted = tally(3, {1, 3}, [copy(1), copy(3)])
    assert (counted.sent, counted.acknowledged, counted.lost) == (3, 2, 0)


def test_copies_beyond_the_first_are_duplicates() -> None:
    counted = tally(2, {1, 2}, [copy(1), copy(2), copy(1), copy(2), copy(2)])
    assert counted.duplicated == 3
    assert counted.lost == 0


def test_a_redelivered_copy_arriving_late_is_not_a_reordering() -> None:
    assert tally(3, {1, 2, 3}, [copy(1), copy(2), copy(1), copy(3)]).out_of_order == 0


def test_a_gap_is_not_a_reordering() -> None:
    assert tally(3, {1, 2, 3}, [copy(1), copy(3)]).out_of_order == 0


def test_out_of_order_counts_keys_whose_first_arrivals_go_backwards() -> None:
    arrivals = [
        copy(1, "a", 1),
        copy(3, "a", 2),
        copy(2, "b", 1),
        copy(5, "a", 4),
        copy(4, "a", 3),  # a: 1, 2, 4, 3
        copy(6, "b", 2),
        copy(7, "c", 2),
        copy(8, "c", 1),  # c: 2, 1
    ]
    assert tally(8, set(range(1, 9)), arrivals).out_of_order == 2


def test_nothing_received() -> None:
    counted = tally(2, {1, 2}, [])
    assert (counted.lost, counted.duplicated, counted.out_of_order) == (2, 0, 0)


@pytest.mark.parametrize(
    ("values", "fraction", "expected"),
    [
        ([], 0.99, None),
        ([7.0], 0.99, 7.0),
        ([float(v) for v in range(1, 101)], 0.99, 99.0),
        ([float(v) for v in range(1, 101)], 0.5, 50.0),
        ([5.0, 1.0, 3.0], 1.0, 5.0),
    ],
)
def test_percentile_is_nearest_rank(
    values: list[float], fraction: float, expected: float | None
) -> None:
    assert percentile(values, fraction) == expected


def test_the_stream_numbers_each_key_from_one_without_gaps() -> None:
    stream = make_stream(500, 7)
    assert [event.id for event in stream] == list(range(1, 501))
    per_key: dict[str, list[int]] = {}
    for event in stream:
        per_key.setdefault(event.key, []).append(event.seq)
    assert len(per_key) == 7
    assert all(seqs == list(range(1, len(seqs) + 1)) for seqs in per_key.values())
    assert make_stream(500, 7) == stream  # seeded: every mode gets the same stream


def test_an_event_travels_with_its_send_time() -> None:
    sent = decode(encode(Event(4, "customer-001", 2), 1700000000.25))
    assert sent.event == Event(4, "customer-001", 2)
    assert sent.sent_at == 1700000000.25
