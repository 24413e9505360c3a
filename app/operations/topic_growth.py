"""`orders topics grow --partitions N`: more partitions for the orders topic, no customer's order
broken. The plan first; `--execute` to do it.

The API picks each order's partition itself: murmur2(customer id) % the partition count its
producer knows (app/batching.py). With more partitions most customers map to another one (half
of them from N to 2N). If a customer's earlier orders still wait, unstored, on the old partition
while its next ones land on the new one, two workers store them at the same time and the
customer's order breaks. So, with `--execute`:

1. pause intake (intake_state, a new generation G): each API process closes within a poll (503
   intake_paused, Retry-After) and acknowledges once every order it let in is answered; one
   that stopped heartbeating is waited out (its last heartbeat plus its own bound: it has closed
   itself by then);
2. read the log ends, and wait until every group that processes the topic per customer has
   processed up to them (app/operations/growth_groups.py says which);
3. add the partitions (CreatePartitions) and store the worker group's positions of the new ones;
4. resume (G+1, N partitions): each API process reopens once its producer's metadata shows N.

Before pausing it re-reads the topic's count and the intake state under its lock: a plan
made stale by another growth is not executed (exit 1, nothing done).

A failure or a timeout (`--timeout`) before step 3 resumes intake with the old count: nothing
changed (exit 1). If CreatePartitions fails without a clear refusal (a timeout, a lost
connection), the broker may still be adding them: the count is read again for up to the
request timeout, and if it is still not known to be the new one intake stays paused (the message
names the command to run again). After step 3 it never resumes with the old count. A run that
was killed, or left intake paused, is finished by the same command again: with the old count on
the topic it grows as planned; with the new one (`--partitions` equal to the topic's count) it
pauses, drains and resumes with it. That command also registers a count changed behind the
API's back (registered != the topic's), after the same drain; `orders migrate` refuses to.
Every PostgreSQL statement here is bounded (DB_TIMEOUT_S).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewPartitions
from aiokafka.errors import KafkaError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.db import intake
from app.db.intake import IntakeState
from app.db.positions import create_positions
from app.errors import OrdersError
from app.operations import growth_rules as rules
from app.operations.growth_groups import describe_members, group_positions
from app.operations.growth_plan import GrowthPlan, describe_state, log_ends, partition_count
from app.operations.kafka_clients import admin_client, bounded
from app.settings import Settings

# How long the steps after the partitions exist may retry (resuming must not give up quickly).
AFTER_CREATION_S = 60.0
# Best-effort waits after resuming: the API processes reopen, the workers get the partitions
# (their metadata is at most 30 s old: app/group_member_options.py; then a rebalance).
REOPEN_WAIT_S = 30.0
ASSIGNMENT_WAIT_S = 90.0
POLL_S = 0.1
# Each PostgreSQL transaction of the grow: its statements and lock waits (a pause waits for the
# API processes' reads and a dlq replay's send, which hold the row FOR SHARE).
DB_TIMEOUT_S = 15.0


class GrowthAbortedError(OrdersError):
    """The growth did not complete; the message says in which state it left intake."""


@asynccontextmanager
async def _transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A transaction whose statements and lock waits PostgreSQL fails after DB_TIMEOUT_S; the
    whole of it, connecting included, is bounded a little later here too (the server's bound
    comes first, so a commit is not left in doubt by it)."""
    async with asyncio.timeout(DB_TIMEOUT_S + 2.0), engine.begin() as connection:
        await intake.bound_statements(connection, DB_TIMEOUT_S)
        yield connection


@asynccontextmanager
async def _growth_lock(engine: AsyncEngine, topic: str) -> AsyncIterator[None]:
    """One growth of a topic at a time (a session lock on a connection of its own)."""
    async with engine.connect() as connection:
        async with asyncio.timeout(DB_TIMEOUT_S):
            locked = await intake.try_lock_growth(connection, topic)
            await connection.commit()  # the lock is the session's: no transaction left open
        if not locked:
            msg = f"another `orders topics grow` of topic {topic} is running: nothing done"
            raise GrowthAbortedError(msg)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):  # else it ends with the session, just after
                async with asyncio.timeout(DB_TIMEOUT_S):
                    await intake.unlock_growth(connection, topic)
                    await connection.commit()


async def _still_as_planned(
    settings: Settings, engine: AsyncEngine, admin: AIOKafkaAdminClient, plan: GrowthPlan
) -> None:
    """Under the lock, before pausing: the topic's count and the intake state as the plan read
    them. Another growth that ran between the plan and the lock changed them: this plan's
    counts, and its decision to add partitions, are stale."""
    count = await partition_count(settings, admin)
    async with _transaction(engine) as connection:
        state = await intake.read_state(connection, plan.topic)
    if count != plan.current or state != plan.state:
        msg = (
            f"the topic or its intake changed since the plan (partitions: {plan.current} then, "
            f"{count} now; intake: {describe_state(plan.state)} then, {describe_state(state)} "
            "now; another `orders topics grow`?): nothing done. Run the command again to plan "
            "anew"
        )
        raise GrowthAbortedError(msg)


class _Timeline:
    """Each step's end, in seconds from the start, said as it happens."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self._say = say
        self._clock = asyncio.get_running_loop().time
        self.started = self._clock()
        self.steps: list[tuple[float, str]] = []

    def now(self) -> float:
        return self._clock() - self.started

    def step(self, what: str) -> float:
        at = self.now()
        self.steps.append((at, what))
        self._say(f"{at:7.2f}s  {what}")
        return at


@dataclass(frozen=True)
class GrowthResult:
    partitions: int
    pause_s: float  # from pausing intake to resuming it
    reopened_s: float | None  # until every API process seen was open again (None: not all)
    assigned: bool  # every partition assigned to a member of the worker group


async def execute_growth(
    settings: Settings,
    engine: AsyncEngine,
    plan: GrowthPlan,
    *,
    timeout_s: float,
    say: Callable[[str], None],
) -> GrowthResult:
    """Pause, drain, grow, resume (the module docstring); GrowthAbortedError when it did not
    complete, saying in which state intake was left."""
    topic = plan.topic
    async with _growth_lock(engine, topic), admin_client(settings.kafka) as admin:
        await _still_as_planned(settings, engine, admin, plan)
        timeline = _Timeline(say)
        deadline = timeline.started + timeout_s
        creating = False
        try:
            async with _transaction(engine) as connection:
                paused = await intake.pause(
                    connection, topic, plan.current, f"growing to {plan.new} partitions"
                )
            timeline.step(f"intake paused (generation {paused.generation}): {paused.reason}")
            await _drain(settings, engine, admin, plan, paused.generation, deadline, timeline)
            if plan.new > plan.current:
                creating = True
                await bounded(
                    settings.kafka,
                    "adding partitions",
                    admin.create_partitions({topic: NewPartitions(total_count=plan.new)}),
                )
        except BaseException as exc:
            await _unless_grown(settings, engine, admin, plan, exc, creating, timeline)
        await _stored_positions_of_new_partitions(settings, engine, plan, timeline)
        resumed = await _resume(engine, topic, plan.new)
        pause_s = timeline.step(
            f"intake resumed (generation {resumed.generation}) with {plan.new} partitions"
        )
        reopened_s = await _reopened(engine, topic, resumed.generation, timeline)
        assigned = await _assigned(settings, admin, plan.new, timeline)
    return GrowthResult(plan.new, pause_s, reopened_s, assigned)


async def _drain(
    settings: Settings,
    engine: AsyncEngine,
    admin: AIOKafkaAdminClient,
    plan: GrowthPlan,
    generation: int,
    deadline: float,
    timeline: _Timeline,
) -> None:
    """Every API process acknowledges; every group waited for reaches the log ends."""
    loop = asyncio.get_running_loop()
    while True:
        async with _transaction(engine) as connection:
            members = await intake.seen_members(connection, plan.topic)
        pending = rules.pending_members(members, generation)
        if not pending:
            break
        if loop.time() >= deadline:
            names = ", ".join(f"{m.member} ({m.state})" for m in pending)
            msg = f"API processes did not acknowledge the pause in time: {names}"
            raise GrowthAbortedError(msg)
        await asyncio.sleep(POLL_S)
    acknowledged = [m for m in members if rules.acknowledged(m, generation)]
    timeline.step(f"{len(acknowledged)} API process(es) closed, every order they let in answered")
    ends = await log_ends(settings)
    timeline.step(f"log ends read: {sum(ends.values())} records in {len(ends)} partitions")
    for wait in plan.waits:
        while True:
            # PostgreSQL's positions or Kafka's offsets (each Kafka wait bounded already).
            async with asyncio.timeout(DB_TIMEOUT_S + settings.kafka.request_timeout_ms / 1000):
                positions = await group_positions(settings, engine, admin, wait, list(ends))
            behind = rules.records_behind(ends, positions)
            if not behind:
                break
            if loop.time() >= deadline:
                msg = (
                    f"group {wait.group} did not process up to the log end in time "
                    f"({sum(behind.values())} records left on {len(behind)} partitions): "
                    "are its members running?"
                )
                raise GrowthAbortedError(msg)
            await asyncio.sleep(POLL_S)
        timeline.step(f"{wait.group} has processed up to the log end")


async def _count_now(settings: Settings, admin: AIOKafkaAdminClient) -> int | None:
    try:
        return await partition_count(settings, admin)
    except (OrdersError, KafkaError):
        return None


async def _count_after(
    settings: Settings,
    admin: AIOKafkaAdminClient,
    plan: GrowthPlan,
    exc: BaseException,
    creating: bool,
) -> int | None:
    """The topic's count after the failure (None: not known). After a CreatePartitions without
    a clear answer, read again for up to the request timeout until it shows the new count."""
    if not creating or rules.refused_by_the_broker(exc):
        return await _count_now(settings, admin)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.kafka.request_timeout_ms / 1000
    while True:
        count = await _count_now(settings, admin)
        if count == plan.new or loop.time() >= deadline:
            return count
        await asyncio.sleep(0.5)


async def _unless_grown(
    settings: Settings,
    engine: AsyncEngine,
    admin: AIOKafkaAdminClient,
    plan: GrowthPlan,
    exc: BaseException,
    creating: bool,
    timeline: _Timeline,
) -> None:
    """The run failed before or while adding partitions. Added after all (a reply lost):
    return, the growth goes on. Surely not added, and the registered count is the topic's:
    resume with it and raise (nothing changed). Otherwise (not known, the broker may still add
    them, or a count to register that differs) leave intake paused and raise."""
    why = str(exc) if isinstance(exc, OrdersError) else f"{type(exc).__name__}: {exc}"
    count = await _count_after(settings, admin, plan, exc, creating)
    if creating and count == plan.new:
        timeline.step(f"the partitions were added despite {why}")
        return
    registered = plan.state.partitions if plan.state is not None else plan.current
    unsure = creating and not rules.refused_by_the_broker(exc)
    if count != plan.current or registered != plan.current or unsure:
        again = count if count is not None and count != plan.current else plan.new
        if unsure:
            known = f"still {count}" if count is not None else "unknown"
            state = f"the topic's partition count is {known} but the broker may still add them"
        else:
            state = (
                f"the topic has {count if count is not None else 'an unknown number of'} "
                f"partitions, intake registers {registered}"
            )
        msg = (
            f"{why}; {state}: intake stays PAUSED. Run `orders topics grow --partitions {again} "
            "--execute` again: it drains and resumes with the count the topic has then"
        )
        raise GrowthAbortedError(msg) from exc
    resumed = await _resume(engine, plan.topic, plan.current)
    timeline.step(
        f"intake resumed (generation {resumed.generation}) with the old count, {plan.current}"
    )
    if not isinstance(exc, Exception):  # Ctrl-C, cancellation: resumed, and stopped as asked
        raise exc
    msg = f"{why}; intake resumed with {plan.current} partitions: nothing changed"
    raise GrowthAbortedError(msg) from exc


async def _resume(engine: AsyncEngine, topic: str, partitions: int) -> IntakeState:
    """Resume, retrying for AFTER_CREATION_S (each try bounded): the API stays paused until
    this succeeds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + AFTER_CREATION_S
    while True:
        try:
            async with _transaction(engine) as connection:
                return await intake.resume(connection, topic, partitions)
        except Exception as exc:
            if loop.time() >= deadline:
                msg = (
                    f"could not resume intake within {AFTER_CREATION_S:g}s ({exc!r}): it stays "
                    f"PAUSED, every POST /orders answers 503. Run `orders topics grow "
                    f"--partitions {partitions} --execute` to resume it"
                )
                raise GrowthAbortedError(msg) from exc
        await asyncio.sleep(1.0)


async def _stored_positions_of_new_partitions(
    settings: Settings, engine: AsyncEngine, plan: GrowthPlan, timeline: _Timeline
) -> None:
    new = list(range(plan.current, plan.new))
    if not new:
        return
    group = settings.worker.group_id
    try:
        async with _transaction(engine) as connection:
            await create_positions(
                connection,
                group_id=group,
                topic=plan.topic,
                partitions=new,
                owner="orders topics grow",
            )
    except Exception as exc:  # the workers start a partition without a position at 0 anyway
        timeline.step(f"could not store the new partitions' positions ({exc!r}); going on")
        return
    timeline.step(f"positions of partitions {rules.partition_ranges(new)} stored at 0 for {group}")


async def _reopened(
    engine: AsyncEngine, topic: str, generation: int, timeline: _Timeline
) -> float | None:
    """Best effort: until every API process seen recently is open at `generation`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + REOPEN_WAIT_S
    while True:
        try:
            async with _transaction(engine) as connection:
                members = await intake.seen_members(connection, topic)
        except Exception as exc:  # grown and resumed already: only the report is missing
            timeline.step(f"could not read the API processes' state ({exc!r}); not waiting")
            return None
        opened, waiting = rules.reopened(members, generation)
        if not waiting:
            return timeline.step(f"{len(opened)} API process(es) open again")
        if loop.time() >= deadline:
            names = ", ".join(f"{m.member} ({m.state})" for m in waiting)
            timeline.step(f"not open again after {REOPEN_WAIT_S:g}s: {names}")
            return None
        await asyncio.sleep(POLL_S)


async def _assigned(
    settings: Settings, admin: AIOKafkaAdminClient, partitions: int, timeline: _Timeline
) -> bool:
    """Best effort: until the worker group's members own every partition (each member sees
    the new ones at its next metadata refresh, then the group rebalances)."""
    group = settings.worker.group_id
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ASSIGNMENT_WAIT_S
    wanted = frozenset(range(partitions))
    while True:
        with contextlib.suppress(OrdersError, KafkaError):
            members = await describe_members(settings, admin, group)
            if members.assigned == wanted and members.state == "Stable":
                timeline.step(
                    f"{group}: all {partitions} partitions assigned "
                    f"({members.subscribed} member(s))"
                )
                return True
        if loop.time() >= deadline:
            timeline.step(
                f"{group}: not every partition assigned after {ASSIGNMENT_WAIT_S:g}s; "
                "run `orders lag` to follow"
            )
            return False
        await asyncio.sleep(1.0)
