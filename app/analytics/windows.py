"""Tumbling windows of revenue per currency, by the broker's append time: pure arithmetic.

Event time is when the broker appended the order (the orders topic stamps records with
LogAppendTime): window `[start, start + W)` with `start = t - t mod W`, W = ANALYTICS_WINDOW_S.

The watermark says how far event time has surely got. Per partition, the latest append time the
group has read there: a partition's log is appended in time order, so nothing earlier can still
come from it. (A partition read to its end counts as having got to the instant the client last
heard so from its leader: whatever is appended there next is appended later.) The group's
watermark is the minimum over all its partitions, whichever member owns them, minus the grace
ANALYTICS_GRACE_S, which absorbs what breaks the time order: broker clocks apart across a leader
change, a clock stepped back, a skew between the client's clock and the broker's. Until every
partition has said where it stands, the watermark is unknown and closes nothing.

A window is closed once the watermark reaches its end: `end <= watermark`. A closed window is
what GET /analytics/revenue serves.

An order whose window is already closed when its batch is counted is LATE (an order a DLQ
replay brought back, carrying its first append time; a partition whose owner fell far behind
while another member's partitions advanced). It is added to its window anyway, as a correction,
and counted apart (`late`, the `late_orders` column, a log line). Dropping it would make the
closed windows disagree with the stored orders forever; a correction keeps the totals right and
says which windows changed after they closed. Both modes do the same, so the exact mode's totals
equal the orders', window for window.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True, order=True)
class WindowKey:
    start_ms: int
    currency: str


@dataclass
class WindowTally:
    """What a batch adds to one window: orders, revenue, and how many of them came late."""

    orders: int = 0
    revenue: Decimal = Decimal(0)
    late: int = 0


@dataclass(frozen=True)
class Sale:
    """One order that counts: when the broker appended it, its currency, its total."""

    append_ms: int
    currency: str
    total: Decimal


def window_start_ms(append_ms: int, window_s: int) -> int:
    """The start of the window holding this instant (epoch milliseconds)."""
    width = window_s * 1000
    return append_ms - append_ms % width


def window_end_ms(start_ms: int, window_s: int) -> int:
    return start_ms + window_s * 1000


def watermark_ms(appended_until: Iterable[int | None], grace_s: float) -> int | None:
    """The group's watermark: the earliest of its partitions' append times, minus the grace;
    None while there is no partition or one of them is not known yet."""
    known = list(appended_until)
    if not known or any(until is None for until in known):
        return None
    return min(until for until in known if until is not None) - round(grace_s * 1000)


def is_closed(end_ms: int, watermark: int | None) -> bool:
    """Whether a window ending at `end_ms` is closed under `watermark`."""
    return watermark is not None and end_ms <= watermark


def tally(
    sales: Iterable[Sale], window_s: int, watermark: int | None
) -> dict[WindowKey, WindowTally]:
    """What a batch adds to each window, its late orders counted apart. `watermark` is the one
    the batch began under: the orders of one batch never make each other late."""
    windows: dict[WindowKey, WindowTally] = {}
    for sale in sales:
        key = WindowKey(window_start_ms(sale.append_ms, window_s), sale.currency)
        window = windows.setdefault(key, WindowTally())
        window.orders += 1
        window.revenue += sale.total
        if is_closed(window_end_ms(key.start_ms, window_s), watermark):
            window.late += 1
    return windows


def latest(appended: Iterable[tuple[int, int]]) -> dict[int, int]:
    """Each partition's latest append time among (partition, append time) pairs."""
    progress: dict[int, int] = {}
    for partition, append_ms in appended:
        progress[partition] = max(progress.get(partition, append_ms), append_ms)
    return progress
