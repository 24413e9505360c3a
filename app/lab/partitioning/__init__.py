"""`orders lab partitioning`: the course's partitioning strategies, measured on the broker.

The course (kafka-data-flow-course.md, "Partitioning Strategies" and "Message Ordering"):

    1. **Round-robin**: No key specified, messages distributed evenly
    2. **Key-based**: Same key always goes to same partition
    3. **Custom partitioner**: Custom logic for partition assignment

    - Messages within a partition are ordered
    - Cross-partition ordering not guaranteed
    - Use keys to ensure related messages go to same partition

How the lab checks it: one stream of orders from a few customers, each numbered within its
customer, is produced through four partitioners onto a 6-partition topic each: aiokafka's
keyless default (random, not round-robin: `partitioners.py` quotes its code), a true
round-robin, the customer id as key (murmur2), and a priority partitioner (vip- customers on a
partition of their own). For each: the records per partition (the broker's acknowledgements)
and, from a consumer group of three members processing concurrently, how many records came
after a later order of the same customer.
"""

from __future__ import annotations

import argparse

from app.lab.partitioning.experiment import run_all
from app.lab.partitioning.table import partitioning_table
from app.lab.report import Table
from app.lab.workspace import LabWorkspace
from app.settings import Settings

__all__ = ["add_arguments", "run_from_args"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--records", type=_at_least(6), default=600, help="orders per strategy (default 600)"
    )
    parser.add_argument(
        "--customers", type=_at_least(2), default=20, help="customers placing them (default 20)"
    )
    parser.add_argument(
        "--members", type=int, choices=(2, 3), default=3, help="consumers in the group (2-3)"
    )


async def run_from_args(
    settings: Settings, workspace: LabWorkspace, args: argparse.Namespace
) -> list[Table]:
    outcomes = await run_all(settings.kafka, workspace, args.records, args.customers, args.members)
    return [partitioning_table(outcomes, args.members)]


def _at_least(low: int) -> type[int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            msg = f"must be at least {low}"
            raise argparse.ArgumentTypeError(msg)
        return value

    return parse  # type: ignore[return-value]
