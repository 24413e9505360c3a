"""`orders lag` on one snapshot, without services: statuses, the table, the JSON, the exit code."""

from __future__ import annotations

import json

import pytest

from app.lag_status import Status
from app.operations.lag import PartitionLag
from app.operations.lag_report import (
    EXIT_STALLED,
    as_json,
    assess,
    exit_code,
    owner_idle,
    table_lines,
)

NOW = 10_000.0
BOUND = 30.0


def row(
    partition: int,
    *,
    log_end: int = 100,
    stored: int | None = 100,
    owner: str | None = "w-1",
    idle_s: float | None = 1.0,
    lag_began_at: float | None = None,
    committed: int | None = None,
) -> PartitionLag:
    return PartitionLag(
        partition,
        stored,
        stored if committed is None else committed,
        log_end,
        owner=owner,
        idle_s=idle_s,
        lag_began_at=lag_began_at,
    )


def statuses(*rows: PartitionLag) -> list[Status]:
    return [r.status for r in assess(rows, now=NOW, stall_after_s=BOUND)]


def test_caught_up_partitions_are_ok_however_long_they_were_quiet() -> None:
    assert statuses(row(0, idle_s=86_400.0), row(1, stored=None, log_end=0, owner=None)) == [
        Status.OK,
        Status.OK,
    ]


def test_lag_is_never_negative() -> None:
    assert row(0, log_end=100, stored=105).lag == 0
    assert row(0, log_end=100, stored=None).lag == 100


def test_a_position_still_since_its_lag_began_is_stalled_while_the_owner_works_elsewhere() -> None:
    stuck = row(0, stored=90, idle_s=600.0, lag_began_at=NOW - 60)
    busy_sibling = row(1, idle_s=0.5)
    assert statuses(stuck, busy_sibling) == [Status.STALLED, Status.OK]


def test_an_owner_idle_everywhere_is_stopped() -> None:
    stuck = row(0, stored=90, idle_s=600.0, lag_began_at=NOW - 60)
    idle_sibling = row(1, idle_s=45.0)
    other_member = row(2, owner="w-2", idle_s=0.1)
    assert statuses(stuck, idle_sibling, other_member) == [Status.STOPPED, Status.OK, Status.OK]


def test_a_quiet_partition_that_just_received_a_record_is_ok() -> None:
    assert statuses(row(0, stored=90, idle_s=3600.0, lag_began_at=NOW - 0.2)) == [Status.OK]


def test_an_unreadable_lag_start_counts_from_the_last_move() -> None:
    busy = row(1, idle_s=0.5)
    assert statuses(row(0, stored=90, idle_s=600.0), busy)[0] is Status.STALLED
    assert statuses(row(0, stored=90, idle_s=5.0), busy)[0] is Status.OK


def test_a_partition_nobody_ever_stored_is_stopped_once_its_records_waited_the_bound() -> None:
    never = {"stored": None, "owner": None, "idle_s": None}
    assert statuses(row(0, **never, lag_began_at=NOW - 31)) == [Status.STOPPED]  # type: ignore[arg-type]
    assert statuses(row(0, **never, lag_began_at=NOW - 5)) == [Status.OK]  # type: ignore[arg-type]
    assert statuses(row(0, **never, lag_began_at=None)) == [Status.OK]  # type: ignore[arg-type]


def test_a_broker_clock_ahead_of_ours_is_not_a_lag_from_the_future() -> None:
    ahead = row(0, stored=90, idle_s=5.0, lag_began_at=NOW + 3)
    [report, _] = assess([ahead, row(1, idle_s=0.5)], now=NOW, stall_after_s=1)
    assert report.lagging_for_s == 0.0
    assert report.status is Status.OK  # the lag began (at the latest) just now


def test_owner_idle_is_the_freshest_position_of_each_owner() -> None:
    rows = [row(0, idle_s=50.0), row(1, idle_s=2.0), row(2, owner="w-2", idle_s=9.0)]
    rows.append(row(3, owner=None, idle_s=None, stored=None))
    assert owner_idle(rows) == {"w-1": 2.0, "w-2": 9.0}


def test_exit_code_alerts_on_stalled_or_stopped_only() -> None:
    assert exit_code([]) == 0
    assert exit_code([Status.OK, Status.WARNING]) == 0
    assert exit_code([Status.OK, Status.STALLED]) == EXIT_STALLED
    assert exit_code([Status.STOPPED]) == EXIT_STALLED
    assert EXIT_STALLED not in {0, 1, 2}  # 1: could not read; 2: usage/configuration


def test_json_is_one_object_per_partition() -> None:
    reports = assess(
        [
            row(0, stored=90, idle_s=600.123456, lag_began_at=NOW - 60, committed=88),
            row(1, stored=None, log_end=0, owner=None, idle_s=None),
        ],
        now=NOW,
        stall_after_s=BOUND,
    )
    parsed = json.loads(as_json(reports, group="g", topic="t"))
    assert parsed == [
        {
            "group": "g",
            "topic": "t",
            "partition": 0,
            "log_end": 100,
            "stored": 90,
            "committed": 88,
            "lag": 10,
            "status": "STOPPED",  # w-1 stored nothing anywhere for 600 s
            "owner": "w-1",
            "idle_s": 600.123,
            "lagging_for_s": 60.0,
        },
        {
            "group": "g",
            "topic": "t",
            "partition": 1,
            "log_end": 0,
            "stored": None,
            "committed": None,
            "lag": 0,
            "status": "OK",
            "owner": None,
            "idle_s": None,
            "lagging_for_s": None,
        },
    ]


def test_table_has_every_column_and_a_total() -> None:
    reports = assess(
        [row(0, stored=90, idle_s=600.0, lag_began_at=NOW - 60, committed=88), row(1)],
        now=NOW,
        stall_after_s=BOUND,
    )
    lines = table_lines(reports, group="g", topic="t")
    assert lines[0] == "group g on t"
    assert lines[1].split() == [
        "PARTITION",
        "LOG-END",
        "STORED",
        "COMMITTED",
        "LAG",
        "STATUS",
        "IDLE-S",
        "OWNER",
    ]
    assert lines[2].split() == ["0", "100", "90", "88", "10", "STALLED", "600.0", "w-1"]
    assert lines[3].split() == ["1", "100", "100", "100", "0", "OK", "1.0", "w-1"]
    assert lines[-1].split() == ["total", "10"]


def test_the_command_line_of_orders_lag() -> None:
    from app.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["lag", "--stall-after", "5", "--json"])
    assert (args.stall_after, args.json, args.watch, args.interval) == (5.0, True, False, 2.0)
    assert parser.parse_args(["lag"]).stall_after is None  # then WORKER_STALL_AFTER_S
    for refused in (["--watch", "--json"], ["--interval", "0"], ["--stall-after", "nan"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["lag", *refused])
