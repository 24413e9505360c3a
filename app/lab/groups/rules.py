"""Pure rules of the groups lab: how a pause, a gap and a fair share are judged from a log."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from itertools import pairwise

from app.lab.groups.member import Event


def longest_gap(arrivals: Iterable[float], start: float, end: float) -> float:
    """The longest stretch of [start, end] in which nothing arrived, in seconds."""
    inside = sorted(at for at in arrivals if start < at < end)
    return max(later - earlier for earlier, later in pairwise([start, *inside, end]))


def pause_after(revoked: Sequence[Event], assigned: Sequence[Event], since: float) -> float | None:
    """Seconds from the first revocation at or after `since` to the assignment that ended it.

    Between the two the member owns no partition: with the eager protocol that is the whole
    group's stop, whatever partitions end up moving."""
    revocation = next((event for event in revoked if event.at >= since), None)
    if revocation is None:
        return None
    assignment = next((event for event in assigned if event.at >= revocation.at), None)
    return None if assignment is None else assignment.at - revocation.at


def rebalances_between(revoked: Sequence[Event], since: float, until: float) -> list[Event]:
    """The revocations a member went through in [since, until]: one per rebalance (eager)."""
    return [event for event in revoked if since <= event.at <= until]


def shares_cleanly(assignments: Iterable[frozenset[int]], partitions: int) -> bool:
    """Each partition is owned by exactly one member: disjoint, and covering every partition."""
    owned = [partition for assignment in assignments for partition in assignment]
    return sorted(owned) == list(range(partitions))


def read_each_once(reads: Iterable[tuple[int, int]], expected: int) -> bool:
    """The group read `expected` records in total, none twice (reads are (partition, offset))."""
    everything = list(reads)
    return len(everything) == expected and len(set(everything)) == expected


def median_and_max(values: Sequence[float]) -> tuple[float, float]:
    return statistics.median(values), max(values)


def listed(partitions: Iterable[int]) -> str:
    """Partitions as a table shows them: "0, 2, 4"."""
    return ", ".join(map(str, sorted(partitions))) or "-"
