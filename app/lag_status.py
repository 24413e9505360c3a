"""The status of a partition's consumption: Burrow's lag rules, applied to the positions stored in
PostgreSQL (the worker's truth), not to Kafka's committed offsets (a mirror one step behind).

Pure: no I/O, no clock. The caller samples the log end and the stored position on one clock of
its own (the worker uses time.monotonic(), `orders lag` time.time()) and asks for a status.

- OK: no lag, or lag that the position keeps up with.
- WARNING: the position moves, but the lag grew at every sample of a full window (falling behind).
- STALLED: lag, and the position has not moved for the stall bound (a record retried forever, a
  paused member), while the member that owns the partition still stores positions elsewhere.
- STOPPED: the same, and the owner has stored nothing on any partition for the bound (or nobody
  owns the partition): the member is gone or wedged as a whole.
"""

from __future__ import annotations

import enum
import itertools
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


class Status(enum.StrEnum):
    OK = "OK"
    WARNING = "WARNING"
    STALLED = "STALLED"
    STOPPED = "STOPPED"


@dataclass(frozen=True)
class Sample:
    at: float  # seconds on one clock the caller keeps (time.monotonic() or time.time())
    log_end: int  # last stable offset of the partition
    position: int  # next offset stored in PostgreSQL
    # How long PostgreSQL says that position had been unchanged (now() - updated_at), if known.
    position_idle_s: float | None = None
    # When the first unprocessed record was appended, on the same clock as `at`, if known (the
    # record's LogAppendTime): dates the start of a lag the history did not see begin.
    lag_began_at: float | None = None

    @property
    def lag(self) -> int:
        return max(0, self.log_end - self.position)


def evaluate(
    *,
    lag: int,
    now: float,
    stall_after_s: float,
    moved_at: float,
    lagging_since: float | None,
    owner_idle_s: float | None = None,
    lag_growing: bool = False,
) -> Status:
    """Burrow's rules in order: no lag; stuck (position still while lagging) for the bound; lag
    growing at every sample; else OK.

    `lagging_since` keeps a quiet partition from looking stuck: a position unchanged for an hour
    because no record came is fine, and the record that just arrived has waited only milliseconds.
    Stuck time counts from the later of the last move and the start of the lag.
    """
    if lag <= 0:
        return Status.OK
    stuck_since = moved_at if lagging_since is None else max(moved_at, lagging_since)
    if now - stuck_since >= stall_after_s:
        if owner_idle_s is not None and owner_idle_s >= stall_after_s:
            return Status.STOPPED
        return Status.STALLED
    if lag_growing:
        return Status.WARNING
    return Status.OK


class PartitionHistory:
    """The last `window` samples of one partition."""

    def __init__(self, window: int) -> None:
        if window < 2:
            msg = f"a lag window needs at least 2 samples, got {window}"
            raise ValueError(msg)
        self._samples: deque[Sample] = deque(maxlen=window)
        self._moved_at: float | None = None
        self._lagging_since: float | None = None

    def add(self, sample: Sample) -> None:
        previous = self.latest
        if previous is not None and (
            sample.position < previous.position
            or sample.log_end < previous.log_end
            or sample.at < previous.at
        ):
            # Positions reset (`orders offsets reset`), a log truncated or recreated, or a clock
            # that went back: nothing before this sample compares with it. Start over rather than
            # report negative rates or a stall dated from another life of the partition.
            self._samples.clear()
            previous = None
        self._samples.append(sample)
        if previous is None or sample.position != previous.position:
            self._moved_at = _moved_at(sample, previous)
        if sample.lag == 0:
            self._lagging_since = None
        elif previous is None or previous.lag == 0:
            self._lagging_since = _lag_began(sample, previous)

    @property
    def latest(self) -> Sample | None:
        return self._samples[-1] if self._samples else None

    @property
    def moved_at(self) -> float | None:
        """`at` of the first sample showing the current position (earlier when PostgreSQL said
        how long the position had been idle)."""
        return self._moved_at

    @property
    def lagging_since(self) -> float | None:
        """When the unbroken run of samples with lag > 0 ending at the latest began; None without
        lag."""
        return self._lagging_since

    @property
    def lag_growing(self) -> bool:
        if len(self._samples) < (self._samples.maxlen or 0):
            return False
        lags = [sample.lag for sample in self._samples]
        return all(before < after for before, after in itertools.pairwise(lags))

    @property
    def processing_rate(self) -> float | None:
        """Stored positions per second over the window."""
        return self._rate(lambda sample: sample.position)

    @property
    def produce_rate(self) -> float | None:
        """Log end per second over the window."""
        return self._rate(lambda sample: sample.log_end)

    def status(self, now: float, stall_after_s: float, owner_idle_s: float | None = None) -> Status:
        latest, moved_at = self.latest, self._moved_at
        if latest is None or moved_at is None:
            msg = "no sample yet: add() one before asking for a status"
            raise ValueError(msg)
        return evaluate(
            lag=latest.lag,
            now=now,
            stall_after_s=stall_after_s,
            moved_at=moved_at,
            lagging_since=self._lagging_since,
            owner_idle_s=owner_idle_s,
            lag_growing=self.lag_growing,
        )

    def _rate(self, value: Callable[[Sample], int]) -> float | None:
        if len(self._samples) < 2:
            return None
        first, last = self._samples[0], self._samples[-1]
        elapsed = last.at - first.at
        if elapsed <= 0:
            return None
        return (value(last) - value(first)) / elapsed


def _moved_at(sample: Sample, previous: Sample | None) -> float:
    if sample.position_idle_s is None or not math.isfinite(sample.position_idle_s):
        return sample.at
    moved = sample.at - max(0.0, sample.position_idle_s)
    # The position moved after the previous sample showed the old one: PostgreSQL's clock and
    # ours differ a little, so never date the move before that sample.
    return moved if previous is None else max(moved, previous.at)


def _lag_began(sample: Sample, previous: Sample | None) -> float:
    if sample.lag_began_at is None:
        return sample.at
    began = min(sample.lag_began_at, sample.at)
    # The previous sample showed no lag: the lag began after it, whatever the broker's clock says.
    return began if previous is None else max(began, previous.at)
