"""The worker's pure rules, without services: spans and gaps, the replay rule, and what a failure
means (retry, or isolate a record)."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
)
from aiokafka.structs import ConsumerRecord, TopicPartition
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from app import dlq_headers
from app.db.positions import PartitionSpan
from app.errors import BrokerUnavailableError, PoisonRecordError
from app.worker import records
from app.worker.failures import Verdict, classify, describe
from app.worker.records import OffsetGap

TOPIC = "orders"


def record(
    offset: int,
    value: bytes = b"{}",
    *,
    partition: int = 0,
    timestamp: int = 1_000,
    timestamp_type: int = 1,
    headers: list[tuple[str, bytes]] | None = None,
) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic=TOPIC,
        partition=partition,
        offset=offset,
        timestamp=timestamp,
        timestamp_type=timestamp_type,
        key=b"c-1",
        value=value,
        checksum=None,
        serialized_key_size=3,
        serialized_value_size=len(value),
        headers=tuple(headers or ()),
    )


def envelope(accept_by_ms: int, **overrides: object) -> bytes:
    accept_by = datetime.fromtimestamp(accept_by_ms / 1000, UTC)
    body = {
        "schema_version": 1,
        "order_id": str(uuid.uuid4()),
        "customer_id": "c-1",
        "items": [{"sku": "p", "quantity": 2, "unit_price": "1.50"}],
        "total": "3.00",
        "currency": "EUR",
        "accepted_at": (accept_by - timedelta(seconds=5)).isoformat(),
        "accept_by": accept_by.isoformat(),
        **overrides,
    }
    return json.dumps(body).encode()


# --- spans and gaps -------------------------------------------------------------------------


def test_a_span_without_known_positions_is_the_records_own_offsets() -> None:
    assert records.span_of([record(5), record(6)], None, None) == PartitionSpan(0, 5, 7)


def test_a_span_starts_at_the_fetch_position_when_kafka_passed_offsets_before_the_first() -> None:
    # Fetched from 3; 3 and 4 were a marker and an aborted record: the batch covers 3..7.
    assert records.span_of([record(5), record(6)], 3, 8) == PartitionSpan(0, 3, 8)


def test_positions_that_contradict_the_records_are_not_trusted() -> None:
    assert records.span_of([record(5), record(6)], 6, 6) == PartitionSpan(0, 5, 7)


def test_gaps_are_every_offset_of_the_span_without_a_record() -> None:
    span = PartitionSpan(2, 10, 20)
    assert records.gaps_in(span, [12, 13, 17]) == [
        OffsetGap(2, 10, 12),
        OffsetGap(2, 14, 17),
        OffsetGap(2, 18, 20),
    ]
    assert records.gaps_in(PartitionSpan(2, 10, 13), [10, 11, 12]) == []


def test_a_fetch_that_passed_only_markers_is_a_span_of_gap_alone() -> None:
    tp = TopicPartition(TOPIC, 4)
    prepared = asyncio.run(records.prepare({tp: []}, {tp: (7, 9)}))
    assert prepared.spans == [PartitionSpan(4, 7, 9)]
    assert prepared.gaps == [OffsetGap(4, 7, 9)]
    assert prepared.orders == []


def test_prepare_sorts_orders_poison_and_late_records() -> None:
    tp = TopicPartition(TOPIC, 0)
    batch = {
        tp: [
            record(0, envelope(2_000), timestamp=1_000),  # in time
            record(1, b"not json"),  # poison
            record(2, envelope(2_000), timestamp=3_000),  # appended after its deadline
            record(
                4,
                envelope(
                    2_000, items=[{"sku": "a\u0000b", "quantity": 1, "unit_price": "1"}], total="1"
                ),
            ),
        ]
    }
    prepared = asyncio.run(records.prepare(batch, {tp: (0, 5)}))
    assert [o.offset for o in prepared.orders] == [0]
    assert [p.record.offset for p in prepared.poison] == [1, 4]
    assert all(isinstance(p.error, PoisonRecordError) for p in prepared.poison)
    assert [o.offset for o in prepared.expired] == [2]
    assert prepared.gaps == [OffsetGap(0, 3, 4)]
    assert prepared.orders[0].record is batch[tp][0]  # kept for the DLQ, should PostgreSQL refuse


@pytest.mark.parametrize(
    "accept_by", ["0001-01-01T00:00:00+14:00", "0001-01-01T00:00:00-14:00", "0001-01-01T00:00:00"]
)
def test_a_deadline_at_the_edge_of_time_is_never_an_order_and_never_a_crash(accept_by: str) -> None:
    tp = TopicPartition(TOPIC, 0)
    bad = envelope(2_000, accept_by=accept_by)
    prepared = asyncio.run(records.prepare({tp: [record(0, bad)]}, {}))
    assert prepared.orders == []
    assert len(prepared.poison) + len(prepared.expired) == 1


# --- the replay rule ---------------------------------------------------------------------------


def replayed(*journeys: tuple[int, int]) -> ConsumerRecord[bytes, bytes]:
    headers = [(dlq_headers.H_REPLAYED_FROM, b"7")]
    for timestamp, kind in journeys:
        headers += [
            (dlq_headers.H_TIMESTAMP, str(timestamp).encode()),
            (dlq_headers.H_TIMESTAMP_TYPE, str(kind).encode()),
        ]
    return record(0, timestamp=99_000, headers=headers)


def test_a_record_never_replayed_is_judged_by_its_own_append_time() -> None:
    assert records.append_time(record(0, timestamp=5_000)) == (5_000, 1)


def test_a_replayed_record_is_judged_by_its_first_journey() -> None:
    assert records.append_time(replayed((1_000, 1))) == (1_000, 1)


def test_a_record_replayed_twice_is_judged_by_the_earliest_journey_not_the_last() -> None:
    # Replayed, dead-lettered again (the replay's append time added), replayed again.
    assert records.append_time(replayed((1_000, 1), (50_000, 1))) == (1_000, 1)
    assert records.append_time(replayed((50_000, 1), (1_000, 1))) == (1_000, 1)


def test_unreadable_journey_headers_fall_back_to_the_records_own_time() -> None:
    broken = record(
        0,
        timestamp=4_000,
        headers=[(dlq_headers.H_REPLAYED_FROM, b"1"), (dlq_headers.H_TIMESTAMP, b"x")],
    )
    assert records.append_time(broken) == (4_000, 1)


# --- what a failure means ------------------------------------------------------------------------


def db_error(sqlstate: str, constraint: str | None = None, cls: type = DBAPIError) -> DBAPIError:
    class Cause(Exception):
        constraint_name = constraint

    class Orig(Exception):
        pass

    orig = Orig(f"boom {sqlstate}")
    orig.sqlstate = sqlstate  # type: ignore[attr-defined]
    orig.__cause__ = Cause()
    error: DBAPIError = cls("INSERT ...", {}, orig)
    return error


@pytest.mark.parametrize(
    "sqlstate",
    ["22P05", "22001", "22003", "22007", "23514", "23502", "23503"],
)
def test_postgresql_refusing_the_data_belongs_to_a_record(sqlstate: str) -> None:
    assert classify(db_error(sqlstate)) is Verdict.RECORD


@pytest.mark.parametrize(
    "sqlstate",
    [
        "08006",
        "08003",
        "53300",
        "53100",
        "57P01",
        "57014",
        "40001",
        "40P01",
        "55P03",
        "42P01",
        "42703",
        "XX000",
    ],
)
def test_server_state_and_our_own_bugs_are_retried_never_isolated(sqlstate: str) -> None:
    assert classify(db_error(sqlstate)) is Verdict.TRANSIENT


def test_two_writers_racing_for_a_customers_sequence_retry() -> None:
    race = db_error("23505", "uq_orders_customer_id", IntegrityError)
    assert classify(race) is Verdict.TRANSIENT
    assert classify(db_error("23505", "some_other_unique", IntegrityError)) is Verdict.RECORD


@pytest.mark.parametrize(
    "error",
    [
        OSError("connection reset"),
        TimeoutError(),
        ConnectionRefusedError(),
        PoolTimeoutError("QueuePool limit reached"),
        OperationalError("connect", {}, OSError("gone")),
        KafkaConnectionError(),
        KafkaTimeoutError(),
        NotLeaderForPartitionError(),
        BrokerUnavailableError("down"),
        RuntimeError("a bug we did not foresee"),
    ],
)
def test_everything_else_is_retried(error: BaseException) -> None:
    assert classify(error) is Verdict.TRANSIENT


def test_the_contract_refusing_a_record_and_a_topic_refusing_its_size_belong_to_a_record() -> None:
    assert classify(PoisonRecordError("bad")) is Verdict.RECORD
    assert classify(MessageSizeTooLargeError()) is Verdict.RECORD


def test_a_real_asyncpg_error_is_classified_by_its_sqlstate() -> None:
    cause = asyncpg.exceptions.UntranslatableCharacterError("unsupported Unicode escape sequence")
    assert cause.sqlstate == "22P05"

    class Orig(Exception):
        sqlstate = cause.sqlstate

    error = DBAPIError("INSERT", {}, Orig("unsupported Unicode escape sequence"))
    assert classify(error) is Verdict.RECORD
    assert describe(error).startswith("SQLSTATE 22P05: unsupported Unicode escape sequence")
