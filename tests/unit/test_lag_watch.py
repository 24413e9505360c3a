"""`orders lag --watch` without services or a terminal: the rows it derives from samples, the
table it draws, and a loop that outlives failed samples."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, cast

import pytest
from rich.console import Console
from sqlalchemy.ext.asyncio import AsyncEngine

from app.lag_status import Status
from app.operations import lag_watch
from app.operations.kafka_clients import KafkaCommandError
from app.operations.lag import PartitionLag
from app.operations.lag_watch import Tracker, View, WatchRow, render, watch
from app.settings import Settings, WorkerSettings


def lag_row(partition: int, log_end: int, stored: int | None, idle_s: float = 0.1) -> PartitionLag:
    return PartitionLag(
        partition,
        stored,
        stored,
        log_end,
        owner=None if stored is None else "w-1",
        idle_s=None if stored is None else idle_s,
    )


def text_of(view: View, width: int = 120) -> str:
    console = Console(width=width, record=True, color_system=None)
    console.print(render(view))
    return console.export_text()


def view(rows: list[WatchRow], **changes: Any) -> View:
    base: dict[str, Any] = {
        "group": "order-workers",
        "topic": "orders",
        "interval_s": 2.0,
        "stall_after_s": 30.0,
        "window": 10,
        "rows": rows,
        "sampled_at": 1_700_000_000.0,
    }
    base.update(changes)
    return View(**base)


def watch_row(partition: int, status: Status, **changes: Any) -> WatchRow:
    base: dict[str, Any] = {
        "partition": partition,
        "log_end": 1000,
        "stored": 990,
        "lag": 10,
        "processing_rate": 12.25,
        "produce_rate": 20.0,
        "status": status,
        "owner": "host-42",
        "idle_s": 1.25,
    }
    base.update(changes)
    return WatchRow(**base)


# --- Tracker -------------------------------------------------------------------------------------


def test_tracker_derives_rates_and_warning_from_its_window() -> None:
    tracker = Tracker(window=3, stall_after_s=30.0)
    for at, (end, stored) in enumerate([(100, 90), (120, 95), (140, 100)]):
        [shown] = tracker.observe([lag_row(0, end, stored)], float(at))
    assert shown.lag == 40
    assert shown.produce_rate == pytest.approx(20.0)
    assert shown.processing_rate == pytest.approx(5.0)
    assert shown.status is Status.WARNING


def test_tracker_dates_a_lag_only_once() -> None:
    tracker = Tracker(window=3, stall_after_s=30.0)
    assert tracker.dated() == set()
    tracker.observe([lag_row(0, 100, 100), lag_row(1, 100, 90)], 0.0)
    assert tracker.dated() == {1}  # partition 1's lag start is known; 0 has no lag


def test_tracker_forgets_partitions_that_disappear() -> None:
    tracker = Tracker(window=3, stall_after_s=30.0)
    tracker.observe([lag_row(0, 10, 10), lag_row(1, 10, 10)], 0.0)
    shown = tracker.observe([lag_row(0, 10, 10)], 1.0)
    assert [row.partition for row in shown] == [0]
    assert set(tracker.histories) == {0}


def test_tracker_stops_a_partition_nobody_stores() -> None:
    tracker = Tracker(window=3, stall_after_s=5.0)
    waiting = PartitionLag(0, None, None, 10, lag_began_at=100.0)
    [shown] = tracker.observe([waiting], 110.0)
    assert shown.status is Status.STOPPED


# --- render --------------------------------------------------------------------------------------


def test_render_shows_every_partition_with_totals() -> None:
    rows = [
        watch_row(0, Status.OK, lag=0, stored=1000),
        watch_row(1, Status.STALLED, processing_rate=0.0),
        watch_row(2, Status.WARNING, processing_rate=None, produce_rate=None, owner=None),
    ]
    shown = text_of(view(rows))
    assert "group order-workers on orders" in shown
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in shown.splitlines()]
    by_partition = {row[0]: row[1:] for row in cells if row}
    assert by_partition["1"] == ["1000", "990", "10", "20.0", "0.0", "STALLED", "1.2", "host-42"]
    assert by_partition["2"] == ["1000", "990", "10", "-", "-", "WARNING", "1.2", "-"]
    # Lags and rates add up; the worst status stands for the group.
    assert by_partition["total"] == ["", "", "20", "40.0", "12.2", "STALLED", "", ""]


def test_render_colours_statuses() -> None:
    console = Console(width=120, record=True, force_terminal=True, color_system="truecolor")
    console.print(render(view([watch_row(0, Status.STOPPED), watch_row(1, Status.OK)])))
    html = console.export_html(inline_styles=True)
    assert "STOPPED" in html
    assert "color: #008000" in html  # OK in green
    assert "background-color: #800000" in html  # STOPPED on red


def test_render_before_the_first_sample_and_after_a_failure() -> None:
    assert "waiting for the first sample" in text_of(view([], sampled_at=None))
    failed = text_of(
        view([watch_row(0, Status.OK)], error="Kafka at k:9092: boom", failed_at=1_700_000_002.0)
    )
    said = " ".join(failed.split())  # the caption wraps at the table's width
    assert "last sample failed at" in said
    assert "(showing the last good sample): Kafka at k:9092: boom" in said
    assert "host-42" in failed


# --- the loop ------------------------------------------------------------------------------------


async def test_watch_survives_failed_samples_and_shows_the_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answers: list[Exception | list[PartitionLag]] = [
        KafkaCommandError("reading log ends: no answer from Kafka"),
        [lag_row(0, 100, 100), lag_row(1, 50, 40)],
        OSError("connection refused"),
    ]
    asked_undated: list[set[int]] = []

    async def sampled(
        settings: Settings, engine: AsyncEngine, *, undated: Collection[int] = ()
    ) -> list[PartitionLag]:
        asked_undated.append(set(undated))
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(lag_watch, "group_lag", sampled)
    # A terminal, so that Live draws every refresh (elsewhere it prints only the last one).
    console = Console(width=120, record=True, force_terminal=True, color_system=None)
    await watch(
        Settings(worker=WorkerSettings(lag_window=3)),
        cast(AsyncEngine, object()),
        interval_s=0.01,
        stall_after_s=30.0,
        explain=lambda exc: f"explained: {exc}" if isinstance(exc, OSError) else None,
        console=console,
        refreshes=3,
    )
    assert answers == []
    assert asked_undated == [set(), set(), {1}]
    shown = " ".join(console.export_text().split())  # the caption wraps at the table's width
    assert "KafkaCommandError: reading log ends: no answer from Kafka" in shown  # not explained
    assert "explained: connection refused" in shown
    final = shown[shown.rindex("group ") :]
    assert "(showing the last good sample)" in final
    assert "│ 1 │ 50 │ 40 │ 10 │" in final  # the last good sample stays on screen
