"""Pure rules of the offsets lab: the commit strategies, where the kill lands, what it cost."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

CommitStrategy = Literal[
    "auto_commit",
    "auto_commit_ahead",
    "manual_after_batch",
    "manual_per_record",
    "manual_before_batch",
]
STRATEGIES: tuple[CommitStrategy, ...] = (
    "auto_commit",
    "auto_commit_ahead",
    "manual_after_batch",
    "manual_per_record",
    "manual_before_batch",
)
AUTO: frozenset[CommitStrategy] = frozenset({"auto_commit", "auto_commit_ahead"})
# The case each row's kill point (kill_here) is chosen to show.
KILL_CASE: dict[CommitStrategy, str] = {
    "auto_commit": "the timer's last commit came before the batch, half an interval ago",
    "auto_commit_ahead": "the timer committed the batch while it was being processed",
    "manual_after_batch": "mid-batch, the batch not committed yet",
    "manual_per_record": "mid-batch, each processed record committed",
    "manual_before_batch": "mid-batch, the whole batch committed before processing",
}


def mid_batch(index: int, size: int) -> bool:
    """Record `index` (0-based) is done and at least one record of the batch is still to do."""
    return index + 1 < size


def kill_here(
    strategy: CommitStrategy,
    committed: int | None,
    batch_start: int,
    next_offset: int,
    since_commit_s: float | None,
    interval_s: float,
) -> bool:
    """Whether a mid-batch kill at this point shows the case the strategy's row is about.

    aiokafka's auto-commit runs on a timer in the background and commits the position the
    application has been handed (everything getmany returned), not what it has processed. So a
    kill mid-batch meets one of two cases, told apart by the committed offset: `auto_commit`, the
    timer's last commit came before this batch was fetched, here half an interval ago (`since_
    commit_s`, the average crash): what was processed since is redelivered; `auto_commit_ahead`,
    the timer committed this batch while it was being processed: the rest of the batch is lost.
    The manual strategies' commits are the application's own: any mid-batch point shows them.
    """
    if strategy == "auto_commit":
        return (
            committed is not None
            and committed <= batch_start
            and since_commit_s is not None
            and since_commit_s >= interval_s / 2
        )
    if strategy == "auto_commit_ahead":
        return committed is not None and committed > next_offset
    return True


@dataclass(frozen=True)
class CommitCount:
    records: int  # in the topic
    processed: int  # times a record was processed, redeliveries included
    redelivered: int  # processings beyond the first of a record
    lost: int  # records never processed


def count_processed(processed_offsets: Iterable[int], records: int) -> CommitCount:
    """What the processed offsets (one per processing, in any order) say about offsets 0..n-1."""
    times = Counter(processed_offsets)
    return CommitCount(
        records=records,
        processed=sum(times.values()),
        redelivered=sum(count - 1 for count in times.values()),
        lost=sum(1 for offset in range(records) if offset not in times),
    )
