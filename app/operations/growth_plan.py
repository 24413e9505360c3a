"""The plan of `orders topics grow --partitions N`: what growing would do, measured now, and
whether it makes sense. Changes nothing; app/operations/topic_growth.py executes it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import for_code
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import intake
from app.db.intake import IntakeState, SeenMember
from app.db.positions import read_positions
from app.errors import OrdersError
from app.operations import growth_rules as rules
from app.operations.growth_groups import GroupSkip, GroupWait, describe_waits, groups_to_wait_for
from app.operations.kafka_clients import admin_client, bounded, offsets_consumer, topic_partitions
from app.settings import Settings

# The plan counts moved customers over at most this many stored customer ids.
CUSTOMER_SAMPLE = 20_000


class GrowthRefusedError(OrdersError):
    """The growth asked for makes no sense here (N not above the count, a count mismatch)."""


@dataclass(frozen=True)
class GrowthPlan:
    topic: str
    current: int
    new: int
    state: IntakeState | None
    customers_read: int
    customers_moved: int
    lag: int
    store_rate_per_s: float | None
    members: list[SeenMember]
    waits: list[GroupWait]
    skips: list[GroupSkip]
    expected_pause_s: float | None

    @property
    def finishing(self) -> bool:
        """No partitions to add: intake is paused (an interrupted run: finished with the
        partitions it created, or undone), or registers another count than the topic's (added
        behind the API's back, or a growth that resumed unsure): --execute pauses, drains and
        registers the topic's count."""
        return self.new == self.current

    def lines(self, poll_s: float, timeout_s: float) -> list[str]:
        fraction = rules.moved_fraction(self.current, self.new)
        lines = [f"topic {self.topic}: {self.current} -> {self.new} partitions"]
        if self.finishing:
            lines.append(
                "the topic has that count already: --execute pauses intake, waits until every "
                f"group has processed up to the log end, and resumes with {self.new} partitions"
            )
        if self.customers_read:
            share = self.customers_moved / self.customers_read
            lines.append(
                f"customers moved: {self.customers_moved} of {self.customers_read} stored "
                f"customers ({share:.1%}) map to another partition "
                f"(murmur2 over {self.current} -> {self.new}: {fraction:.1%} expected)"
            )
        else:
            lines.append(f"customers moved: none stored yet ({fraction:.1%} expected)")
        lines.append(f"intake: {describe_state(self.state)}")
        lines.append(f"API processes seen recently: {len(self.members)}")
        lines += [
            f"  {m.member}  {m.state} at generation {m.generation}, seen {m.age_s:.1f}s ago"
            for m in self.members
        ]
        rate = (
            f", storing {self.store_rate_per_s:.0f} records/s"
            if self.store_rate_per_s is not None
            else ""
        )
        lines.append(f"lag of the worker group now: {self.lag} records{rate}")
        lines.append(f"waits for: {describe_waits(self.waits)}")
        if self.skips:
            lines.append(
                "does not wait for: "
                + "; ".join(f"{s.group} ({s.why}: stopped, not waited for)" for s in self.skips)
            )
        pause = (
            f"about {self.expected_pause_s:.1f}s"
            if self.expected_pause_s is not None
            else "unknown (lag, and the workers stored nothing in the last second)"
        )
        lines.append(
            f"expected pause: {pause} (4 polls of {poll_s:g}s + the lag at the workers' rate); "
            f"--timeout {timeout_s:g}s bounds it"
        )
        return lines


def describe_state(state: IntakeState | None) -> str:
    if state is None:
        return "not registered (`orders migrate` registers it; --execute does too)"
    status = f"paused ({state.reason})" if state.paused else "open"
    return f"{status}, generation {state.generation}, {state.partitions} partitions registered"


async def partition_count(settings: Settings, admin: AIOKafkaAdminClient) -> int:
    topic = settings.kafka.orders_topic
    [described] = await bounded(
        settings.kafka, "describing the topic", admin.describe_topics([topic])
    )
    if described["error_code"]:
        error = for_code(described["error_code"])
        msg = f"topic {topic!r}: {error.__name__} (Kafka at {settings.kafka.bootstrap_servers})"
        raise GrowthRefusedError(msg)
    return len(described["partitions"])


async def log_ends(settings: Settings) -> dict[int, int]:
    """The last stable offset of each partition: what a read_committed group can reach."""
    kafka = settings.kafka
    async with offsets_consumer(kafka, isolation_level="read_committed") as consumer:
        partitions = await topic_partitions(kafka, consumer, kafka.orders_topic)
        ends = await bounded(kafka, "reading log ends", consumer.end_offsets(partitions))
    return {tp.partition: offset for tp, offset in ends.items()}


async def _worker_lag(
    settings: Settings, engine: AsyncEngine, ends: dict[int, int]
) -> tuple[int, float | None]:
    """The worker group's lag now, and the rate it stores at over the next second (None: no
    lag to measure it by)."""
    group, topic = settings.worker.group_id, settings.kafka.orders_topic

    async def stored() -> dict[int, int]:
        async with engine.connect() as connection:
            return await read_positions(connection, group, topic, list(ends))

    before = await stored()
    lag = sum(rules.records_behind(ends, before).values())
    if not lag:
        return 0, None
    await asyncio.sleep(1.0)
    after = await stored()
    return lag, float(sum(after.values()) - sum(before.values()))


async def plan_growth(settings: Settings, engine: AsyncEngine, new: int) -> GrowthPlan:
    """What growing to `new` partitions would do; changes nothing. GrowthRefusedError when it
    makes no sense."""
    topic = settings.kafka.orders_topic
    async with admin_client(settings.kafka) as admin:
        current = await partition_count(settings, admin)
        async with engine.connect() as connection:
            state = await intake.read_state(connection, topic)
            members = await intake.seen_members(connection, topic)
            customers = await intake.sample_customers(connection, CUSTOMER_SAMPLE)
        _refuse_unless_sensible(topic, current, new, state)
        waits, skips = await groups_to_wait_for(settings, engine, admin)
    lag, rate = await _worker_lag(settings, engine, await log_ends(settings))
    return GrowthPlan(
        topic=topic,
        current=current,
        new=new,
        state=state,
        customers_read=len(customers),
        customers_moved=rules.customers_moved(customers, current, new),
        lag=lag,
        store_rate_per_s=rate,
        members=[m for m in members if rules.may_admit(m)],
        waits=waits,
        skips=skips,
        expected_pause_s=rules.expected_pause_s(lag, rate, settings.api.intake_poll_s),
    )


def _refuse_unless_sensible(topic: str, current: int, new: int, state: IntakeState | None) -> None:
    """More partitions; or the topic's count again, to finish what is left to do: a pause to
    end, or a count to register that differs from the registered one."""
    unfinished = state is not None and (state.paused or state.partitions != current)
    if new < current or (new == current and not unfinished):
        msg = (
            f"topic {topic} has {current} partitions; --partitions must be more "
            "(Kafka cannot remove partitions)"
        )
        raise GrowthRefusedError(msg)
