"""The fast mode: the course's Scenario 2, where throughput comes first and an approximate answer
is acceptable.

The course (kafka-data-flow-course.md, "Scenario 2: Real-time Analytics"): "High throughput is
priority", "Some message loss acceptable", "Low latency required"; its solution: "Use `acks=1`
for faster acknowledgment", "Larger batch sizes and linger time", "Auto-commit offsets for
simplicity". (The producer's side is the API's, which stays `acks=all` for the worker's sake;
this is the consumer's side.)

The consumer auto-commits: aiokafka's timer commits, every ANALYTICS_AUTO_COMMIT_INTERVAL_MS,
whatever position getmany has reached. Each batch is one upsert that adds its orders to their
windows. The timer and the upserts know nothing of each other, so a crash between them miscounts:
- killed after an upsert, before the timer committed past it: the next member counts those
  orders again (over-counted);
- killed after the timer committed a batch still being counted: it is never counted
  (under-counted).
`orders lab analytics` measures which, and how much, under a kill -9 loop.
"""

from __future__ import annotations

from typing import Any

from aiokafka.structs import TopicPartition

from app.analytics.batch import CountedBatch
from app.analytics.member import AnalyticsMember
from app.settings import Settings

NAME = "fast"


def consumer_options(settings: Settings) -> dict[str, Any]:
    return {
        "enable_auto_commit": True,
        "auto_commit_interval_ms": settings.analytics.auto_commit_interval_ms,
    }


async def position(
    member: AnalyticsMember, partitions: list[TopicPartition]
) -> list[TopicPartition]:
    """Nothing to do: Kafka resumes each partition at the group's committed offset."""
    return []


async def store(member: AnalyticsMember, batch: CountedBatch) -> CountedBatch:
    """One transaction that adds the batch to its windows; no offsets anywhere near it."""
    async with member.transaction() as connection:
        return await member.add_to_windows(connection, batch)
