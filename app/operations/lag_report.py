"""What `orders lag` says about one snapshot: a status per partition, the table, the JSON, the
exit code. Pure: the rows come from app.operations.lag, the rules from app.lag_status.

One snapshot cannot show WARNING (lag growing needs a window of samples): `orders lag --watch`
keeps one. It can show STALLED and STOPPED, because PostgreSQL says how long each position has
stood still and the broker says when the first unprocessed record arrived.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from app.lag_status import Sample, Status, evaluate
from app.operations.lag import PartitionLag

# Exit codes of `orders lag`: 1 stays "could not find out" (Kafka or PostgreSQL away, as for
# every operator command), so that a cron job or a CI step can tell a stall from an outage.
EXIT_STALLED = 3
_UNHEALTHY = frozenset({Status.STALLED, Status.STOPPED})


@dataclass(frozen=True)
class PartitionReport:
    row: PartitionLag
    status: Status
    lagging_for_s: float | None  # since the lag began, when known


def sample_of(row: PartitionLag, at: float) -> Sample:
    """The row as a lag sample taken at `at` (epoch seconds: the broker's append times are)."""
    idle_s = row.idle_s
    if row.stored is None and row.lag_began_at is not None:
        # Never stored: the position has stood still at least since records began to wait.
        idle_s = max(0.0, at - row.lag_began_at)
    return Sample(
        at=at,
        log_end=row.log_end,
        position=row.stored or 0,
        position_idle_s=idle_s,
        lag_began_at=row.lag_began_at,
    )


def owner_idle(rows: Iterable[PartitionLag]) -> dict[str, float]:
    """Per owner, how long since it last stored a position on any partition (PostgreSQL's
    clock): a member idle everywhere is STOPPED rather than stalled on one partition.

    Caught-up partitions count: one that moved a moment ago shows the member alive even though
    its lag is 0 when sampled. Quiet ones cannot make a member look stopped: a minimum only
    falls when partitions are added, so counting only the lagging ones would report more
    members STOPPED, never fewer."""
    idle: dict[str, float] = {}
    for row in rows:
        if row.owner is not None and row.idle_s is not None:
            idle[row.owner] = min(idle.get(row.owner, math.inf), row.idle_s)
    return idle


def owner_idle_of(row: PartitionLag, idle: dict[str, float]) -> float:
    # No owner: nobody has ever stored this partition, so nobody is working on it.
    return math.inf if row.owner is None else idle.get(row.owner, math.inf)


def assess(
    rows: Sequence[PartitionLag], *, now: float, stall_after_s: float
) -> list[PartitionReport]:
    """Each partition's status from this one snapshot (never WARNING: see the module's note).

    `now` is epoch seconds: the append times are the broker's wall clock. The positions' ages
    are PostgreSQL's own durations, so no clock is compared with the database's.
    """
    idle = owner_idle(rows)
    reports = []
    for row in rows:
        lagging_since = None if row.lag_began_at is None else min(row.lag_began_at, now)
        if row.idle_s is not None:
            moved_at = now - row.idle_s
        else:
            # Never stored: it has not moved since records began to wait (unknown: no evidence).
            moved_at = now if lagging_since is None else lagging_since
        status = evaluate(
            lag=row.lag,
            now=now,
            stall_after_s=stall_after_s,
            moved_at=moved_at,
            lagging_since=lagging_since,
            owner_idle_s=owner_idle_of(row, idle),
        )
        lagging_for = None if lagging_since is None or row.lag == 0 else now - lagging_since
        reports.append(PartitionReport(row, status, lagging_for))
    return reports


def exit_code(statuses: Iterable[Status]) -> int:
    """0 when every partition is OK or WARNING; EXIT_STALLED if any is STALLED or STOPPED."""
    return EXIT_STALLED if any(status in _UNHEALTHY for status in statuses) else 0


def as_json(reports: Sequence[PartitionReport], *, group: str, topic: str) -> str:
    """One object per partition, in a JSON array (`jq '.[] | select(.status != "OK")'`)."""
    return json.dumps(
        [
            {
                "group": group,
                "topic": topic,
                "partition": r.row.partition,
                "log_end": r.row.log_end,
                "stored": r.row.stored,
                "committed": r.row.committed,
                "lag": r.row.lag,
                "status": str(r.status),
                "owner": r.row.owner,
                "idle_s": _rounded(r.row.idle_s),
                "lagging_for_s": _rounded(r.lagging_for_s),
            }
            for r in reports
        ],
        indent=2,
    )


def table_lines(reports: Sequence[PartitionReport], *, group: str, topic: str) -> list[str]:
    lines = [
        f"group {group} on {topic}",
        f"{'PARTITION':>9} {'LOG-END':>10} {'STORED':>10} {'COMMITTED':>10} {'LAG':>8} "
        f"{'STATUS':<8} {'IDLE-S':>8} OWNER",
    ]
    for r in reports:
        row = r.row
        lines.append(
            f"{row.partition:>9} {row.log_end:>10} {_dash(row.stored):>10} "
            f"{_dash(row.committed):>10} {row.lag:>8} {r.status:<8} "
            f"{_dash(_rounded(row.idle_s, 1)):>8} {_dash(row.owner)}"
        )
    lines.append(f"{'total':>9} {'':>10} {'':>10} {'':>10} {sum(r.row.lag for r in reports):>8}")
    return lines


def _rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _dash(value: object | None) -> str:
    return "-" if value is None else str(value)
