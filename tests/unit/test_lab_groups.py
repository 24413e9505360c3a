"""The groups lab's pure rules: pauses, gaps and fair shares judged from a member's log."""

from __future__ import annotations

import pytest

from app.lab.groups.child import fields
from app.lab.groups.member import Event
from app.lab.groups.rules import (
    listed,
    longest_gap,
    median_and_max,
    pause_after,
    read_each_once,
    rebalances_between,
    shares_cleanly,
)


def event(at: float, *partitions: int) -> Event:
    return Event(at, frozenset(partitions))


def test_the_longest_gap_counts_the_window_edges() -> None:
    assert longest_gap([1.0, 1.1, 3.0], start=0.5, end=3.2) == pytest.approx(1.9)
    assert longest_gap([], start=1.0, end=4.0) == pytest.approx(3.0)
    assert longest_gap([0.1, 9.0], start=1.0, end=2.0) == pytest.approx(1.0)  # outside: ignored
    assert longest_gap([1.0, 1.5], start=0.0, end=1.6) == pytest.approx(1.0)  # start -> 1.0


def test_the_pause_runs_from_the_revocation_to_the_assignment_that_follows_it() -> None:
    revoked = [event(0.0), event(5.0, 0, 1, 2, 3, 4, 5)]  # the first join revokes nothing
    assigned = [event(0.2, 0, 1, 2, 3, 4, 5), event(5.3, 0, 2, 4)]
    assert pause_after(revoked, assigned, since=1.0) == pytest.approx(0.3)
    assert pause_after(revoked, assigned, since=6.0) is None  # no revocation since
    assert pause_after([event(5.0, 1)], [event(0.2, 1)], since=1.0) is None  # not reassigned yet


def test_rebalances_are_the_revocations_inside_the_window() -> None:
    revoked = [event(0.0), event(5.0, 1, 2), event(7.0, 1), event(20.0, 1)]
    assert rebalances_between(revoked, since=1.0, until=10.0) == revoked[1:3]
    assert rebalances_between(revoked, since=8.0, until=10.0) == []


def test_a_clean_share_is_disjoint_and_covering() -> None:
    assert shares_cleanly([frozenset({0, 2, 4}), frozenset({1, 3, 5})], 6)
    assert not shares_cleanly([frozenset({0, 1, 2, 3}), frozenset({3, 4, 5})], 6)  # 3 twice
    assert not shares_cleanly([frozenset({0, 1, 2}), frozenset({3, 4})], 6)  # 5 unowned
    assert not shares_cleanly([frozenset({0, 1, 2, 3, 4, 5}), frozenset()], 5)  # 5 not a partition


def test_a_group_reads_each_record_once() -> None:
    reads = [(0, 0), (0, 1), (1, 0)]
    assert read_each_once(reads, 3)
    assert not read_each_once([*reads, (0, 1)], 3)  # read twice
    assert not read_each_once(reads, 4)  # one missing
    assert not read_each_once([(0, 0), (0, 0), (1, 0)], 3)  # right count, one twice


def test_summaries_and_listing() -> None:
    assert median_and_max([3.0, 1.0, 10.0]) == (3.0, 10.0)
    assert listed({4, 0, 2}) == "0, 2, 4"
    assert listed(()) == "-"


def test_a_childs_line_is_read_as_key_value_words() -> None:
    line = "mid-batch offset=41 batch_start=25 committed=None"
    assert fields(line) == {"offset": "41", "batch_start": "25", "committed": "None"}
    assert fields("assigned partitions=0,2,4") == {"partitions": "0,2,4"}
