"""The pure rules of `orders topics grow`: which API processes it waits for and how long at most,
when a group has caught up, how many customers move to another partition, and whether a failed
CreatePartitions surely added nothing."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.errors import (
    InvalidPartitionsError,
    KafkaConnectionError,
    RequestTimedOutError,
    TopicAuthorizationFailedError,
)

from app.batching import partition_for
from app.db.intake import SeenMember
from app.operations import growth_rules as rules
from app.operations.kafka_clients import KafkaCommandError


def member(
    name: str = "api:1:aa",
    *,
    generation: int = 7,
    state: str = "closed",
    closes_within_s: float = 42.0,
    age_s: float = 0.1,
) -> SeenMember:
    return SeenMember(name, generation, state, closes_within_s, age_s)


def test_a_member_closed_at_the_pause_or_later_has_acknowledged() -> None:
    assert rules.acknowledged(member(generation=7, state="closed"), 7)
    assert rules.acknowledged(member(generation=8, state="closed"), 7)


@pytest.mark.parametrize(
    ("generation", "state"),
    [
        (6, "closed"),  # closed, but at an earlier pause: it has not read this one yet
        (7, "closing"),  # read it, orders it let in still being answered
        (7, "open"),  # a state an older row may still hold
        (6, "open"),  # has not read the pause yet
    ],
)
def test_anything_else_is_waited_for_while_the_member_may_admit(
    generation: int, state: str
) -> None:
    seen = member(generation=generation, state=state)
    assert rules.pending_members([seen], 7) == [seen]


def test_a_member_silent_for_longer_than_its_own_bound_is_not_waited_for() -> None:
    """It closed itself once its state went unread for its stale bound, and answered what it let
    in within its answer bound: both are in closes_within_s, from its last heartbeat."""
    bound = 42.0
    alive = member(state="open", generation=6, closes_within_s=bound, age_s=bound)
    gone = member(
        state="open", generation=6, closes_within_s=bound, age_s=bound + rules.MARGIN_S + 0.01
    )
    assert rules.may_admit(alive)
    assert not rules.may_admit(gone)
    assert rules.pending_members([alive, gone], 7) == [alive]


def test_the_wait_bound_is_the_last_member_bound_to_pass() -> None:
    members = [
        member("a", closes_within_s=40.0, age_s=10.0),  # 32 s more at most
        member("b", closes_within_s=40.0, age_s=1.0),  # 41 s more
        member("c", closes_within_s=10.0, age_s=50.0),  # long past
    ]
    assert rules.wait_bound_s(members) == pytest.approx(40.0 + rules.MARGIN_S - 1.0)
    assert rules.wait_bound_s([]) == 0.0


def test_after_resuming_only_live_members_open_at_the_new_generation_count_as_reopened() -> None:
    opened = member("a", generation=9, state="open")
    reopening = member("b", generation=9, state="closed")  # its producer not at N yet
    behind = member("c", generation=8, state="closed")
    dead = member("d", generation=8, state="closed", age_s=1000.0)
    assert rules.reopened([opened, reopening, behind, dead], 9) == ([opened], [reopening, behind])


def test_records_behind_counts_what_is_left_per_partition() -> None:
    ends = {0: 10, 1: 5, 2: 0, 3: 7}
    positions = {0: 10, 1: 3, 3: 9}
    # 2 is empty and never read (nothing to do); 3 past its end (read before the ends): done.
    assert rules.records_behind(ends, positions) == {1: 2}
    assert rules.records_behind({0: 4}, {}) == {0: 4}  # never read: all of it


@pytest.mark.parametrize(
    ("old", "new", "moved"),
    [(6, 12, 0.5), (4, 8, 0.5), (3, 9, 2 / 3), (1, 2, 0.5), (6, 7, 1 - 6 / 42), (6, 6, 0.0)],
)
def test_the_expected_share_of_moved_keys(old: int, new: int, moved: float) -> None:
    assert rules.moved_fraction(old, new) == pytest.approx(moved)


def test_customers_moved_uses_the_apis_own_partitioner() -> None:
    customers = [f"customer-{n}" for n in range(2000)]
    moved = rules.customers_moved(customers, 6, 12)
    by_hand = sum(partition_for(c.encode(), 6) != partition_for(c.encode(), 12) for c in customers)
    assert moved == by_hand
    # murmur2 spreads keys evenly: close to the half the arithmetic says, never all or none.
    assert 0.45 < moved / len(customers) < 0.55
    assert rules.customers_moved(customers, 6, 6) == 0


def test_the_expected_pause_is_polls_plus_the_lag_at_the_measured_rate() -> None:
    assert rules.expected_pause_s(0, None, 0.25) == pytest.approx(1.0)
    assert rules.expected_pause_s(2000, 4000.0, 0.25) == pytest.approx(1.5)
    assert rules.expected_pause_s(2000, None, 0.25) is None  # lag, and no rate to drain it by
    assert rules.expected_pause_s(2000, 0.0, 0.25) is None


def test_partition_ranges_name_the_new_partitions_in_one_line() -> None:
    assert rules.partition_ranges(list(range(6, 12))) == "6-11"
    assert rules.partition_ranges([5]) == "5"
    assert rules.partition_ranges([]) == ""


def _raised_by_bounded(cause: Exception | None) -> KafkaCommandError:
    """As kafka_clients.bounded raises it: `raise ... from cause` sets __cause__."""
    exc = KafkaCommandError("adding partitions: ...")
    exc.__cause__ = cause
    return exc


def test_only_a_clear_refusal_of_create_partitions_means_nothing_was_added() -> None:
    assert rules.refused_by_the_broker(_raised_by_bounded(InvalidPartitionsError("12 < 6")))
    assert rules.refused_by_the_broker(_raised_by_bounded(TopicAuthorizationFailedError()))
    # The controller may still add them: unknown, intake stays paused.
    assert not rules.refused_by_the_broker(_raised_by_bounded(RequestTimedOutError()))
    assert not rules.refused_by_the_broker(_raised_by_bounded(KafkaConnectionError()))
    assert not rules.refused_by_the_broker(_raised_by_bounded(None))  # no answer in time
    assert not rules.refused_by_the_broker(asyncio.CancelledError())
