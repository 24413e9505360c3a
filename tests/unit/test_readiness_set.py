"""Readiness of several API processes: the rule over their reports (pure), the reports' files,
and /readyz of one process of the set (its own check and its siblings' reports)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from app.api.health import Readiness
from app.api.readiness_board import (
    ReportBoard,
    SetReadiness,
    process_started,
    reporting,
    start_ticks,
)
from app.api.readiness_rule import STALE_AFTER_S, Report, set_ready, unready_siblings

ME, SIBLING, OTHER = 100, 200, 300
NOW = 5000.0


def test_ready_when_it_and_every_live_sibling_reported_ready_lately() -> None:
    reports = [Report(SIBLING, True, NOW - 1), Report(OTHER, True, NOW - 2.5)]
    assert set_ready(True, reports, NOW, {ME, SIBLING, OTHER}, ME)


def test_its_own_check_failing_is_enough_to_be_not_ready() -> None:
    assert not set_ready(False, [Report(SIBLING, True, NOW)], NOW, {SIBLING}, ME)


def test_a_sibling_that_says_not_ready_makes_the_set_not_ready() -> None:
    reports = [Report(SIBLING, True, NOW), Report(OTHER, False, NOW)]
    assert not set_ready(True, reports, NOW, {SIBLING, OTHER}, ME)


def test_a_sibling_that_stopped_reporting_counts_as_not_ready() -> None:
    """Its event loop hangs: its last report, however good, grows stale."""
    late = [Report(SIBLING, True, NOW - STALE_AFTER_S - 0.1)]
    assert not set_ready(True, late, NOW, {SIBLING}, ME)
    assert set_ready(True, [Report(SIBLING, True, NOW - STALE_AFTER_S)], NOW, {SIBLING}, ME)


def test_a_dead_sibling_is_ignored_whatever_it_last_said() -> None:
    """uvicorn replaces it; the replacement reports once it has checked."""
    reports = [Report(SIBLING, False, NOW - 60), Report(OTHER, True, NOW)]
    assert set_ready(True, reports, NOW, {OTHER}, ME)


def test_the_siblings_in_the_way_are_named() -> None:
    silent, unready = Report(SIBLING, True, NOW - 10), Report(OTHER, False, NOW)
    reports = [silent, unready, Report(400, True, NOW), Report(500, False, NOW)]
    assert unready_siblings(reports, NOW, {SIBLING, OTHER, 400}, ME) == [silent, unready]


def test_its_own_report_is_not_read_back() -> None:
    """Its own state is its current check, not what it wrote a second ago."""
    assert set_ready(True, [Report(ME, False, NOW - 60)], NOW, {ME}, ME)


def test_reports_are_written_whole_and_read_back(tmp_path: Path) -> None:
    board = ReportBoard(tmp_path, pid=SIBLING, clock=lambda: 42.5, started=7)
    board.publish(True)
    ReportBoard(tmp_path, pid=OTHER, clock=lambda: 43.0, started=8).publish(False)
    (tmp_path / "ready-junk.report").write_text("?")  # not a report: skipped
    (tmp_path / "ready-400.report").write_text("1 42.0\n")  # no start time: not one either
    assert sorted(board.reports(), key=lambda r: r.pid) == [
        Report(SIBLING, True, 42.5, 7),
        Report(OTHER, False, 43.0, 8),
    ]
    assert not list(tmp_path.glob("*.tmp"))
    board.withdraw()
    board.forget(OTHER)
    assert board.reports() == []


def test_clear_removes_an_earlier_runs_reports(tmp_path: Path) -> None:
    ReportBoard(tmp_path, pid=SIBLING).publish(True)
    (tmp_path / "counter_1.db").write_bytes(b"")  # prometheus-client's: not ours
    ReportBoard.clear(tmp_path)
    assert [path.name for path in tmp_path.iterdir()] == ["counter_1.db"]


class Own(Readiness):
    """This process's check, decided by the test."""

    def __init__(self, ready: bool) -> None:
        super().__init__()
        self.answer = ready

    async def ready(self, resources: Any) -> bool:
        return self.answer


@pytest.fixture
def pids() -> Iterator[tuple[int, int]]:
    """A live process's pid (a sibling), and a dead one's."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as sibling:
        try:
            yield sibling.pid, dead.pid
        finally:
            sibling.kill()


async def test_a_probe_answers_for_the_set_and_forgets_the_dead(
    tmp_path: Path, pids: tuple[int, int]
) -> None:
    sibling, dead = pids
    clock = [NOW]
    me = ReportBoard(tmp_path, clock=lambda: clock[0])
    me.publish(True)
    ReportBoard(tmp_path, pid=dead, clock=lambda: NOW).publish(False)
    ReportBoard(tmp_path, pid=sibling, clock=lambda: NOW).publish(True)
    probe = SetReadiness(Own(True), me, clock=lambda: clock[0])
    assert await probe.ready(None)  # type: ignore[arg-type]
    assert not (tmp_path / f"ready-{dead}.report").exists()
    # The sibling stops reporting: past STALE_AFTER_S (and the probes' cache), not ready.
    clock[0] += STALE_AFTER_S + 0.5
    assert not await probe.ready(None)  # type: ignore[arg-type]
    assert not await SetReadiness(Own(False), me).ready(None)  # type: ignore[arg-type]


def test_the_start_time_is_field_22_of_proc_stat() -> None:
    """The command (field 2) may hold spaces and parentheses; a zombie has no start that counts."""
    rest = " ".join(str(n) for n in range(4, 22))  # fields 4 to 21
    assert start_ticks(f"123 (a b) c) S {rest} 987654 4096 10") == 987654
    assert start_ticks(f"123 (api) Z {rest} 987654 0 0") is None


def test_a_process_start_time_is_its_own_for_life(pids: tuple[int, int]) -> None:
    sibling, dead = pids
    mine = process_started(os.getpid())
    assert mine is not None
    assert process_started(os.getpid()) == mine
    assert process_started(sibling) not in {None, mine}
    assert process_started(dead) is None


async def test_a_reused_pid_does_not_revive_a_dead_processs_report(
    tmp_path: Path, pids: tuple[int, int]
) -> None:
    """An API process died without withdrawing its report, and its pid went to an unrelated
    process (here: the live `sibling`). Its report, stale, must not hold the set NOT READY."""
    sibling, _ = pids
    started = process_started(sibling)
    assert started is not None
    me = ReportBoard(tmp_path, clock=lambda: NOW)
    me.publish(True)
    ReportBoard(tmp_path, pid=sibling, clock=lambda: NOW - 60, started=started - 1).publish(True)
    probe = SetReadiness(Own(True), me, clock=lambda: NOW)
    assert await probe.ready(None)  # type: ignore[arg-type]
    assert not (tmp_path / f"ready-{sibling}.report").exists()
    # The process that does hold the pid, as stale, does hold the set back.
    ReportBoard(tmp_path, pid=sibling, clock=lambda: NOW - 60, started=started).publish(True)
    assert sorted(report.pid for report in me.live_reports()) == sorted([os.getpid(), sibling])
    probe = SetReadiness(Own(True), me, clock=lambda: NOW)
    assert not await probe.ready(None)  # type: ignore[arg-type]


async def test_each_process_sweeps_the_deads_reports_without_a_probe(
    tmp_path: Path, pids: tuple[int, int]
) -> None:
    sibling, dead = pids
    ReportBoard(tmp_path, pid=dead).publish(True)
    ReportBoard(tmp_path, pid=sibling).publish(True)
    state = SimpleNamespace()
    mine = tmp_path / f"ready-{os.getpid()}.report"
    async with reporting(state, None, tmp_path):  # type: ignore[arg-type]
        for _ in range(50):  # its first report and sweep come at once; 5 s at most
            if mine.exists() and not (tmp_path / f"ready-{dead}.report").exists():
                break
            await asyncio.sleep(0.1)
        assert mine.exists()
        assert not (tmp_path / f"ready-{dead}.report").exists()
        assert (tmp_path / f"ready-{sibling}.report").exists()
        assert isinstance(state.readiness, SetReadiness)
    assert not mine.exists()  # withdrawn on the way out
