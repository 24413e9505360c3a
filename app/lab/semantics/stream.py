"""The stream every mode carries: events over a few keys (customers), numbered per key.

An event is `{id, key, seq, sent_at}`: `id` is unique in the stream, `seq` counts 1, 2, 3, ...
per key, `sent_at` is the producer's clock when it handed the event to the client. The same
events (same ids, keys and numbers) go through every mode, so their tallies compare.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class Event:
    id: int
    key: str
    seq: int


@dataclass(frozen=True)
class Sent:
    """An event as a record's value carries it: with the instant it was sent."""

    event: Event
    sent_at: float  # seconds since the epoch, the producer's clock


def make_stream(events: int, keys: int, seed: int = 13) -> list[Event]:
    """`events` events, ids 1..events, each on a key drawn at random (seeded) among `keys`."""
    draw = random.Random(seed)
    numbered: Counter[str] = Counter()
    stream = []
    for event_id in range(1, events + 1):
        key = f"customer-{draw.randrange(keys):03d}"
        numbered[key] += 1
        stream.append(Event(event_id, key, numbered[key]))
    return stream


def encode(event: Event, sent_at: float) -> bytes:
    return json.dumps(
        {"id": event.id, "key": event.key, "seq": event.seq, "sent_at": sent_at}
    ).encode()


def decode(value: bytes) -> Sent:
    fields = json.loads(value)
    return Sent(Event(int(fields["id"]), str(fields["key"]), int(fields["seq"])), fields["sent_at"])
