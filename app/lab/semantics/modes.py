"""The four delivery modes the lab compares, in the order of the table."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from app.lab.semantics import at_least_once, at_most_once, exactly_once_kafka, exactly_once_postgres
from app.lab.semantics.member_runtime import Member


@dataclass(frozen=True)
class Mode:
    name: str
    source_producer: dict[str, object]  # the producer options of the stream's source
    run: Callable[[Member], Awaitable[None]]  # the consumer loop, in its member process
    results: Literal["postgres", "kafka"]  # where the tally reads what was received
    positions: Literal["kafka", "postgres"]  # where the member's offsets are kept
    zombie: bool  # a zombie member is tried on it (it has a fence to refuse one)


MODES = {
    mode.name: mode
    for mode in (
        Mode(
            "at-most-once",
            at_most_once.SOURCE_PRODUCER,
            at_most_once.run,
            results="postgres",
            positions="kafka",
            zombie=False,
        ),
        Mode(
            "at-least-once",
            at_least_once.SOURCE_PRODUCER,
            at_least_once.run,
            results="postgres",
            positions="kafka",
            zombie=False,
        ),
        Mode(
            "exactly-once-postgres",
            exactly_once_postgres.SOURCE_PRODUCER,
            exactly_once_postgres.run,
            results="postgres",
            positions="postgres",
            zombie=True,
        ),
        Mode(
            "exactly-once-kafka",
            exactly_once_kafka.SOURCE_PRODUCER,
            exactly_once_kafka.run,
            results="kafka",
            positions="kafka",
            zombie=True,
        ),
    )
}
