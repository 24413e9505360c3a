"""The lag status rules (Burrow's, on stored positions), without services."""

from __future__ import annotations

import math

import pytest

from app.lag_status import PartitionHistory, Sample, Status, evaluate

BOUND = 30.0


def status(**overrides: object) -> Status:
    arguments: dict[str, object] = {
        "lag": 5,
        "now": 100.0,
        "stall_after_s": BOUND,
        "moved_at": 100.0,
        "lagging_since": 100.0,
        "owner_idle_s": None,
        "lag_growing": False,
    }
    arguments.update(overrides)
    return evaluate(**arguments)  # type: ignore[arg-type]


def history(*samples: Sample, window: int = 3) -> PartitionHistory:
    kept = PartitionHistory(window)
    for sample in samples:
        kept.add(sample)
    return kept


# --- evaluate ------------------------------------------------------------------------------------


def test_no_lag_is_ok_even_when_everything_else_looks_bad() -> None:
    assert status(lag=0, moved_at=0.0, lagging_since=0.0, owner_idle_s=math.inf) is Status.OK
    assert status(lag=0, lag_growing=True) is Status.OK


def test_lag_with_a_position_still_for_the_bound_is_stalled() -> None:
    assert status(moved_at=70.0, lagging_since=60.0) is Status.STALLED  # exactly the bound
    assert status(moved_at=70.1, lagging_since=60.0) is Status.OK  # just under it


def test_stuck_time_counts_from_when_the_lag_began_not_from_an_old_move() -> None:
    # Quiet for an hour, then one record: the position is old but the lag is milliseconds old.
    assert status(lag=1, now=3600.0, moved_at=0.0, lagging_since=3599.99) is Status.OK
    assert status(lag=1, now=3600.0, moved_at=0.0, lagging_since=3570.0) is Status.STALLED


def test_unknown_lag_start_counts_from_the_last_move() -> None:
    assert status(moved_at=70.0, lagging_since=None) is Status.STALLED
    assert status(moved_at=71.0, lagging_since=None) is Status.OK


def test_an_owner_idle_everywhere_for_the_bound_is_stopped() -> None:
    stuck = {"moved_at": 0.0, "lagging_since": 0.0}
    assert status(**stuck, owner_idle_s=BOUND) is Status.STOPPED
    assert status(**stuck, owner_idle_s=math.inf) is Status.STOPPED  # nobody owns the partition
    assert status(**stuck, owner_idle_s=BOUND - 1) is Status.STALLED  # it stores elsewhere
    assert status(**stuck, owner_idle_s=None) is Status.STALLED  # unknown owner: no claim


def test_an_idle_owner_alone_is_not_a_stall() -> None:
    assert status(owner_idle_s=math.inf) is Status.OK


def test_growing_lag_with_a_moving_position_is_a_warning() -> None:
    assert status(lag_growing=True) is Status.WARNING


def test_a_stall_outranks_a_growing_lag() -> None:
    assert status(moved_at=0.0, lagging_since=0.0, lag_growing=True) is Status.STALLED


# --- PartitionHistory ----------------------------------------------------------------------------


def test_a_window_under_two_samples_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        PartitionHistory(1)


def test_status_without_a_sample_is_refused() -> None:
    with pytest.raises(ValueError, match="no sample"):
        PartitionHistory(3).status(now=0.0, stall_after_s=BOUND)


def test_sample_lag_never_goes_negative() -> None:
    assert Sample(at=0.0, log_end=10, position=4).lag == 6
    assert Sample(at=0.0, log_end=10, position=12).lag == 0


def test_moved_at_is_the_first_sample_showing_the_position() -> None:
    kept = history(Sample(0.0, 10, 4), Sample(5.0, 12, 4), Sample(10.0, 12, 8))
    assert kept.moved_at == 10.0
    kept.add(Sample(15.0, 12, 8))
    assert kept.moved_at == 10.0


def test_moved_at_is_seeded_from_what_postgresql_says() -> None:
    kept = history(Sample(100.0, 10, 4, position_idle_s=40.0))
    assert kept.moved_at == 60.0
    # The lag was first seen now: for all we know the record came a moment ago.
    assert kept.status(now=100.0, stall_after_s=BOUND) is Status.OK
    dated = history(Sample(100.0, 10, 4, position_idle_s=40.0, lag_began_at=65.0))
    assert dated.status(now=100.0, stall_after_s=BOUND) is Status.STALLED


def test_a_move_is_never_dated_before_the_sample_that_showed_the_old_position() -> None:
    # Another clock (PostgreSQL's) says the move was 9 s ago; we saw the old position 5 s ago.
    kept = history(Sample(0.0, 10, 4), Sample(5.0, 10, 6), Sample(10.0, 10, 8, position_idle_s=9.0))
    assert kept.moved_at == 5.0


def test_an_infinite_or_negative_idle_falls_back_to_the_sample_time() -> None:
    assert history(Sample(10.0, 10, 4, position_idle_s=math.inf)).moved_at == 10.0
    assert history(Sample(10.0, 10, 4, position_idle_s=-3.0)).moved_at == 10.0


def test_lagging_since_is_the_start_of_the_unbroken_run() -> None:
    kept = history(Sample(0.0, 4, 4))
    assert kept.lagging_since is None
    kept.add(Sample(5.0, 6, 4))
    kept.add(Sample(10.0, 8, 5))
    assert kept.lagging_since == 5.0
    kept.add(Sample(15.0, 8, 8))
    assert kept.lagging_since is None
    kept.add(Sample(20.0, 9, 8))
    assert kept.lagging_since == 20.0


def test_lag_start_hint_dates_a_lag_the_history_did_not_see_begin() -> None:
    kept = history(Sample(100.0, 10, 4, position_idle_s=3600.0, lag_began_at=95.0))
    assert kept.lagging_since == 95.0
    assert kept.status(now=100.0, stall_after_s=BOUND) is Status.OK
    assert kept.status(now=125.0, stall_after_s=BOUND) is Status.STALLED


def test_lag_start_hint_never_precedes_a_sample_that_showed_no_lag() -> None:
    kept = history(Sample(0.0, 4, 4), Sample(5.0, 6, 4, lag_began_at=-10.0))
    assert kept.lagging_since == 0.0  # the broker's clock said -10, but we saw no lag at 0
    kept = history(Sample(0.0, 4, 4), Sample(5.0, 6, 4, lag_began_at=3.0))
    assert kept.lagging_since == 3.0
    kept = history(Sample(0.0, 4, 4), Sample(5.0, 6, 4, lag_began_at=9.0))
    assert kept.lagging_since == 5.0  # never after the sample that shows the lag


def test_quiet_partition_then_one_record_is_not_stalled() -> None:
    kept = history(Sample(0.0, 50, 50), Sample(3600.0, 50, 50), Sample(3600.5, 51, 50))
    assert kept.moved_at == 0.0
    assert kept.status(now=3600.5, stall_after_s=BOUND) is Status.OK
    # ... until that record itself has waited the bound.
    kept.add(Sample(3630.5, 51, 50))
    assert kept.status(now=3630.5, stall_after_s=BOUND) is Status.STALLED


def test_quiet_partition_seeded_from_postgresql_then_one_record_is_not_stalled() -> None:
    kept = history(Sample(3600.0, 50, 50, position_idle_s=3600.0))
    kept.add(Sample(3601.0, 51, 50, position_idle_s=3601.0))
    assert kept.status(now=3601.0, stall_after_s=BOUND) is Status.OK


def test_lag_growing_needs_a_full_window() -> None:
    kept = history(Sample(0.0, 10, 5), Sample(1.0, 12, 6))
    assert not kept.lag_growing  # 2 of 3 samples
    assert kept.status(now=1.0, stall_after_s=BOUND) is Status.OK
    kept.add(Sample(2.0, 14, 7))
    assert kept.lag_growing
    assert kept.status(now=2.0, stall_after_s=BOUND) is Status.WARNING


def test_lag_growing_needs_a_strict_increase_at_every_step() -> None:
    assert not history(Sample(0.0, 10, 5), Sample(1.0, 12, 7), Sample(2.0, 14, 8)).lag_growing
    assert not history(Sample(0.0, 10, 5), Sample(1.0, 12, 6), Sample(2.0, 13, 8)).lag_growing


def test_the_window_slides() -> None:
    kept = history(Sample(0.0, 10, 5), Sample(1.0, 10, 6), Sample(2.0, 14, 8))
    assert not kept.lag_growing
    kept.add(Sample(3.0, 18, 9))  # lags of the window: 4, 6, 9
    assert kept.lag_growing


def test_rates_over_the_window() -> None:
    kept = history(Sample(0.0, 100, 50))
    assert kept.processing_rate is None
    assert kept.produce_rate is None
    kept.add(Sample(2.0, 140, 60))
    kept.add(Sample(4.0, 200, 90))
    assert kept.processing_rate == pytest.approx(10.0)
    assert kept.produce_rate == pytest.approx(25.0)
    kept.add(Sample(6.0, 200, 90))  # the first sample leaves the window
    assert kept.processing_rate == pytest.approx(30 / 4)
    assert kept.produce_rate == pytest.approx(60 / 4)


def test_samples_at_one_instant_give_no_rate() -> None:
    kept = history(Sample(1.0, 100, 50), Sample(1.0, 110, 60))
    assert kept.processing_rate is None


def test_a_position_reset_restarts_the_window() -> None:
    kept = history(Sample(0.0, 100, 90), Sample(1.0, 110, 100), Sample(2.0, 120, 110))
    kept.add(Sample(3.0, 120, 0))  # `orders offsets reset --to-earliest`
    assert kept.latest == Sample(3.0, 120, 0)
    assert kept.processing_rate is None  # not a negative rate
    assert kept.moved_at == 3.0
    assert kept.lagging_since == 3.0
    assert not kept.lag_growing
    kept.add(Sample(5.0, 120, 40))
    assert kept.processing_rate == pytest.approx(20.0)
    assert kept.status(now=5.0, stall_after_s=BOUND) is Status.OK


def test_a_log_end_going_back_restarts_the_window() -> None:
    kept = history(Sample(0.0, 100, 90), Sample(1.0, 110, 100))
    kept.add(Sample(2.0, 5, 0))  # topic deleted and recreated
    assert kept.produce_rate is None
    kept.add(Sample(3.0, 7, 0))
    assert kept.produce_rate == pytest.approx(2.0)
    assert kept.lagging_since == 2.0


def test_a_clock_going_back_restarts_the_window() -> None:
    kept = history(Sample(10.0, 100, 90), Sample(5.0, 101, 90))
    assert kept.processing_rate is None
    assert kept.lagging_since == 5.0


def test_owner_idle_turns_a_stall_into_stopped() -> None:
    kept = history(Sample(0.0, 10, 4), Sample(40.0, 10, 4))
    assert kept.status(now=40.0, stall_after_s=BOUND) is Status.STALLED
    assert kept.status(now=40.0, stall_after_s=BOUND, owner_idle_s=2.0) is Status.STALLED
    assert kept.status(now=40.0, stall_after_s=BOUND, owner_idle_s=45.0) is Status.STOPPED
    assert kept.status(now=40.0, stall_after_s=BOUND, owner_idle_s=math.inf) is Status.STOPPED


def test_status_values_are_their_names() -> None:
    assert [str(s) for s in Status] == ["OK", "WARNING", "STALLED", "STOPPED"]
