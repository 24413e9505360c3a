"""What a replayed record carries: its own headers, its first append time, where it came from."""

from __future__ import annotations

from app import dlq_headers as dlq
from app.operations.provenance import (
    dead_letter_first_append,
    first_append,
    replay_headers,
    split_dead_letter,
)

LOG_APPEND_TIME = 1


def provenance(timestamp: int, offset: int = 7) -> list[tuple[str, bytes | None]]:
    """What the worker appends to a dead letter (app.worker.dlq_publisher)."""
    return [
        (dlq.H_TOPIC, b"orders"),
        (dlq.H_PARTITION, b"3"),
        (dlq.H_OFFSET, str(offset).encode()),
        (dlq.H_TIMESTAMP, str(timestamp).encode()),
        (dlq.H_TIMESTAMP_TYPE, str(LOG_APPEND_TIME).encode()),
        (dlq.H_ERROR_CLASS, b"PoisonRecordError"),
        (dlq.H_ERROR_MESSAGE, b"not JSON"),
        (dlq.H_WORKER, b"w-1"),
        (dlq.H_FAILED_AT, b"2026-01-01T00:00:00+00:00"),
    ]


def test_a_first_dead_letter_is_judged_by_its_own_append_time() -> None:
    headers = [("request-id", b"r-1"), ("trace", b"\xff\x00"), *provenance(1000)]
    original, _ = split_dead_letter(headers)
    assert original == [("request-id", b"r-1"), ("trace", b"\xff\x00")]  # bytes kept as they are
    assert dead_letter_first_append(headers) == (1000, LOG_APPEND_TIME)


def test_a_replay_that_failed_again_keeps_its_first_append_time_through_a_second_replay() -> None:
    first = replay_headers([("request-id", b"r-1")], (1000, LOG_APPEND_TIME), "0")
    dead_again = [*first, *provenance(9000, offset=20)]  # appended at 9000 on its second journey
    assert dead_letter_first_append(dead_again) == (1000, LOG_APPEND_TIME)

    original, _ = split_dead_letter(dead_again)
    second = replay_headers(original, (1000, LOG_APPEND_TIME), "1")
    assert second == [
        ("request-id", b"r-1"),
        (dlq.H_TIMESTAMP, b"1000"),
        (dlq.H_TIMESTAMP_TYPE, b"1"),
        (dlq.H_REPLAYED_FROM, b"1"),
    ]


def test_a_quarantined_record_is_judged_by_its_timestamp_unless_it_was_a_replay() -> None:
    assert first_append([("request-id", b"r-1")], 5000, LOG_APPEND_TIME) == (5000, 1)
    replayed = replay_headers([], (1000, LOG_APPEND_TIME), "quarantined_records:4")
    assert first_append(replayed, 5000, LOG_APPEND_TIME) == (1000, 1)
    # A stray timestamp header on a record that is no replay is ignored, as the worker does.
    assert first_append([(dlq.H_TIMESTAMP, b"1")], 5000, LOG_APPEND_TIME) == (5000, 1)


def test_a_dead_letter_without_a_timestamp_has_no_known_first_append() -> None:
    assert dead_letter_first_append([("request-id", b"r-1")]) is None
