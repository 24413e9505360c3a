"""What a member joining costs the group: the rebalance pause, per assignor.

The course: "Automatic rebalancing when consumers join/leave".

How it is measured: a steady producer writes about R records a second into a 6-partition topic;
one member reads it; then a second member joins. On the first member, the pause is the time from
its on_partitions_revoked to its on_partitions_assigned, the time it owns nothing; the group's
gap is the longest time around the join in which no member received a record. Each assignor of
aiokafka 0.14 (aiokafka/coordinator/assignors/: range, roundrobin, sticky), a few joins each.

All three are EAGER: at every rebalance every member revokes everything before the group agrees
on the next assignment, so the first member gives up all 6 partitions even though only 3 move.
aiokafka has no cooperative-sticky assignor and no COOPERATIVE protocol (KIP-429, where only the
partitions that move are revoked): the assignor decides who gets what, not how long all wait.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor

from app.lab.deadline import until
from app.lab.groups.member import LabMember
from app.lab.groups.rules import longest_gap, median_and_max, pause_after
from app.lab.groups.traffic import steady_stream
from app.lab.report import Table
from app.lab.workspace import LabWorkspace
from app.settings import KafkaSettings, Settings

ASSIGNORS: tuple[type[AbstractPartitionAssignor], ...] = (
    RangePartitionAssignor,
    RoundRobinPartitionAssignor,
    StickyPartitionAssignor,
)
PARTITIONS = 6
ALL = frozenset(range(PARTITIONS))
WARM_S = 0.5  # the first member reads alone this long before the second joins
SETTLE_S = 0.5  # and both read this long after the rebalance, to see the stream resume
STEP_S = 30.0

CLAIM = "Automatic rebalancing when consumers join/leave"
COLUMNS = [
    "assignor",
    "joins",
    "pause median ms",
    "pause max ms",
    "group gap median ms",
    "group gap max ms",
    "join median ms",
    "revoked",
    "moved",
]


@dataclass(frozen=True)
class Join:
    pause_s: float  # the first member's revoke -> assign
    group_gap_s: float  # the longest time no member received a record, around the join
    join_s: float  # the second member's start -> its first assignment
    revoked: int  # partitions the first member gave up
    moved: int  # of those, partitions it did not get back


async def one_join(
    kafka: KafkaSettings, topic: str, group: str, assignor: type[AbstractPartitionAssignor]
) -> Join:
    first = LabMember(kafka, topic, group, "first", assignor=assignor, from_beginning=False)
    second = LabMember(kafka, topic, group, "second", assignor=assignor, from_beginning=False)
    try:
        await first.start()
        await until(
            kafka,
            "the first member to own every partition and read",
            STEP_S,
            lambda: first.partitions == ALL and bool(first.log.arrivals),
            [first],
        )
        await asyncio.sleep(WARM_S)
        joined_at = time.monotonic()
        await second.start()
        await until(
            kafka,
            f"the rebalance for a second member ({assignor.name})",
            STEP_S,
            lambda: (
                any(e.at > joined_at for e in first.log.assigned)
                and bool(first.partitions and second.partitions)
            ),
            [first, second],
        )
        await asyncio.sleep(SETTLE_S)
        ended_at = time.monotonic()
    finally:
        await asyncio.gather(second.stop(), first.stop())

    revocation = next(e for e in first.log.revoked if e.at >= joined_at)
    reassignment = next(e for e in first.log.assigned if e.at >= revocation.at)
    pause = pause_after(first.log.revoked, first.log.assigned, joined_at)
    assert pause is not None  # the wait above saw the reassignment
    return Join(
        pause_s=pause,
        group_gap_s=longest_gap(first.log.arrivals + second.log.arrivals, joined_at, ended_at),
        join_s=second.log.assigned[0].at - joined_at,
        revoked=len(revocation.partitions),
        moved=len(revocation.partitions - reassignment.partitions),
    )


async def run(
    settings: Settings, workspace: LabWorkspace, per_second: float, repeats: int
) -> Table:
    kafka = settings.kafka
    topic = await workspace.create_topic("rebalance", PARTITIONS)
    rows: list[dict[str, str | int | float | bool | None]] = []
    async with steady_stream(kafka, topic, PARTITIONS, per_second):
        for assignor in ASSIGNORS:
            joins = [
                await one_join(
                    kafka, topic, workspace.group(f"pause-{assignor.name}-{n}"), assignor
                )
                for n in range(repeats)
            ]
            pause_median, pause_max = median_and_max([j.pause_s * 1000 for j in joins])
            gap_median, gap_max = median_and_max([j.group_gap_s * 1000 for j in joins])
            join_median, _ = median_and_max([j.join_s * 1000 for j in joins])
            rows.append(
                {
                    "assignor": assignor.name,
                    "joins": len(joins),
                    "pause median ms": pause_median,
                    "pause max ms": pause_max,
                    "group gap median ms": gap_median,
                    "group gap max ms": gap_max,
                    "join median ms": join_median,
                    "revoked": max(j.revoked for j in joins),
                    "moved": max(j.moved for j in joins),
                }
            )
    return Table(
        title="orders lab groups: rebalance pause when a second member joins "
        f"(~{per_second:g} records/s)",
        claim=CLAIM,
        columns=COLUMNS,
        rows=rows,
        notes=[
            "pause: on the first member, on_partitions_revoked -> on_partitions_assigned, the time "
            "it owns no partition; group gap: the longest time around the join in which no member "
            "received a record (the pause, plus the fetches that restart reading).",
            "join: from the second member's start to its first assignment; the coordinator "
            "finishes the join only when every member has rejoined, and the first member learns "
            "of the rebalance from its next heartbeat (every 1 s here), so a join costs the "
            "newcomer up to a heartbeat interval more than it costs the others.",
            "revoked vs moved: aiokafka's assignors are all eager, so the first member revoked all "
            "6 partitions each time although only 3 changed owner; aiokafka 0.14 has no "
            "cooperative-sticky assignor (no KIP-429): sticky keeps owners stable, not reading.",
            "The pause stays short here because both members rejoin at once; it lasts until the "
            "slowest member rejoins (at most the rebalance timeout: a member busy in a long batch "
            "holds everyone).",
        ],
    )
