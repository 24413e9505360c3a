"""`orders lag --watch`: a live view of lag, rates and status per partition, refreshed in place.

Each refresh is one `group_lag` sample fed to a PartitionHistory per partition, so the view can
show what one snapshot cannot: processing and produce rates, and WARNING (lag grew at every
sample of the window). `render` is a pure function of the data (unit-tested without a terminal);
`watch` is the loop, which survives a broker or database that goes away: it shows the error
with the last good sample and keeps sampling.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.lag_status import PartitionHistory, Status
from app.operations.lag import PartitionLag, group_lag
from app.operations.lag_report import owner_idle, owner_idle_of, sample_of
from app.settings import Settings

STYLES = {
    Status.OK: "green",
    Status.WARNING: "yellow",
    Status.STALLED: "bold red",
    Status.STOPPED: "bold white on red",
}
_SEVERITY = [Status.OK, Status.WARNING, Status.STALLED, Status.STOPPED]


@dataclass(frozen=True)
class WatchRow:
    partition: int
    log_end: int
    stored: int | None
    lag: int
    processing_rate: float | None  # stored positions per second over the window
    produce_rate: float | None  # log end per second over the window
    status: Status
    owner: str | None
    idle_s: float | None


@dataclass(frozen=True)
class View:
    group: str
    topic: str
    interval_s: float
    stall_after_s: float
    window: int
    rows: Sequence[WatchRow] = ()
    sampled_at: float | None = None  # epoch seconds of the sample shown
    error: str | None = None  # why the latest sample failed, if it did
    failed_at: float | None = None


@dataclass
class Tracker:
    """The windows of every partition, turning each sample of rows into rows of the view."""

    window: int
    stall_after_s: float
    histories: dict[int, PartitionHistory] = field(default_factory=dict)

    def dated(self) -> set[int]:
        """Partitions whose current lag began within the history: their first unprocessed
        record need not be read again (PartitionHistory uses a lag start only when lag begins)."""
        return {
            partition
            for partition, history in self.histories.items()
            if history.latest is not None and history.latest.lag > 0
        }

    def observe(self, rows: Sequence[PartitionLag], at: float) -> list[WatchRow]:
        idle = owner_idle(rows)
        seen = {row.partition for row in rows}
        for gone in set(self.histories) - seen:  # topic recreated with fewer partitions
            del self.histories[gone]
        shown = []
        for row in rows:
            history = self.histories.setdefault(row.partition, PartitionHistory(self.window))
            history.add(sample_of(row, at))
            shown.append(
                WatchRow(
                    partition=row.partition,
                    log_end=row.log_end,
                    stored=row.stored,
                    lag=row.lag,
                    processing_rate=history.processing_rate,
                    produce_rate=history.produce_rate,
                    status=history.status(at, self.stall_after_s, owner_idle_of(row, idle)),
                    owner=row.owner,
                    idle_s=row.idle_s,
                )
            )
        return shown


def render(view: View) -> Table:
    """The whole screen for one refresh, as a rich Table (pure: no clock, no terminal)."""
    table = Table(
        title=f"group {view.group} on {view.topic}",
        caption=_caption(view),
        caption_justify="left",
        show_footer=bool(view.rows),
    )
    rows = view.rows
    worst = max((r.status for r in rows), key=_SEVERITY.index, default=None)
    table.add_column("PART", "total", justify="right", no_wrap=True)
    table.add_column("LOG END", justify="right", no_wrap=True)
    table.add_column("STORED", justify="right", no_wrap=True)
    table.add_column("LAG", str(sum(r.lag for r in rows)), justify="right", no_wrap=True)
    table.add_column("IN/S", _rate(_total(r.produce_rate for r in rows)), justify="right")
    table.add_column("OUT/S", _rate(_total(r.processing_rate for r in rows)), justify="right")
    table.add_column("STATUS", _status(worst) if worst else "", no_wrap=True, min_width=7)
    table.add_column("IDLE S", justify="right", no_wrap=True)
    table.add_column("OWNER", overflow="fold")
    for r in rows:
        table.add_row(
            str(r.partition),
            str(r.log_end),
            _dash(r.stored),
            str(r.lag),
            _rate(r.produce_rate),
            _rate(r.processing_rate),
            _status(r.status),
            "-" if r.idle_s is None else f"{r.idle_s:.1f}",
            _dash(r.owner),
        )
    return table


async def watch(
    settings: Settings,
    engine: AsyncEngine,
    *,
    interval_s: float,
    stall_after_s: float,
    explain: Callable[[BaseException], str | None],
    console: Console | None = None,
    refreshes: int | None = None,
) -> None:
    """Sample and redraw every `interval_s` until cancelled (Ctrl-C), or `refreshes` times."""
    tracker = Tracker(settings.worker.lag_window, stall_after_s)
    view = View(
        group=settings.worker.group_id,
        topic=settings.kafka.orders_topic,
        interval_s=interval_s,
        stall_after_s=stall_after_s,
        window=settings.worker.lag_window,
    )
    # Each step of a sample is bounded (Kafka by the request timeout, PostgreSQL's connection by
    # its own); this bounds a server that accepts a connection and then never answers.
    bound = 3 * settings.kafka.request_timeout_ms / 1000 + settings.database.connect_timeout_s
    loop = asyncio.get_running_loop()
    done = 0
    with Live(render(view), console=console, auto_refresh=False) as live:
        while refreshes is None or done < refreshes:
            started = loop.time()
            try:
                async with asyncio.timeout(bound):
                    rows = await group_lag(settings, engine, undated=tracker.dated())
            except Exception as exc:  # the view outlives any failed sample, by design
                message = explain(exc) or f"{type(exc).__name__}: {exc}"
                if isinstance(exc, TimeoutError):
                    message = f"no answer within {bound:g}s"
                view = replace(view, error=message, failed_at=time.time())
            else:
                at = time.time()
                view = replace(view, rows=tracker.observe(rows, at), sampled_at=at, error=None)
            live.update(render(view), refresh=True)
            done += 1
            if refreshes is None or done < refreshes:
                await asyncio.sleep(max(0.0, interval_s - (loop.time() - started)))


def _caption(view: View) -> Text:
    caption = Text()
    if view.sampled_at is None:
        caption.append("waiting for the first sample")
    else:
        caption.append(f"sampled {_clock(view.sampled_at)}, every {view.interval_s:g}s")
    caption.append(
        f"; IN/S appended and OUT/S stored per second over the last {view.window} samples; "
        f"STALLED/STOPPED: lag with the stored position still for {view.stall_after_s:g}s; "
        "WARNING: lag grew at every sample; IDLE S: since the owner last moved the position; "
        "Ctrl-C quits"
    )
    if view.error is not None:
        when = "" if view.failed_at is None else f" at {_clock(view.failed_at)}"
        kept = "" if view.sampled_at is None else " (showing the last good sample)"
        caption.append(f"\nlast sample failed{when}{kept}: {view.error}", style="bold red")
    return caption


def _status(status: Status) -> Text:
    return Text(str(status), style=STYLES[status])


def _total(rates: Iterable[float | None]) -> float | None:
    known = [rate for rate in rates if rate is not None]
    return sum(known) if known else None


def _rate(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.1f}"


def _dash(value: object | None) -> str:
    return "-" if value is None else str(value)


def _clock(epoch_s: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(epoch_s))
