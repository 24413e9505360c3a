"""The pure rules of `orders topics grow` (app/operations/topic_growth.py): which API processes
it waits for and how long at most, when a group has caught up, how many customers move, and
what the pause should cost. No I/O: unit-tested in tests/unit/test_growth_rules.py."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from aiokafka.errors import KafkaError

from app.batching import partition_for
from app.db.intake import SeenMember

# Slack on a member's own bound: its clock and PostgreSQL's, a poll in flight.
MARGIN_S = 2.0


def acknowledged(member: SeenMember, generation: int) -> bool:
    """The member read the pause (or a later state) and has answered every order it let in."""
    return member.generation >= generation and member.state == "closed"


def may_admit(member: SeenMember, margin_s: float = MARGIN_S) -> bool:
    """Whether the member may still let orders in or answer them, as far as its heartbeats
    tell: it closes itself once it could not read the state for its stale bound, and answers
    what it let in within its answer bound; `closes_within_s` is both, from its last heartbeat."""
    return member.age_s < member.closes_within_s + margin_s


def pending_members(
    members: Iterable[SeenMember], generation: int, margin_s: float = MARGIN_S
) -> list[SeenMember]:
    """The API processes a growth paused at `generation` must still wait for."""
    return [m for m in members if may_admit(m, margin_s) and not acknowledged(m, generation)]


def wait_bound_s(members: Iterable[SeenMember], margin_s: float = MARGIN_S) -> float:
    """The longest the members can keep a pause waiting if none of them ever heartbeats again:
    the last of their bounds to pass (0 with none)."""
    return max((m.closes_within_s + margin_s - m.age_s for m in members), default=0.0)


def reopened(
    members: Iterable[SeenMember], generation: int, margin_s: float = MARGIN_S
) -> tuple[list[SeenMember], list[SeenMember]]:
    """After resuming at `generation`: the live members open at it, and those not yet."""
    live = [m for m in members if may_admit(m, margin_s)]
    opened = [m for m in live if m.generation >= generation and m.state == "open"]
    return opened, [m for m in live if m not in opened]


def records_behind(ends: Mapping[int, int], positions: Mapping[int, int]) -> dict[int, int]:
    """Per partition, the records a group has not processed up to `ends` (none: caught up).
    A partition without a position was never read: behind by its whole log end."""
    return {p: end - positions.get(p, 0) for p, end in ends.items() if positions.get(p, 0) < end}


def moved_fraction(old: int, new: int) -> float:
    """The share of uniformly hashed keys whose partition, hash % count, changes from `old` to
    `new` partitions: counted over one period of both moduli (half of them for new = 2 x old)."""
    period = math.lcm(old, new)
    stay = sum(1 for residue in range(period) if residue % old == residue % new)
    return 1 - stay / period


def customers_moved(customers: Iterable[str], old: int, new: int) -> int:
    """How many of these customers the API would place on another partition (murmur2 over the
    count, app/batching.py), once it produces with `new` partitions."""
    return sum(
        1
        for customer in customers
        if partition_for(customer.encode(), old) != partition_for(customer.encode(), new)
    )


def expected_pause_s(lag: int, store_rate_per_s: float | None, poll_s: float) -> float | None:
    """What the pause should cost: the API processes see the pause and answer what they hold
    (about two polls), the workers store the lag present at the pause, the partitions are added
    and the processes reopen (two polls more). None: lag, and no measured rate to drain it."""
    if lag and not store_rate_per_s:
        return None
    drain = lag / store_rate_per_s if lag and store_rate_per_s else 0.0
    return 4 * poll_s + drain


def partition_ranges(partitions: Sequence[int]) -> str:
    """`6-11` for 6..11, `3` for one, `` for none: new partitions named in one line."""
    if not partitions:
        return ""
    first, last = min(partitions), max(partitions)
    return str(first) if first == last else f"{first}-{last}"


def refused_by_the_broker(exc: BaseException) -> bool:
    """Whether a failed CreatePartitions surely added nothing: the broker answered with an error
    that is not retriable (invalid count, policy, authorization), raised by kafka_clients.bounded
    as its cause. A timeout, a lost connection or a retriable code (REQUEST_TIMED_OUT: the
    controller may still finish) leave it unknown."""
    cause = exc.__cause__
    return isinstance(cause, KafkaError) and not cause.retriable
