"""Readiness of several API processes (N > 1): each reports its own check in the shared
directory, and /readyz answers for the set (the rule: app/api/readiness_rule.py).

Each process checks in the background every READY_INTERVAL_S, through the same single-flight,
cached Readiness the probes use (app/api/health.py): one check a second per process, however
many probe. Its report is one small file, `ready-<pid>.report` ("1 <monotonic instant> <start
time>"), replaced atomically (written aside, then renamed), so a reader never sees half of one.
Reading the set is one listing and N small reads, done at most once per READY_CACHE_S.

A report outlives its process when the process is killed (no withdraw). Whoever reads the set,
and each process after each report (so the directory is swept within a second even if nothing
probes), deletes the reports of processes that are gone. A pid is only a name for a while: the
kernel hands it out again, and an unrelated process (or a later API process, before its first
report) may hold it. So a report carries its writer's start time (/proc/<pid>/stat, field 22,
fixed for the life of a process), and it counts only while the process of that pid has that
start time: a reused pid never revives a dead process's stale report (which would keep the set
NOT READY for good).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from app.api.deps import Resources
from app.api.health import READY_CACHE_S, Readiness
from app.api.readiness_rule import READY_INTERVAL_S, Report, unready_siblings
from app.observability.exposition import process_alive

log = logging.getLogger(__name__)

_PREFIX, _SUFFIX = "ready-", ".report"
_PROC = Path("/proc")


def start_ticks(stat: str) -> int | None:
    """The start time in /proc/<pid>/stat's text (field 22, clock ticks after boot); None for a
    zombie or a dead process (state Z or X: it serves nothing, and its report must go)."""
    # Field 2, the command in parentheses, may hold spaces and parentheses: split after it.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in {"Z", "X"}:
        return None
    return int(fields[19])  # fields[0] is field 3


def process_started(pid: int) -> int | None:
    """When process `pid` started (the same number for the whole life of the process), or None
    if there is no such process. Without /proc (not Linux): 0 for any live process."""
    try:
        return start_ticks((_PROC / str(pid) / "stat").read_text())
    except FileNotFoundError:
        if _PROC.is_dir():
            return None
        return 0 if process_alive(pid) else None
    except (OSError, ValueError, IndexError):  # gone while being read, or unreadable
        return None


class ReportBoard:
    """The reports in `directory`, as process `pid` (started at `started`) writes and reads
    them."""

    def __init__(
        self,
        directory: Path,
        pid: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        started: int | None = None,
    ) -> None:
        self.directory = directory
        self.pid = os.getpid() if pid is None else pid
        self.clock = clock
        self.started = (process_started(self.pid) or 0) if started is None else started
        self._mine = directory / f"{_PREFIX}{self.pid}{_SUFFIX}"

    def publish(self, ready: bool) -> None:
        aside = self._mine.with_suffix(".tmp")
        aside.write_text(f"{int(ready)} {self.clock():.6f} {self.started}\n")
        os.replace(aside, self._mine)

    def withdraw(self) -> None:
        """A process leaving the set: its siblings stop waiting for its reports."""
        self._mine.unlink(missing_ok=True)

    def reports(self) -> list[Report]:
        """Every report in the directory, its writer alive or not."""
        found = []
        for path in self.directory.glob(f"{_PREFIX}*{_SUFFIX}"):
            try:
                pid = int(path.name[len(_PREFIX) : -len(_SUFFIX)])
                ready, at, started = path.read_text().split()
                found.append(Report(pid, ready == "1", float(at), int(started)))
            except (OSError, ValueError):  # gone meanwhile, or not ours: not a report
                continue
        return found

    def live_reports(self) -> list[Report]:
        """The reports of processes still running (this one's included), after deleting the
        others: those whose pid is gone, or now names a process started at another time."""
        live = []
        for report in self.reports():
            if report.pid == self.pid or process_started(report.pid) == report.started:
                live.append(report)
            else:
                self.forget(report.pid)
        return live

    def forget(self, pid: int) -> None:
        (self.directory / f"{_PREFIX}{pid}{_SUFFIX}").unlink(missing_ok=True)

    @staticmethod
    def clear(directory: Path) -> None:
        """Delete an earlier run's reports (in the parent, before any API process starts)."""
        for stale in directory.glob(f"{_PREFIX}*"):
            stale.unlink(missing_ok=True)


class SetReadiness:
    """/readyz of one process of a set: its own check, and its siblings' reports."""

    def __init__(
        self, own: Readiness, board: ReportBoard, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.own = own
        self.board = board
        self.clock = clock
        self._siblings_ready = False
        self._read_at = -float("inf")

    async def ready(self, resources: Resources) -> bool:
        if not await self.own.ready(resources):
            return False
        now = self.clock()
        if now - self._read_at >= READY_CACHE_S:
            self._siblings_ready, self._read_at = self._read_siblings(now), now
        return self._siblings_ready

    def _read_siblings(self, now: float) -> bool:
        reports = self.board.live_reports()
        live = {report.pid for report in reports}
        unready = unready_siblings(reports, now, live, self.board.pid)
        for report in unready:
            said = "ready" if report.ready else "NOT READY"
            log.warning(
                "not ready: API process %d said %s %.1f s ago", report.pid, said, now - report.at
            )
        return not unready


@contextlib.asynccontextmanager
async def reporting(state: Any, resources: Resources, directory: Path) -> AsyncIterator[None]:
    """For the lifespan of one process of a set: report in the background, answer /readyz for
    the set (state.readiness, read by app/api/health.py); withdraw the report on the way out."""
    board = ReportBoard(directory)
    own = Readiness()
    state.readiness = SetReadiness(own, board)
    task = asyncio.create_task(_report_every_interval(own, resources, board, os.getppid()))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        board.withdraw()


async def _report_every_interval(
    own: Readiness, resources: Resources, board: ReportBoard, parent: int
) -> None:
    while True:
        ready = await own.ready(resources)
        try:
            board.publish(ready)
            # Sweep the dead's reports even when nothing probes: a report left behind must not
            # wait for a probe to be deleted while its pid goes to another process.
            board.live_reports()
        except OSError:  # the directory is gone or full: siblings will see this one as stale
            log.exception("could not publish this process's readiness")
        if os.getppid() != parent:
            # The supervisor died without stopping its processes (SIGKILL): serving on alone,
            # nobody would replace or stop this one. Drain and exit as on SIGTERM (uvicorn's).
            log.error("the parent API process %d is gone: stopping", parent)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        await asyncio.sleep(READY_INTERVAL_S)
