"""The lab's tally: what a mode lost, doubled and reordered, from what was sent and received.

Pure: it gets the acknowledged event ids (what the producer was told the broker has; with
acks=0 there is no acknowledgement, so every send counts) and the copies a mode's reader
received, in arrival order, and counts:
- lost: acknowledged events never received (an event the producer was told failed is not
  lost: the application knows, and may send it again);
- duplicated: copies received beyond the first of each event;
- out of order: keys whose events, each taken at its FIRST arrival, are not in `seq` order (a
  redelivered copy arriving late is a duplicate, not a reordering; a lost event is a gap, not
  a reordering).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from itertools import pairwise


@dataclass(frozen=True)
class Received:
    """One copy of an event, as a mode's reader got it (rows by id, records by arrival)."""

    event_id: int
    key: str
    seq: int
    sent_at: float  # the producer's clock, seconds since the epoch
    stored_at: float  # when it was stored (PostgreSQL) or became visible (read_committed)
    writer: str  # which member incarnation wrote it, and in which of its batches


@dataclass(frozen=True)
class Tally:
    sent: int
    acknowledged: int
    lost: int
    duplicated: int
    out_of_order: int


def tally(sent: int, acknowledged: Collection[int], received: Sequence[Received]) -> Tally:
    copies = Counter(copy.event_id for copy in received)
    first_seqs: dict[str, list[int]] = {}
    seen: set[int] = set()
    for copy in received:
        if copy.event_id not in seen:
            seen.add(copy.event_id)
            first_seqs.setdefault(copy.key, []).append(copy.seq)
    return Tally(
        sent=sent,
        acknowledged=len(acknowledged),
        lost=sum(1 for event_id in acknowledged if event_id not in copies),
        duplicated=sum(count - 1 for count in copies.values()),
        out_of_order=sum(
            1 for seqs in first_seqs.values() if any(b < a for a, b in pairwise(seqs))
        ),
    )


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """The nearest-rank percentile (`fraction` 0.99: the value 99% of the others do not
    exceed); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]
