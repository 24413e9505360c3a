"""The partitioning lab's pure parts: its partitioners, its stream, and what it measures."""

from __future__ import annotations

from collections import Counter

import pytest
from aiokafka.partitioner import DefaultPartitioner

from app.batching import partition_for
from app.lab.partitioning.experiment import STRATEGIES, PartitioningOutcome
from app.lab.partitioning.measures import (
    customers_on_many_partitions,
    ordering,
    records_per_partition,
    settled,
)
from app.lab.partitioning.partitioners import PriorityPartitioner, RoundRobinPartitioner
from app.lab.partitioning.stream import Placed, customer_ids, is_priority, order_stream
from app.lab.partitioning.table import partitioning_table

SIX = [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("records", [1, 5, 6, 7, 100, 601])
def test_round_robin_spreads_within_one_record(records: int) -> None:
    partitioner = RoundRobinPartitioner()
    counts = Counter(partitioner(None, SIX, SIX) for _ in range(records))
    per_partition = [counts[p] for p in SIX]
    assert max(per_partition) - min(per_partition) <= 1
    assert sum(per_partition) == records


def test_round_robin_cycles_in_partition_order_over_the_available_ones() -> None:
    partitioner = RoundRobinPartitioner()
    # aiokafka passes the partitions as it finds them (unordered); partition 2 has no leader.
    chosen = [partitioner(b"ignored", [3, 1, 0, 2], [3, 0, 1]) for _ in range(6)]
    assert chosen == [0, 1, 3, 0, 1, 3]


def test_round_robin_counts_per_partitioner_so_per_producer() -> None:
    first, second = RoundRobinPartitioner(), RoundRobinPartitioner()
    assert [first(None, SIX, SIX) for _ in range(3)] == [0, 1, 2]
    assert second(None, SIX, SIX) == 0


def test_priority_customers_get_the_dedicated_partition_and_nobody_else_does() -> None:
    partitioner = PriorityPartitioner()
    customers = customer_ids(200)
    placed = {c: partitioner(c.encode(), SIX, SIX) for c in customers}
    vips = [c for c in customers if is_priority(c)]
    assert vips
    assert all(placed[c] == 0 for c in vips)
    assert all(placed[c] != 0 for c in customers if not is_priority(c))
    # The others use all five remaining partitions (200 customers: murmur2 reaches each).
    assert {placed[c] for c in customers if not is_priority(c)} == {1, 2, 3, 4, 5}


def test_priority_spreads_the_others_by_murmur2_over_the_remaining_partitions() -> None:
    partitioner = PriorityPartitioner(prefix=b"gold-", dedicated=3)
    for key in (b"cust-01", b"cust-02", b"alice", b"order-customer-9"):
        expected = [0, 1, 2, 4, 5][partition_for(key, 5)]
        assert partitioner(key, SIX, SIX) == expected
        # Stable even while its partition has no leader: the customer must not move.
        assert partitioner(key, SIX, [p for p in SIX if p != expected]) == expected
    assert partitioner(b"gold-7", SIX, SIX) == 3


def test_priority_refuses_a_record_without_a_key() -> None:
    with pytest.raises(ValueError, match="key"):
        PriorityPartitioner()(None, SIX, SIX)


def test_keyed_murmur2_is_stable_and_is_the_java_clients_choice() -> None:
    default = DefaultPartitioner()
    for customer in customer_ids(50):
        key = customer.encode()
        partitions = {default(key, SIX, SIX) for _ in range(5)}
        assert partitions == {partition_for(key, 6)}


def test_the_stream_numbers_each_customers_orders_from_zero() -> None:
    customers = customer_ids(7)
    stream = order_stream(300, customers)
    assert stream == order_stream(300, customers)  # seeded: every strategy gets the same
    for customer in customers:
        assert [p.seq for p in stream if p.customer == customer] == list(
            range(sum(1 for p in stream if p.customer == customer))
        )
    assert Placed.decode(Placed("vip-00", 12).encode()) == Placed("vip-00", 12)


def test_one_customer_in_five_is_a_priority_customer() -> None:
    assert sum(map(is_priority, customer_ids(20))) == 4
    assert sum(map(is_priority, customer_ids(2))) == 1
    assert len(set(customer_ids(20))) == 20


def test_ordering_counts_each_record_after_a_later_one_of_its_customer() -> None:
    a, b = "cust-a", "cust-b"
    arrivals = [Placed(a, 0), Placed(a, 2), Placed(b, 0), Placed(a, 1), Placed(a, 3)]
    arrivals += [Placed(b, 2), Placed(b, 1), Placed(a, 1)]  # the last: delivered twice
    measured = ordering(arrivals)
    assert (measured.violations, measured.customers, measured.redelivered) == (2, 2, 1)
    assert ordering([Placed(a, 0), Placed(b, 0), Placed(a, 1)]).violations == 0


def test_records_per_partition_and_customers_on_many() -> None:
    assert records_per_partition([0, 0, 5, 2], 6) == [2, 0, 1, 0, 0, 1]
    landed = [(Placed("x", 0), 1), (Placed("x", 1), 1), (Placed("y", 0), 2), (Placed("y", 1), 3)]
    assert customers_on_many_partitions(landed) == 1


def test_a_group_is_settled_when_each_member_holds_some_and_all_are_held_once() -> None:
    assert settled([{0, 3}, {1, 4}, {2, 5}], 6)
    assert not settled([{0, 1, 2, 3, 4, 5}, set(), set()], 6)  # the first member alone
    assert not settled([{0, 1, 2}, {3, 4}, set()], 6)  # a member still joining
    assert not settled([{0, 1, 2}, {2, 3}, {4, 5}], 6)  # stale: a partition held twice


def test_the_table_reads_the_outcomes() -> None:
    stream = order_stream(12, ["vip-00", "cust-01"])
    round_robin = STRATEGIES[1]
    priority = STRATEGIES[3]
    assert (round_robin.name, priority.name) == ("round_robin", "priority")
    outcomes = [
        PartitioningOutcome(
            round_robin, [(p, i % 6) for i, p in enumerate(stream)], ordering(stream), []
        ),
        PartitioningOutcome(
            priority,
            [(p, 0 if is_priority(p.customer) else 4) for p in stream],
            ordering(list(reversed(stream))),
            [[0, 1, 2], [3, 4, 5]],
        ),
    ]
    table = partitioning_table(outcomes, members=2)
    rr, custom = table.row("strategy", "round_robin"), table.row("strategy", "priority")
    assert (rr["records"], rr["spread"], rr["customers_on_many_partitions"]) == (12, 0, 2)
    assert rr["ordering_violations"] == 0
    assert custom["vip_records_off_p0"] == 0
    assert custom["others_on_p0"] == 0
    assert custom["ordering_violations"] == 12 - 2  # all but each customer's last order
    assert [count for _, count in table.charts[0].bars] == [2] * 6
    assert len(table.notes) == 3
