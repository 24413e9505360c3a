"""When several API processes are ready as a set: the rule, apart from the files it reads.

A probe reaches one process of the set at random, and the balancer in front sends orders to all
of them: one process whose producer lost the broker fails a share of the orders while every
other one says "ready". So each process reports its own check (app/api/readiness_board.py) and
any one answers for the set: ready only if it is, and every live sibling's latest report is
ready and fresh. A sibling whose event loop hangs stops reporting: once its report is older than
STALE_AFTER_S it counts as not ready. A sibling that died is ignored: uvicorn replaces it, and
its replacement reports as soon as it has checked.
"""

from __future__ import annotations

from collections.abc import Container, Iterable
from dataclasses import dataclass

# Each process checks its dependencies and reports every READY_INTERVAL_S: no more than one
# check a second per process, whoever probes.
READY_INTERVAL_S = 1.0
# Three missed reports: a report is late by up to one check (bounded by CHECK_TIMEOUT_S) past
# its interval before anything hangs.
STALE_AFTER_S = 3 * READY_INTERVAL_S


@dataclass(frozen=True)
class Report:
    pid: int
    ready: bool
    at: float  # time.monotonic() of the process that wrote it: CLOCK_MONOTONIC, host-wide
    # When its writer started (app/api/readiness_board.py): tells it from a later process that
    # was given the same pid.
    started: int = 0


def set_ready(
    own_ready: bool,
    reports: Iterable[Report],
    now: float,
    live: Container[int],
    me: int,
    stale_after_s: float = STALE_AFTER_S,
) -> bool:
    """Whether the set is ready, as process `me` (whose own check says `own_ready`) sees it."""
    return own_ready and not unready_siblings(reports, now, live, me, stale_after_s)


def unready_siblings(
    reports: Iterable[Report],
    now: float,
    live: Container[int],
    me: int,
    stale_after_s: float = STALE_AFTER_S,
) -> list[Report]:
    """The latest reports of the live siblings of `me` that say "not ready", or are stale."""
    return [
        report
        for report in reports
        if report.pid != me
        and report.pid in live
        and (not report.ready or now - report.at > stale_after_s)
    ]
