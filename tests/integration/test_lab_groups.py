"""`orders lab groups`, short runs on the real broker: each table's shape, as the course says."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from app.lab.groups import rebalance_pause, sharing, static_membership
from app.lab.report import Cell
from app.lab.workspace import LabWorkspace, lab_workspace
from app.settings import KafkaSettings, Settings
from tests.integration.endpoints import Endpoints

RECORDS = 600
EVERY_PARTITION = set(range(6))


@pytest.fixture
def lab_settings(endpoints: Endpoints) -> Settings:
    return Settings(kafka=KafkaSettings(bootstrap_servers=endpoints.kafka_bootstrap))


@pytest.fixture
async def workspace(lab_settings: Settings) -> AsyncIterator[LabWorkspace]:
    async with lab_workspace(lab_settings) as workspace:
        yield workspace


def partitions(cell: Cell) -> set[int]:
    assert isinstance(cell, str)
    return set() if cell == "-" else {int(p) for p in cell.split(", ")}


def number(cell: Cell) -> float:
    assert isinstance(cell, int | float)
    return cell


async def test_each_group_reads_everything_and_members_share_the_partitions(
    lab_settings: Settings, workspace: LabWorkspace
) -> None:
    table = await sharing.run(lab_settings, workspace, RECORDS)
    rows = {row["member"]: row for row in table.rows}
    assert rows.keys() == {"a1", "a2", "a3", "b1"}
    assert all(table.column("group read all, once"))
    assert number(rows["a1"]["records"]) + number(rows["a2"]["records"]) == RECORDS
    assert rows["b1"]["records"] == RECORDS
    a1, a2 = partitions(rows["a1"]["partitions"]), partitions(rows["a2"]["partitions"])
    assert a1
    assert a2
    assert not a1 & a2
    assert a1 | a2 == EVERY_PARTITION
    assert partitions(rows["b1"]["partitions"]) == EVERY_PARTITION
    # The third member got a share; A's three shares are again disjoint and covering.
    after = [partitions(rows[m]["after a3 joined"]) for m in ("a1", "a2", "a3")]
    assert all(after)
    assert sum(map(len, after)) == len(EVERY_PARTITION)
    assert set().union(*after) == EVERY_PARTITION
    assert rows["a3"]["records"] == 0  # a1 and a2 committed on revocation: nothing read again


async def test_a_pause_is_measured_for_each_assignor(
    lab_settings: Settings, workspace: LabWorkspace
) -> None:
    table = await rebalance_pause.run(lab_settings, workspace, per_second=300, repeats=1)
    assert table.column("assignor") == ["range", "roundrobin", "sticky"]
    for row in table.rows:
        assert number(row["pause median ms"]) > 0
        assert number(row["group gap max ms"]) > 0
        assert row["revoked"] == 6  # eager: the first member gave up everything...
        assert row["moved"] == 3  # ...though only half its partitions changed owner


async def test_static_membership_avoids_the_rebalance_a_plain_restart_causes(
    lab_settings: Settings, workspace: LabWorkspace
) -> None:
    # The restarted static member must be back within the session timeout: a new Python
    # process and its join take ~1 s here, several under a loaded CI machine; 12 s leaves room.
    table = await static_membership.run(lab_settings, workspace, 300, session_s=12.0)

    def row(membership: str, restart: str) -> dict[str, Cell]:
        [found] = [
            r for r in table.rows if r["membership"] == membership and r["restart"] == restart
        ]
        return found

    rebalances = "rebalances seen by member 1"
    assert row("static", "kill -9")[rebalances] == 0
    assert row("static", "kill -9")["partitions revoked"] == 0
    assert row("static", "stop")[rebalances] == 0
    assert number(row("dynamic", "kill -9")[rebalances]) >= 1
    # LeaveGroup, then the new member's join (one rebalance, if the join came while the leave's
    # was still gathering the members).
    assert number(row("dynamic", "stop")[rebalances]) >= 1
    # The dead dynamic member held the group until its session expired: a long stop for member 1.
    assert number(row("dynamic", "kill -9")["member 1 gap ms"]) > 1000
