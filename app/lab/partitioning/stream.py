"""The lab's stream of orders: which customer places each one, and its number in that
customer's own sequence (what a consumer checks the order of). Pure: no I/O."""

from __future__ import annotations

import random
from collections import Counter
from typing import NamedTuple

from app.lab.partitioning.partitioners import PRIORITY_PREFIX

SEED = 13  # the same stream on every run, for every strategy


class Placed(NamedTuple):
    """One order: its customer and its place (0, 1, 2 ...) among that customer's orders."""

    customer: str
    seq: int

    def encode(self) -> bytes:
        return f"{self.customer}:{self.seq}".encode()

    @classmethod
    def decode(cls, value: bytes) -> Placed:
        customer, _, seq = value.decode().rpartition(":")
        return cls(customer, int(seq))


def customer_ids(count: int) -> list[str]:
    """`count` customers; one in five (at least one) a priority customer (`vip-` ids)."""
    vips = max(1, count // 5)
    prefix = PRIORITY_PREFIX.decode()
    return [f"{prefix}{i:02d}" for i in range(vips)] + [
        f"cust-{i:02d}" for i in range(count - vips)
    ]


def order_stream(records: int, customers: list[str], seed: int = SEED) -> list[Placed]:
    """`records` orders in the order they are produced, each from a customer drawn at random
    (seeded), numbered per customer."""
    rng = random.Random(seed)
    placed: Counter[str] = Counter()
    stream = []
    for _ in range(records):
        customer = rng.choice(customers)
        stream.append(Placed(customer, placed[customer]))
        placed[customer] += 1
    return stream


def is_priority(customer: str) -> bool:
    return customer.encode().startswith(PRIORITY_PREFIX)
