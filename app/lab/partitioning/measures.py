"""What the lab measures from where records landed and the order a group processed them in.
Pure: no I/O."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from app.lab.partitioning.stream import Placed


def records_per_partition(partitions: Iterable[int], partition_count: int) -> list[int]:
    """How many records each partition 0..partition_count-1 received."""
    counts = Counter(partitions)
    return [counts[p] for p in range(partition_count)]


def customers_on_many_partitions(landed: Iterable[tuple[Placed, int]]) -> int:
    """How many customers have records on more than one partition (their order may break)."""
    partitions: defaultdict[str, set[int]] = defaultdict(set)
    for placed, partition in landed:
        partitions[placed.customer].add(partition)
    return sum(1 for seen in partitions.values() if len(seen) > 1)


@dataclass(frozen=True)
class Ordering:
    violations: int  # records processed after a higher seq of the same customer
    customers: int  # customers with at least one such record
    redelivered: int  # records processed more than once (counted once above)


def ordering(arrivals: Sequence[Placed]) -> Ordering:
    """Count, in processing order, each record that comes after a later one of its customer."""
    highest: dict[str, int] = {}
    seen: set[Placed] = set()
    late: Counter[str] = Counter()
    redelivered = 0
    for placed in arrivals:
        if placed in seen:
            # Delivered again (a rebalance before a commit): judged at its first arrival only.
            redelivered += 1
            continue
        seen.add(placed)
        if highest.get(placed.customer, -1) > placed.seq:
            late[placed.customer] += 1
        else:
            highest[placed.customer] = placed.seq
    return Ordering(sum(late.values()), len(late), redelivered)


def settled(assignments: Sequence[set[int]], partition_count: int) -> bool:
    """Whether every member holds partitions and together they hold each partition once: the
    group's rebalance is over (an eager rebalance first takes every member's partitions)."""
    every = [p for held in assignments for p in held]
    return all(assignments) and sorted(every) == list(range(partition_count))
