"""The commit watermark of a partition processed out of order."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.payments.offset_watermark import OffsetWatermark


def test_the_watermark_is_the_lowest_unfinished_offset() -> None:
    mark = OffsetWatermark()
    assert mark.value is None
    for offset in (10, 11, 12, 14):
        mark.take(offset)
    assert mark.value == 10
    mark.finish(11)
    mark.finish(12)
    assert mark.value == 10  # 10 is still running: committing 13 would skip it after a crash
    mark.finish(10)
    assert mark.value == 14
    mark.finish(14)
    assert mark.value == 15
    assert mark.pending == 0


def test_offsets_must_increase() -> None:
    mark = OffsetWatermark()
    mark.take(5)
    with pytest.raises(ValueError, match="must increase"):
        mark.take(5)


def test_passed_offsets_count_only_once_everything_taken_is_done() -> None:
    mark = OffsetWatermark()
    mark.take(0)
    mark.passed_to(4)
    assert mark.value == 0
    mark.finish(0)
    assert mark.value == 4
    mark.passed_to(2)  # a stale position never moves it back
    assert mark.value == 4


@given(st.permutations(list(range(30))))
def test_any_finishing_order_ends_at_the_end_and_never_passes_an_unfinished(
    order: list[int],
) -> None:
    mark = OffsetWatermark()
    for offset in range(30):
        mark.take(offset)
    unfinished = set(range(30))
    for offset in order:
        mark.finish(offset)
        unfinished.discard(offset)
        value = mark.value
        assert value is not None
        assert value == (min(unfinished) if unfinished else 30)
