"""`make bench-e2e`'s check, pure: every accepted order stored once, each customer in order.

Accepted: what the 202s said (order id, partition, offset), as the load generator recorded them.
Stored: the orders table's rows. A customer's orders are on one partition (keyed by customer),
so acceptance order is offset order; the worker numbers a customer's orders (`sequence`) in
the order it stores them. The check holds when every accepted order has exactly one row, from
the very record the 202 named, and each customer's accepted orders, sorted by offset, carry
increasing sequences; and each customer's sequences run 1..n without a gap or a repeat.
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Accepted:
    order_id: str
    partition: int
    offset: int


@dataclass(frozen=True)
class Row:
    order_id: str
    customer_id: str
    sequence: int
    partition: int
    offset: int


@dataclass(frozen=True)
class CheckResult:
    accepted: int
    stored_of_accepted: int
    missing: int  # accepted, no row
    other_record: int  # a row, but from another record than the 202 named
    duplicate_answers: int  # one order id answered twice (it must never be)
    # Stored, with no 202 recorded: allowed. The requests in flight when wrk stops (up to one
    # per connection) are produced and stored, but their answers are never read.
    unaccepted_rows: int
    customers: int
    customers_out_of_order: int  # accepted orders' sequences not increasing with the offset
    customers_on_several_partitions: int
    customers_with_sequence_gaps: int  # sequences not exactly 1..n
    examples: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return (
            self.missing == 0
            and self.other_record == 0
            and self.duplicate_answers == 0
            and self.customers_out_of_order == 0
            and self.customers_on_several_partitions == 0
            and self.customers_with_sequence_gaps == 0
            and self.stored_of_accepted == self.accepted
        )

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "examples": list(self.examples), "passed": self.passed}


def parse_accepted(lines: Iterable[str]) -> list[Accepted]:
    """The 202 bodies, one JSON object a line (AcceptedOrder: order_id, partition, offset)."""
    found = []
    for line in lines:
        if line.strip():
            body = json.loads(line)
            found.append(Accepted(body["order_id"], int(body["partition"]), int(body["offset"])))
    return found


def check(accepted: list[Accepted], rows: list[Row], max_examples: int = 5) -> CheckResult:
    examples: list[str] = []

    def example(text: str) -> None:
        if len(examples) < max_examples:
            examples.append(text)

    answers: dict[str, Accepted] = {}
    duplicate_answers = 0
    for answer in accepted:
        if answer.order_id in answers:
            duplicate_answers += 1
            example(f"order {answer.order_id} answered 202 twice")
        answers[answer.order_id] = answer
    by_id = {row.order_id: row for row in rows}
    missing = other_record = 0
    per_customer: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    for answer in answers.values():
        row = by_id.get(answer.order_id)
        if row is None:
            missing += 1
            example(
                f"order {answer.order_id} accepted at {answer.partition}/{answer.offset}, "
                "not stored"
            )
            continue
        if (row.partition, row.offset) != (answer.partition, answer.offset):
            other_record += 1
            example(
                f"order {answer.order_id} accepted at {answer.partition}/{answer.offset}, "
                f"stored from {row.partition}/{row.offset}"
            )
        per_customer[row.customer_id].append((answer.partition, answer.offset, row.sequence))
    out_of_order = 0
    for customer, orders in per_customer.items():
        sequences = [sequence for _, _, sequence in sorted(orders)]
        if any(later <= earlier for earlier, later in itertools.pairwise(sequences)):
            out_of_order += 1
            example(f"customer {customer}: sequences {sequences[:10]}... in acceptance order")
    partitions: dict[str, set[int]] = defaultdict(set)
    sequences_of: dict[str, list[int]] = defaultdict(list)
    for row in rows:
        partitions[row.customer_id].add(row.partition)
        sequences_of[row.customer_id].append(row.sequence)
    several = sum(1 for found in partitions.values() if len(found) > 1)
    gaps = 0
    for customer, sequences in sequences_of.items():
        if sorted(sequences) != list(range(1, len(sequences) + 1)):
            gaps += 1
            example(f"customer {customer}: sequences are not 1..{len(sequences)}")
    return CheckResult(
        accepted=len(answers) + duplicate_answers,
        stored_of_accepted=len(answers) - missing,
        missing=missing,
        other_record=other_record,
        duplicate_answers=duplicate_answers,
        unaccepted_rows=len(by_id.keys() - answers.keys()),
        customers=len(sequences_of),
        customers_out_of_order=out_of_order,
        customers_on_several_partitions=several,
        customers_with_sequence_gaps=gaps,
        examples=tuple(examples),
    )
