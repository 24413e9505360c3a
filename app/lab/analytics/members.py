"""The lab's analytics members: `orders analytics` itself, as a child process per mode, killed -9
and started again at once.

Each member is a static member (`--group-instance-id`): started again under the same id, it
gets its partitions back at once, instead of waiting out the dead process's session timeout
(which would leave the group without a reader for that long after every kill).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from decimal import Decimal

from aiokafka.structs import TopicPartition
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.positions import read_positions
from app.errors import OrdersError
from app.lab.semantics.members import MemberProcess
from app.operations.kafka_clients import bounded, offsets_consumer
from app.process_env import settings_env
from app.settings import Settings

_COUNTED = text(
    """
    SELECT currency, sum(orders) AS orders, sum(revenue) AS revenue
    FROM revenue_windows WHERE group_id = :group_id GROUP BY currency
    """
)


def member_settings(settings: Settings, mode: str, topic: str, group: str) -> Settings:
    """The settings an analytics member of this mode runs with: the lab's topic and group."""
    return settings.model_copy(
        update={
            "kafka": settings.kafka.model_copy(update={"orders_topic": topic}),
            "analytics": settings.analytics.model_copy(update={"mode": mode, "group_id": group}),
        }
    )


class AnalyticsSlot:
    """One mode's member process: one at a time, started again at once when killed."""

    def __init__(
        self, settings: Settings, mode: str, topic: str, group: str, instance: str | None = None
    ) -> None:
        self.mode = mode
        self.instance = instance or mode  # its static member id in the group
        self.topic = topic
        self.group = group
        self.settings = member_settings(settings, mode, topic, group)
        self.kills = 0
        self._started = 0
        self._env = settings_env(self.settings, LOG_LEVEL="WARNING")
        self._member: MemberProcess | None = None

    async def start(self) -> None:
        self._started += 1
        argv = [
            sys.executable,
            "-m",
            "app.cli",
            "analytics",
            f"--group-instance-id={self.instance}",
        ]
        self._member = await MemberProcess.spawn(
            argv, self._env, f"{self.instance}-{self._started}"
        )

    def check(self) -> None:
        """A member that died on its own is a failure of the lab (it should only be killed)."""
        member = self._member
        if member is not None and member.exited and not member.expected_exit:
            msg = f"analytics {self.mode} member ended on its own: {member.describe()}"
            raise OrdersError(msg)

    async def kill_and_restart(self) -> None:
        """kill -9, whatever it is doing, and the next one at once."""
        self.check()
        assert self._member is not None
        await self._member.kill()
        self.kills += 1
        await self.start()

    async def stop(self) -> None:
        """SIGTERM: it stores the batch in hand and leaves (kill -9 if it does not in time)."""
        self.check()
        if self._member is None:
            return
        status = await self._member.stop()
        if status != 0:  # it did not drain and leave as `orders analytics` does on SIGTERM
            msg = f"analytics {self.mode} member did not stop cleanly: {self._member.describe()}"
            raise OrdersError(msg)

    async def end(self) -> None:
        if self._member is not None and not self._member.exited:
            await self._member.kill()

    async def reached(self, engine: AsyncEngine, ends: dict[TopicPartition, int]) -> bool:
        """Whether the group's positions are at `ends`: PostgreSQL's (exact), else Kafka's
        committed offsets (fast: the auto-commit's)."""
        partitions = [tp.partition for tp in ends]
        if self.mode == "exact":
            async with engine.connect() as connection:
                stored = await read_positions(connection, self.group, self.topic, partitions)
        else:
            kafka = self.settings.kafka
            async with offsets_consumer(kafka, self.group) as consumer:
                stored = {
                    tp.partition: await bounded(kafka, "reading offsets", consumer.committed(tp))
                    or 0
                    for tp in ends
                }
        return all(stored.get(tp.partition, 0) >= end for tp, end in ends.items())


async def kill_every(
    slot: AnalyticsSlot, every_s: float, phase: float, stop: asyncio.Event
) -> None:
    """Until `stop`: kill -9 the member every `every_s`, the first after `phase` of it more
    (members of one run are killed apart)."""
    delay = every_s * (1 + phase)
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        if stop.is_set():
            return
        await slot.kill_and_restart()
        delay = every_s


async def check_tables(engine: AsyncEngine) -> None:
    """OrdersError unless analytics' tables are there (migration 0006) and the role may use them:
    members without them would retry their first batch until the lab's deadline."""
    try:
        async with engine.connect() as connection:
            for table in ("revenue_windows", "analytics_watermarks"):
                await connection.execute(text(f"SELECT FROM {table} LIMIT 0"))
    except DBAPIError as exc:
        msg = (
            f"analytics' tables cannot be used ({exc.orig!r}): run `orders migrate` "
            "(migration 0006 creates revenue_windows and analytics_watermarks)"
        )
        raise OrdersError(msg) from exc


async def counted(engine: AsyncEngine, group: str) -> dict[str, tuple[int, Decimal]]:
    """What a group's windows hold, per currency: (orders, revenue)."""
    async with engine.connect() as connection:
        result = await connection.execute(_COUNTED, {"group_id": group})
        return {row.currency: (int(row.orders), row.revenue) for row in result}
