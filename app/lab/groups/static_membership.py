"""Static membership: a member restarted inside the session timeout, with and without an id.

The course: "Automatic rebalancing when consumers join/leave". A restart is a leave and a join,
unless the group can tell that the member coming back is the same one: `group.instance.id`
(KIP-345, `group_instance_id` in aiokafka) makes it a static member, whose place the coordinator
holds until its session times out.

How it is checked: a group of two members, member 1 in this process, member 2 a child process
(`python -m app.lab.groups.member`). Member 2 is restarted well inside the session timeout, two
ways: killed -9, as a crash kills it, or stopped (SIGTERM: its consumer closes), then started
again with the same arguments. Member 1, reading a steady stream, counts the rebalances it goes
through (each one revokes all it owns: aiokafka is eager) and its longest stretch without a
record, until the old member 2's session would have expired: a static member not recognised
would be expelled then, and the rebalance would show.

aiokafka's close sends LeaveGroup only for a dynamic member (GroupCoordinator._maybe_leave_group:
"do not send this leave request if we are running in static partition assignment mode"), as
Java's client does; so a graceful stop of a static member holds its place too. The kill -9 rows
are the honest restart: nothing at all reaches the broker from the old process.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Literal

from app.lab.deadline import until, within
from app.lab.groups.child import lab_child
from app.lab.groups.member import LabMember
from app.lab.groups.rules import longest_gap, rebalances_between
from app.lab.groups.traffic import steady_stream
from app.lab.report import Table
from app.lab.workspace import LabWorkspace
from app.operations.group_delete import GroupDeleteRefusedError, delete_kafka_group
from app.operations.kafka_clients import admin_client
from app.settings import Settings

Membership = Literal["dynamic", "static"]
RestartHow = Literal["kill -9", "stop"]
SCENARIOS: tuple[tuple[Membership, RestartHow], ...] = (
    ("dynamic", "kill -9"),
    ("static", "kill -9"),
    ("dynamic", "stop"),
    ("static", "stop"),
)
PARTITIONS = 6
ALL = frozenset(range(PARTITIONS))
HEARTBEAT_MS = 1_000
AFTER_SESSION_S = 2.0  # watched past the old member's session expiry, to see it expelled or not
STEP_S = 30.0

CLAIM = "Automatic rebalancing when consumers join/leave"
COLUMNS = [
    "membership",
    "restart",
    "rebalances seen by member 1",
    "partitions revoked",
    "partitions moved",
    "member 1 gap ms",
    "member 2 back ms",
]


async def restart_member_2(
    settings: Settings,
    workspace: LabWorkspace,
    topic: str,
    how: tuple[Membership, RestartHow],
    session_s: float,
    log_dir: Path,
) -> dict[str, str | int | float | bool | None]:
    membership, restart = how
    kafka = settings.kafka
    group = workspace.group(f"restart-{membership}-{restart.replace(' ', '')}")
    static = membership == "static"
    session_ms = int(session_s * 1000)
    first = LabMember(
        kafka,
        topic,
        group,
        "member-1",
        instance_id=f"{group}-1" if static else None,
        session_timeout_ms=session_ms,
        heartbeat_interval_ms=HEARTBEAT_MS,
        from_beginning=False,
    )
    member_2 = ["--topic", topic, "--group", group, "--name", "member-2"]
    member_2 += [
        "--session-timeout-ms",
        str(session_ms),
        "--heartbeat-interval-ms",
        str(HEARTBEAT_MS),
    ]
    member_2 += ["--instance-id", f"{group}-2"] if static else []
    name = f"member-2-{membership}-{restart.replace(' ', '')}"
    try:
        await first.start()
        await until(
            kafka,
            "member 1 alone to own every partition",
            STEP_S,
            lambda: first.partitions == ALL,
            [first],
        )
        async with lab_child(settings, "app.lab.groups.member", member_2, log_dir, name) as second:
            await second.line("assigned partitions=", timeout=STEP_S)
            await until(
                kafka,
                "the group of two to settle",
                STEP_S,
                lambda: len(first.partitions) == 3,
                [first],
            )
            await asyncio.sleep(0.5)
            owned, restarted_at = first.partitions, time.monotonic()
            if restart == "kill -9":
                second.kill()
                await second.wait()
            else:
                await second.stop()
        async with lab_child(settings, "app.lab.groups.member", member_2, log_dir, name) as again:
            await again.line("assigned partitions=", timeout=2 * session_s + STEP_S)
            back_at = time.monotonic()
            watch_until = restarted_at + session_s + AFTER_SESSION_S
            await until(
                kafka,
                "member 1 to own partitions again after the old member 2's session",
                2 * session_s + STEP_S,
                lambda: time.monotonic() > watch_until and bool(first.partitions),
                [first],
            )
            ended_at, kept = time.monotonic(), first.partitions
            await again.stop()
    finally:
        await first.stop()
    if static:
        await _delete_when_empty(settings, group, session_s)

    rebalances = rebalances_between(first.log.revoked, restarted_at, ended_at)
    return {
        "membership": membership,
        "restart": restart,
        "rebalances seen by member 1": len(rebalances),
        "partitions revoked": sum(len(event.partitions) for event in rebalances),
        "partitions moved": len(owned - kept),
        "member 1 gap ms": longest_gap(first.log.arrivals, restarted_at, ended_at) * 1000,
        "member 2 back ms": (back_at - restarted_at) * 1000,
    }


async def _delete_when_empty(settings: Settings, group: str, session_s: float) -> None:
    """Delete a static group once Kafka has expired its members. They sent no LeaveGroup when
    they closed (that is the point of static membership), so the group keeps them, and refuses
    DeleteGroups (NON_EMPTY), until their sessions time out; the workspace's clean-up, which
    does not wait, would leave the group behind."""
    kafka = settings.kafka
    async with (
        admin_client(kafka) as admin,
        within(kafka, f"deleting {group} once its static members expire", session_s + STEP_S),
    ):
        while True:
            try:
                await delete_kafka_group(admin, group)
            except GroupDeleteRefusedError:
                await asyncio.sleep(HEARTBEAT_MS / 1000)
            else:
                return


async def run(
    settings: Settings, workspace: LabWorkspace, per_second: float, session_s: float
) -> Table:
    topic = await workspace.create_topic("restarts", PARTITIONS)
    # The four restarts run side by side, each in its own group: each waits out a session
    # timeout, and the lab's budget does not allow four in a row.
    with tempfile.TemporaryDirectory(prefix="orders-lab-groups-") as logs:
        async with (
            steady_stream(settings.kafka, topic, PARTITIONS, per_second),
            asyncio.TaskGroup() as scenarios,
        ):
            tasks = [
                scenarios.create_task(
                    restart_member_2(settings, workspace, topic, how, session_s, Path(logs))
                )
                for how in SCENARIOS
            ]
    rows = [task.result() for task in tasks]
    return Table(
        title=f"orders lab groups: member 2 restarted inside the session timeout ({session_s:g} s)",
        claim=CLAIM,
        columns=COLUMNS,
        rows=rows,
        notes=[
            "dynamic, kill -9: the new process joins as a new member; the coordinator starts a "
            "rebalance and waits for the old member, dead, to rejoin, until its session expires: "
            "member 1 owns nothing for most of the session timeout.",
            "static, kill -9: the new process joins with the old one's group.instance.id; the "
            "coordinator hands it the old member's partitions without a rebalance, and the old "
            "session is not expired later: member 1 notices nothing.",
            "dynamic, stop: aiokafka's close sends LeaveGroup (a rebalance), and the new process's "
            "join is another (one only, if it arrives while the first is still gathering the "
            "members): short stops instead of one long one.",
            "static, stop: aiokafka's close sends no LeaveGroup for a static member (like Java's "
            "client), so a graceful restart holds the member's place too.",
            "member 2 back: from the kill or stop to the new process's first assignment "
            "(its start-up included).",
        ],
    )
