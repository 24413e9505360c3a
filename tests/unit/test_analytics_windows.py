"""The analytics window arithmetic, without services: tumbling windows by append time, the
watermark over partitions read out of order, the grace's boundaries, late orders."""

from __future__ import annotations

from decimal import Decimal

from app.analytics.windows import (
    Sale,
    WindowKey,
    WindowTally,
    is_closed,
    latest,
    tally,
    watermark_ms,
    window_end_ms,
    window_start_ms,
)

MINUTE = 60_000
WINDOW_S = 60
GRACE_S = 10.0


def eur(append_ms: int, total: str = "1.00") -> Sale:
    return Sale(append_ms, "EUR", Decimal(total))


def test_a_window_holds_its_start_and_not_its_end() -> None:
    assert window_start_ms(0, WINDOW_S) == 0
    assert window_start_ms(MINUTE - 1, WINDOW_S) == 0
    assert window_start_ms(MINUTE, WINDOW_S) == MINUTE
    assert window_start_ms(5 * MINUTE + 1, WINDOW_S) == 5 * MINUTE
    assert window_end_ms(5 * MINUTE, WINDOW_S) == 6 * MINUTE
    assert window_start_ms(7_001, 5) == 5_000  # any width


def test_a_batch_adds_orders_and_exact_decimal_revenue_per_window_and_currency() -> None:
    sales = [
        eur(1_000, "0.10"),
        eur(2_000, "0.20"),
        Sale(3_000, "USD", Decimal("5.00")),
        eur(MINUTE + 5, "19.99"),
    ]
    assert tally(sales, WINDOW_S, watermark=None) == {
        WindowKey(0, "EUR"): WindowTally(2, Decimal("0.30"), 0),
        WindowKey(0, "USD"): WindowTally(1, Decimal("5.00"), 0),
        WindowKey(MINUTE, "EUR"): WindowTally(1, Decimal("19.99"), 0),
    }
    # Decimal, never a float: 0.1 + 0.2 is exactly 0.3.
    assert tally(sales, WINDOW_S, None)[WindowKey(0, "EUR")].revenue == Decimal("0.3")


def test_the_watermark_is_the_slowest_partition_minus_the_grace() -> None:
    # Partition 0 has read up to 2:10, partition 1 only to 1:10: event time has surely reached
    # 1:10 everywhere, 1:00 once the grace is taken off.
    assert watermark_ms([130_000, 70_000], GRACE_S) == 60_000
    assert watermark_ms([70_000, 130_000], GRACE_S) == 60_000  # whichever order
    assert watermark_ms([70_000], 0) == 70_000


def test_no_watermark_until_every_partition_is_known() -> None:
    assert watermark_ms([], GRACE_S) is None
    assert watermark_ms([130_000, None], GRACE_S) is None
    assert not is_closed(0, None)


def test_a_window_closes_exactly_when_the_watermark_reaches_its_end() -> None:
    end = window_end_ms(0, WINDOW_S)
    # The slowest partition at 1:09.999 with a 10 s grace: the watermark is 59.999 s, open.
    assert not is_closed(end, watermark_ms([end + 9_999], GRACE_S))
    # At 1:10.000 it reaches the end: closed.
    assert is_closed(end, watermark_ms([end + 10_000], GRACE_S))
    # Without grace, the first instant past the window closes it.
    assert not is_closed(end, watermark_ms([end - 1], 0))
    assert is_closed(end, watermark_ms([end], 0))


def test_an_order_for_a_closed_window_is_late_but_still_counted() -> None:
    end = window_end_ms(0, WINDOW_S)
    closed = watermark_ms([end + 10_000, end + 30_000], GRACE_S)
    open_by_a_millisecond = watermark_ms([end + 9_999, end + 30_000], GRACE_S)
    sale = eur(59_000, "2.50")  # in the first window
    assert tally([sale], WINDOW_S, closed) == {
        WindowKey(0, "EUR"): WindowTally(1, Decimal("2.50"), 1)
    }
    assert tally([sale], WINDOW_S, open_by_a_millisecond) == {
        WindowKey(0, "EUR"): WindowTally(1, Decimal("2.50"), 0)
    }


def test_orders_read_out_of_order_across_partitions_are_late_only_past_the_grace() -> None:
    # Partition 1 lagged: its orders of 0:30 and 0:58 arrive after partition 0 reached 1:05 and
    # 1:15. Under the slowest partition's watermark nothing is late; had the watermark followed
    # partition 0 alone, 1:15 - 10 s would have closed the first window.
    progress = latest([(0, 65_000), (1, 20_000), (0, 75_000)])
    assert progress == {0: 75_000, 1: 20_000}
    watermark = watermark_ms(progress.values(), GRACE_S)
    assert watermark == 10_000
    lagging = [eur(30_000), eur(58_000)]
    assert tally(lagging, WINDOW_S, watermark)[WindowKey(0, "EUR")].late == 0
    assert tally(lagging, WINDOW_S, watermark_ms([75_000], GRACE_S))[WindowKey(0, "EUR")].late == 2


def test_orders_of_one_batch_never_make_each_other_late() -> None:
    # A batch holding 0:59 and 2:30: the watermark is the one the batch began under.
    windows = tally([eur(150_000), eur(59_000)], WINDOW_S, watermark=None)
    assert windows[WindowKey(0, "EUR")].late == 0
    assert windows[WindowKey(2 * MINUTE, "EUR")].late == 0


def test_latest_keeps_each_partitions_latest_time_whatever_the_order() -> None:
    assert latest([(3, 500), (3, 100), (1, 7), (3, 900), (1, 2)]) == {3: 900, 1: 7}
    assert latest([]) == {}
