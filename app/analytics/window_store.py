"""Every statement on revenue_windows and analytics_watermarks (migrations/versions/0006).

Windows are only ever added to: a batch's tallies go in as one upsert,
`ON CONFLICT ... DO UPDATE SET orders = orders + excluded.orders, ...`, rows in (window,
currency) order so that two members adding to the same windows lock them in the same order
and never deadlock. Watermarks only move forward (GREATEST).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY, BIGINT, INTEGER, NUMERIC, TEXT, TIMESTAMP
from sqlalchemy.ext.asyncio import AsyncConnection

from app.analytics.windows import WindowKey, WindowTally, watermark_ms, window_end_ms

_INSTANTS = ARRAY(TIMESTAMP(timezone=True))

_ADD_WINDOWS = text(
    """
    INSERT INTO revenue_windows AS w
        (group_id, window_start, window_end, currency, orders, revenue, late_orders)
    SELECT :group_id, t.window_start, t.window_end, t.currency, t.orders, t.revenue, t.late
    FROM unnest(
        CAST(:starts AS timestamptz[]), CAST(:ends AS timestamptz[]), CAST(:currencies AS text[]),
        CAST(:orders AS bigint[]), CAST(:revenues AS numeric[]), CAST(:lates AS bigint[])
    ) AS t(window_start, window_end, currency, orders, revenue, late)
    ORDER BY t.window_start, t.currency
    ON CONFLICT (group_id, window_start, currency) DO UPDATE SET
        orders = w.orders + excluded.orders,
        revenue = w.revenue + excluded.revenue,
        late_orders = w.late_orders + excluded.late_orders,
        updated_at = now()
    """
).bindparams(
    bindparam("starts", type_=_INSTANTS),
    bindparam("ends", type_=_INSTANTS),
    bindparam("currencies", type_=ARRAY(TEXT)),
    bindparam("orders", type_=ARRAY(BIGINT)),
    bindparam("revenues", type_=ARRAY(NUMERIC)),
    bindparam("lates", type_=ARRAY(BIGINT)),
)

# NULL: assigned, nothing known yet; it holds the group's watermark back until it is known.
_KNOWN_PARTITIONS = text(
    """
    INSERT INTO analytics_watermarks (group_id, topic, partition, appended_until)
    SELECT :group_id, :topic, p, NULL FROM unnest(CAST(:partitions AS int[])) AS t(p)
    ORDER BY p
    ON CONFLICT DO NOTHING
    """
).bindparams(bindparam("partitions", type_=ARRAY(INTEGER)))

_MOVE_WATERMARKS = text(
    """
    INSERT INTO analytics_watermarks AS m (group_id, topic, partition, appended_until)
    SELECT :group_id, :topic, t.partition, t.appended_until
    FROM unnest(CAST(:partitions AS int[]), CAST(:untils AS timestamptz[]))
        AS t(partition, appended_until)
    ORDER BY t.partition
    ON CONFLICT (group_id, topic, partition) DO UPDATE SET
        appended_until = GREATEST(m.appended_until, excluded.appended_until),
        updated_at = now()
    """
).bindparams(bindparam("partitions", type_=ARRAY(INTEGER)), bindparam("untils", type_=_INSTANTS))

_READ_WATERMARKS = text(
    "SELECT appended_until FROM analytics_watermarks WHERE group_id = :group_id AND topic = :topic"
)

# A page is whole window starts (every currency of a window together): the first `limit` + 1
# starts, the last of which only says where the next page begins.
_CLOSED_WINDOWS = text(
    """
    WITH wanted AS (
        SELECT window_start, window_end, currency, orders, revenue, late_orders
        FROM revenue_windows
        WHERE group_id = :group_id AND window_start >= :start AND window_start < :end
          AND window_end <= :closed_through
          AND (CAST(:currency AS text) IS NULL OR currency = :currency)
    ),
    starts AS (
        SELECT DISTINCT window_start FROM wanted ORDER BY window_start LIMIT :limit + 1
    )
    SELECT * FROM wanted WHERE window_start IN (SELECT window_start FROM starts)
    ORDER BY window_start, currency
    """
)

_FORGET_WINDOWS = text("DELETE FROM revenue_windows WHERE group_id = :group_id")
_FORGET_WATERMARKS = text("DELETE FROM analytics_watermarks WHERE group_id = :group_id")


def instant(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


async def add_windows(
    connection: AsyncConnection,
    group_id: str,
    window_s: int,
    windows: Mapping[WindowKey, WindowTally],
) -> None:
    """Add each window's tally to its row (created at its first order)."""
    if not windows:
        return
    keys = sorted(windows)
    await connection.execute(
        _ADD_WINDOWS,
        {
            "group_id": group_id,
            "starts": [instant(key.start_ms) for key in keys],
            "ends": [instant(window_end_ms(key.start_ms, window_s)) for key in keys],
            "currencies": [key.currency for key in keys],
            "orders": [windows[key].orders for key in keys],
            "revenues": [windows[key].revenue for key in keys],
            "lates": [windows[key].late for key in keys],
        },
    )


async def know_partitions(
    connection: AsyncConnection, group_id: str, topic: str, partitions: Sequence[int]
) -> None:
    """Make these partitions count in the group's watermark (unknown until they say more)."""
    if partitions:
        await connection.execute(
            _KNOWN_PARTITIONS,
            {"group_id": group_id, "topic": topic, "partitions": sorted(partitions)},
        )


async def move_watermarks(
    connection: AsyncConnection, group_id: str, topic: str, progress: Mapping[int, int]
) -> None:
    """Move each partition's latest append time forward to `progress` (ms), never back."""
    if not progress:
        return
    partitions = sorted(progress)
    await connection.execute(
        _MOVE_WATERMARKS,
        {
            "group_id": group_id,
            "topic": topic,
            "partitions": partitions,
            "untils": [instant(progress[p]) for p in partitions],
        },
    )


async def read_watermark(
    connection: AsyncConnection, group_id: str, topic: str, grace_s: float
) -> int | None:
    """The group's watermark (epoch ms; see app.analytics.windows), None while unknown."""
    result = await connection.execute(_READ_WATERMARKS, {"group_id": group_id, "topic": topic})
    untils = [row.appended_until for row in result]
    return watermark_ms(
        (None if until is None else round(until.timestamp() * 1000) for until in untils), grace_s
    )


@dataclass(frozen=True)
class ClosedWindow:
    window_start: datetime
    window_end: datetime
    currency: str
    orders: int
    revenue: Decimal
    late_orders: int


@dataclass(frozen=True)
class ClosedWindows:
    closed_through: datetime | None  # every window ending by then is closed; None: none yet
    windows: list[ClosedWindow]
    next_start: datetime | None = None  # where the next page begins; None: this is the last


async def closed_windows(
    connection: AsyncConnection,
    *,
    group_id: str,
    topic: str,
    grace_s: float,
    start: datetime,
    end: datetime,
    currency: str | None,
    limit: int,
) -> ClosedWindows:
    """The group's closed windows starting in [start, end), in (start, currency) order: those of
    the first `limit` window starts (each with all its currencies)."""
    watermark = await read_watermark(connection, group_id, topic, grace_s)
    if watermark is None:
        return ClosedWindows(None, [])
    closed_through = instant(watermark)
    result = await connection.execute(
        _CLOSED_WINDOWS,
        {
            "group_id": group_id,
            "start": start,
            "end": end,
            "closed_through": closed_through,
            "currency": currency,
            "limit": limit,
        },
    )
    windows = [ClosedWindow(**row) for row in result.mappings()]
    starts = sorted({window.window_start for window in windows})
    if len(starts) <= limit:
        return ClosedWindows(closed_through, windows)
    next_start = starts[limit]
    page = [window for window in windows if window.window_start < next_start]
    return ClosedWindows(closed_through, page, next_start)


async def forget_group(connection: AsyncConnection, group_id: str) -> None:
    """Delete a group's windows and watermarks (the lab's runs, once measured)."""
    await connection.execute(_FORGET_WINDOWS, {"group_id": group_id})
    await connection.execute(_FORGET_WATERMARKS, {"group_id": group_id})
