"""The lab's own partitioners, passed to aiokafka as `partitioner=` (pure: no I/O).

aiokafka calls a partitioner once per `send()` with no partition given, after serializing the
key: `partitioner(key_bytes, all_partitions, available_partitions)`, and sends the record to the
partition it returns. Its own `DefaultPartitioner` (aiokafka/partitioner.py, 0.14) reads:

    if key is None:
        if available:
            return random.choice(available)
        return random.choice(all_partitions)

    idx = murmur2(key)
    idx &= 0x7FFFFFFF
    idx %= len(all_partitions)
    return all_partitions[idx]

so a keyless record goes to a RANDOM partition, one draw per record: not round-robin (as the
course says), and not the Java client's sticky partitioner (one partition per batch) either.
The round-robin partitioner the course describes is therefore written here.
"""

from __future__ import annotations

from app.batching import partition_for

DEDICATED_PARTITION = 0
PRIORITY_PREFIX = b"vip-"


class RoundRobinPartitioner:
    """Each record to the next partition in turn: N records over P partitions, spread <= 1.

    The counter belongs to this instance, so to one producer: an even spread needs no
    coordination between producers (each cycles on its own, and the sum of even spreads is
    even within one record per producer). aiokafka does not tell a partitioner the topic, so
    one producer writing to two topics would share this counter between them (Java's
    RoundRobinPartitioner keeps one per topic): the lab gives each topic its own producer.
    Java's also skipped partitions when it was asked twice for one record (KAFKA-9965, a new
    batch); aiokafka asks once per `send()`, so the count here is exact.
    """

    def __init__(self) -> None:
        self._next = 0

    def __call__(self, key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
        # Only partitions with a leader, like Java's: a keyless record may go anywhere, so it
        # need not wait for a partition that is away. (aiokafka passes them unordered.)
        candidates = sorted(available or all_partitions)
        partition = candidates[self._next % len(candidates)]
        self._next += 1
        return partition


class PriorityPartitioner:
    """The course's "custom logic for partition assignment": priority customers (keys starting
    with `prefix`) all go to a partition of their own, which nobody else shares, so their
    orders never queue behind anyone else's; every other customer is hashed with Kafka's
    murmur2 over the remaining partitions, so each customer still stays on one partition and
    its orders keep their order."""

    def __init__(
        self, prefix: bytes = PRIORITY_PREFIX, dedicated: int = DEDICATED_PARTITION
    ) -> None:
        self.prefix = prefix
        self.dedicated = dedicated

    def __call__(self, key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
        if key is None:
            msg = "the priority partitioner routes by customer: send the customer id as the key"
            raise ValueError(msg)
        if key.startswith(self.prefix):
            return self.dedicated
        # All partitions, available or not (as murmur2 does): a customer must not move to
        # another partition while its own has no leader, or its orders could overtake.
        others = [p for p in sorted(all_partitions) if p != self.dedicated]
        return others[partition_for(key, len(others))]
