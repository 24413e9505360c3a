"""Exercise 2 as written: two consumer groups read one topic; the members of a group share it.

The course: "Consumers in same group share partition assignment; Each partition consumed by only
one consumer in group; Automatic rebalancing when consumers join/leave", and Exercise 2, "Observe
how: Each group receives all messages independently; Consumers within a group share the load;
Rebalancing occurs when consumers join/leave".

How it is checked: a topic of 6 partitions; group A with two members and group B with one
subscribe from the beginning (the exercise's three terminals). Once both groups have settled, N
records are written. Each group must read every record exactly once in total, and A's members
must own disjoint partitions that together cover all 6. Then a third member joins group A, and
the table shows each member's partitions before and after.
"""

from __future__ import annotations

import asyncio

from app.lab.deadline import until
from app.lab.groups.member import LabMember
from app.lab.groups.rules import listed, read_each_once, shares_cleanly
from app.lab.groups.traffic import fill
from app.lab.report import Table
from app.lab.workspace import LabWorkspace
from app.settings import Settings

PARTITIONS = 6
ALL = frozenset(range(PARTITIONS))
SETTLE_S = 30.0

CLAIM = (
    "Consumers in same group share partition assignment; Each partition consumed by only one "
    "consumer in group. Observe how: Each group receives all messages independently; Consumers "
    "within a group share the load; Rebalancing occurs when consumers join/leave"
)
COLUMNS = ["group", "member", "partitions", "records", "group read all, once", "after a3 joined"]


async def run(settings: Settings, workspace: LabWorkspace, records: int) -> Table:
    kafka = settings.kafka
    topic = await workspace.create_topic("exercise2", PARTITIONS)
    group_a, group_b = workspace.group("consumer-group-a"), workspace.group("consumer-group-b")
    a1, a2 = LabMember(kafka, topic, group_a, "a1"), LabMember(kafka, topic, group_a, "a2")
    b1 = LabMember(kafka, topic, group_b, "b1")
    a3 = LabMember(kafka, topic, group_a, "a3")
    members = [a1, a2, b1]
    try:
        for member in members:
            await member.start()
        await until(
            kafka,
            "group A (2 members) and group B (1 member) to settle",
            SETTLE_S,
            lambda: (
                shares_cleanly([a1.partitions, a2.partitions], PARTITIONS)
                and bool(a1.partitions and a2.partitions)
                and b1.partitions == ALL
            ),
            members,
        )
        await fill(kafka, topic, records, PARTITIONS)
        await until(
            kafka,
            f"both groups to read the {records} records",
            SETTLE_S + records / 200,
            lambda: len(a1.log.read) + len(a2.log.read) >= records and len(b1.log.read) >= records,
            members,
        )
        await asyncio.sleep(0.5)  # a record read twice would have arrived by now
        before = {member.log.name: member.partitions for member in members}
        read = {member.log.name: len(member.log.read) for member in members}

        members.append(a3)
        await a3.start()
        await until(
            kafka,
            "group A to rebalance for its third member",
            SETTLE_S,
            lambda: (
                shares_cleanly([a1.partitions, a2.partitions, a3.partitions], PARTITIONS)
                and all(m.partitions for m in (a1, a2, a3))
            ),
            members,
        )
        after = {member.log.name: member.partitions for member in members}
    finally:
        await asyncio.gather(*(member.stop() for member in members))

    a_once = read_each_once(a1.log.read + a2.log.read, records)
    b_once = read_each_once(b1.log.read, records)
    rows: list[dict[str, str | int | float | bool | None]] = [
        {
            "group": group,
            "member": member.log.name,
            "partitions": listed(before.get(member.log.name, frozenset())),
            "records": read.get(member.log.name, len(member.log.read)),
            "group read all, once": once,
            "after a3 joined": listed(after[member.log.name]),
        }
        for group, member, once in (("A", a1, a_once), ("A", a2, a_once), ("B", b1, b_once))
    ]
    rows.append(
        {
            "group": "A",
            "member": "a3",
            "partitions": listed(()),
            "records": len(a3.log.read),
            "group read all, once": a_once,
            "after a3 joined": listed(after["a3"]),
        }
    )
    a_shared = shares_cleanly([before["a1"], before["a2"]], PARTITIONS)
    return Table(
        title=f"orders lab groups: Exercise 2, two groups on one topic ({records} records)",
        claim=CLAIM,
        columns=COLUMNS,
        rows=rows,
        notes=[
            "Each group receives all messages independently: group A read "
            f"{read['a1'] + read['a2']} records, group B {read['b1']}, of {records} written; "
            "each record once per group: "
            f"A {'yes' if a_once else 'NO'}, B {'yes' if b_once else 'NO'}.",
            "Consumers within a group share the load: a1 and a2 own "
            + ("disjoint partitions covering all 6" if a_shared else "OVERLAPPING or too few")
            + f" ({listed(before['a1'])} | {listed(before['a2'])}); each reads only its own.",
            "Rebalancing occurs when consumers join: a3's arrival made the coordinator deal the 6 "
            f"partitions again ({listed(after['a1'])} | {listed(after['a2'])} | "
            f"{listed(after['a3'])}); a1 and a2 committed their positions when they gave up their "
            "partitions, so a3 started where they stopped: it read "
            f"{len(a3.log.read)} of the old records.",
        ],
    )
