"""What a record sent back to the orders topic carries: its own headers, its first append time,
and where it was replayed from. Pure rules, shared by both replays (a dead letter, a quarantined
record), so the worker judges either by its first journey (app.worker reads these headers).

A record's first append time is its own timestamp, unless it was itself a replay: then it is the
one its headers carry (the worker's rule too). A dead letter's headers are the original record's,
followed by the provenance the worker appended, each name once; the last occurrence of each of
those names is the provenance, anything before it the original's.
"""

from __future__ import annotations

from collections.abc import Sequence

from app import dlq_headers as dlq

Header = tuple[str, bytes | None]

# What the worker appends to a dead letter (app.worker.dlq_publisher.dead_letter_headers).
PROVENANCE = (
    dlq.H_TOPIC,
    dlq.H_PARTITION,
    dlq.H_OFFSET,
    dlq.H_TIMESTAMP,
    dlq.H_TIMESTAMP_TYPE,
    dlq.H_ERROR_CLASS,
    dlq.H_ERROR_MESSAGE,
    dlq.H_WORKER,
    dlq.H_FAILED_AT,
)
NO_TIMESTAMP_TYPE = 0  # Kafka's CreateTime, what the worker assumes when the type is missing


def split_dead_letter(headers: Sequence[Header]) -> tuple[list[Header], dict[str, bytes | None]]:
    """A dead letter's headers: the original record's, and the provenance the worker added."""
    last = {name: index for index, (name, _) in enumerate(headers) if name in PROVENANCE}
    original = [h for index, h in enumerate(headers) if index not in last.values()]
    return original, {name: headers[index][1] for name, index in last.items()}


def first_append(headers: Sequence[Header], timestamp: int, timestamp_type: int) -> tuple[int, int]:
    """When the broker first took a record with these headers and this timestamp, and by whose
    clock (the same rule as the worker's)."""
    own = dict(headers)
    if dlq.H_REPLAYED_FROM in own and own.get(dlq.H_TIMESTAMP):
        kind = own.get(dlq.H_TIMESTAMP_TYPE)
        return _int(own[dlq.H_TIMESTAMP]), _int(kind) if kind else NO_TIMESTAMP_TYPE
    return timestamp, timestamp_type


def dead_letter_first_append(headers: Sequence[Header]) -> tuple[int, int] | None:
    """A dead letter's first append time, or None if its provenance has no timestamp."""
    original, provenance = split_dead_letter(headers)
    timestamp, kind = provenance.get(dlq.H_TIMESTAMP), provenance.get(dlq.H_TIMESTAMP_TYPE)
    if not timestamp:
        return None
    return first_append(original, _int(timestamp), _int(kind) if kind else NO_TIMESTAMP_TYPE)


def replay_headers(
    original: Sequence[Header], appended: tuple[int, int], replayed_from: str
) -> list[Header]:
    """The original record's own headers (every `dlq.*` one dropped: it is restated), then its
    first append time and where the replay came from."""
    timestamp, timestamp_type = appended
    return [
        *(h for h in original if not h[0].startswith("dlq.")),
        (dlq.H_TIMESTAMP, str(timestamp).encode()),
        (dlq.H_TIMESTAMP_TYPE, str(timestamp_type).encode()),
        (dlq.H_REPLAYED_FROM, replayed_from.encode()),
    ]


def _int(raw: bytes | None) -> int:
    try:
        return int(raw or b"")
    except ValueError:
        msg = f"header value {raw!r} is not an integer"
        raise ValueError(msg) from None
