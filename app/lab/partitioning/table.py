"""The partitioning lab's result as a Table: raw numbers per strategy, a bar chart each, and
notes that read the numbers. Pure: no I/O."""

from __future__ import annotations

import math

from app.lab.partitioning.experiment import PARTITIONS, PartitioningOutcome
from app.lab.partitioning.measures import customers_on_many_partitions
from app.lab.partitioning.partitioners import DEDICATED_PARTITION
from app.lab.partitioning.stream import is_priority
from app.lab.report import BarChart, Cell, Table

CLAIM = (
    "1. Round-robin: No key specified, messages distributed evenly "
    "2. Key-based: Same key always goes to same partition "
    "3. Custom partitioner: Custom logic for partition assignment"
)
P0 = f"p{DEDICATED_PARTITION}"
# What the text shows; every row also holds the priority partitioner's checks (JSON, tests).
COLUMNS = [
    "strategy",
    "records",
    "per_partition_min",
    "per_partition_max",
    "spread",
    "customers_on_many_partitions",
    "ordering_violations",
    "customers_out_of_order",
]


def partitioning_table(outcomes: list[PartitioningOutcome], members: int) -> Table:
    return Table(
        title="orders lab partitioning: where records land, and the order a group sees",
        claim=CLAIM,
        columns=COLUMNS,
        rows=[_row(outcome) for outcome in outcomes],
        notes=[_note(outcome) for outcome in outcomes] + _ordering_notes(outcomes, members),
        charts=[
            BarChart(
                f"{outcome.strategy.name}: records per partition",
                [(f"p{p}", count) for p, count in enumerate(outcome.per_partition)],
            )
            for outcome in outcomes
        ],
    )


def _row(outcome: PartitioningOutcome) -> dict[str, Cell]:
    counts = outcome.per_partition
    return {
        "strategy": outcome.strategy.name,
        "records": len(outcome.landed),
        "per_partition_min": min(counts),
        "per_partition_max": max(counts),
        "spread": max(counts) - min(counts),
        "customers_on_many_partitions": customers_on_many_partitions(outcome.landed),
        "ordering_violations": outcome.ordering.violations,
        "customers_out_of_order": outcome.ordering.customers,
        "redelivered": outcome.ordering.redelivered,
        f"vip_records_off_{P0}": outcome.vip_off_dedicated,
        f"others_on_{P0}": outcome.others_on_dedicated,
        "off_murmur2": outcome.off_murmur2,
    }


def _note(outcome: PartitioningOutcome) -> str:
    row = _row(outcome)
    records, spread = len(outcome.landed), row["spread"]
    customers = {placed.customer for placed, _ in outcome.landed}
    scattered = f"{row['customers_on_many_partitions']} of {len(customers)} customers"
    match outcome.strategy.name:
        case "keyless_aiokafka":
            # Each count is binomial(records, 1/P): its standard deviation is chance's share.
            sd = math.sqrt(records * (1 / PARTITIONS) * (1 - 1 / PARTITIONS))
            return (
                "keyless_aiokafka: aiokafka 0.14 sends each keyless record to random.choice("
                "available partitions): not round-robin, not Java's sticky batches; "
                f"spread {spread}, where chance alone moves each count by ~{sd:.0f}."
            )
        case "round_robin":
            return (
                "round_robin: the lab's partitioner gives each record the next partition (a "
                f"counter per producer): spread {spread}, yet {scattered} span several."
            )
        case "keyed_murmur2":
            return (
                "keyed_murmur2: key = customer id, Kafka's murmur2 "
                f"({row['off_murmur2']} records off the Java client's partition_for): "
                f"{scattered} span several; {len(customers)} keys over {PARTITIONS} "
                f"partitions spread {spread}."
            )
        case _:
            vips = sum(1 for placed, _ in outcome.landed if is_priority(placed.customer))
            return (
                f"priority: vip- customers to {P0}, the others murmur2 over the other "
                f"{PARTITIONS - 1}: {row[f'vip_records_off_{P0}']} of {vips} vip records off "
                f"{P0}, {row[f'others_on_{P0}']} other records on it."
            )


def _ordering_notes(outcomes: list[PartitioningOutcome], members: int) -> list[str]:
    held = " ".join("+".join(f"p{p}" for p in member) for member in outcomes[0].held)
    notes = [
        f"ordering_violations: records that a group of {members} members (holding {held}) "
        "processed after a later order of the same customer; only a partition keeps order."
    ]
    for outcome in outcomes:
        if outcome.ordering.redelivered:
            notes.append(
                f"{outcome.strategy.name}: {outcome.ordering.redelivered} records were processed "
                "twice (a rebalance during the run, no commits); judged at their first arrival."
            )
    return notes
