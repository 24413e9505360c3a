"""The offsets lab's pure rules: where a kill lands, and what the processed offsets say."""

from __future__ import annotations

from app.lab.offsets import crash_after
from app.lab.offsets.rules import STRATEGIES, count_processed, kill_here, mid_batch


def test_mid_batch_means_done_with_one_and_one_left() -> None:
    assert mid_batch(0, 50)  # the first record done, 49 to go
    assert mid_batch(48, 50)
    assert not mid_batch(49, 50)  # the last record: the batch is complete
    assert not mid_batch(0, 1)


def test_the_default_kill_lands_in_the_middle_of_a_batch() -> None:
    assert crash_after(2000, 50) == 825  # record 25 of the batch 800..849
    assert crash_after(600, 50) == 225
    assert crash_after(1000, 40) % 40 == 20


def test_manual_strategies_die_at_any_mid_batch_point() -> None:
    for strategy in ("manual_after_batch", "manual_per_record", "manual_before_batch"):
        assert kill_here(strategy, None, 100, 110, None, 1.0)


def test_auto_commit_dies_half_an_interval_after_a_commit_that_predates_the_batch() -> None:
    # Committed 100, the batch began at 150: what was processed since 100 will come again.
    assert kill_here("auto_commit", 100, 150, 160, since_commit_s=0.6, interval_s=1.0)
    assert not kill_here("auto_commit", 100, 150, 160, since_commit_s=0.2, interval_s=1.0)
    assert not kill_here("auto_commit", 100, 150, 160, since_commit_s=None, interval_s=1.0)
    assert not kill_here("auto_commit", None, 150, 160, since_commit_s=0.6, interval_s=1.0)
    # The timer already committed this batch's end (200): that is the other row's case.
    assert not kill_here("auto_commit", 200, 150, 160, since_commit_s=0.6, interval_s=1.0)


def test_auto_commit_ahead_dies_once_the_timer_committed_past_the_record() -> None:
    assert kill_here("auto_commit_ahead", 200, 150, 160, None, 1.0)
    assert not kill_here("auto_commit_ahead", 160, 150, 160, None, 1.0)  # exactly caught up
    assert not kill_here("auto_commit_ahead", 100, 150, 160, None, 1.0)
    assert not kill_here("auto_commit_ahead", None, 150, 160, None, 1.0)


def test_the_tally_counts_second_processings_and_the_never_processed() -> None:
    processed = [0, 1, 2, 3, 2, 3, 5]  # 2 and 3 redelivered after a crash, 4 skipped
    counted = count_processed(processed, 6)
    assert (counted.records, counted.processed) == (6, 7)
    assert (counted.redelivered, counted.lost) == (2, 1)
    assert count_processed([], 3).lost == 3
    assert count_processed([0, 0, 0], 1).redelivered == 2


def test_every_strategy_of_the_brief_is_run() -> None:
    assert set(STRATEGIES) >= {
        "auto_commit",
        "manual_after_batch",
        "manual_per_record",
        "manual_before_batch",
    }
