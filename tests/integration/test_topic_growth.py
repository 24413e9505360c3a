"""`orders topics grow`, against the real broker and PostgreSQL.

With load running (50 customers, each one request at a time, so a customer's acceptance order is
the order of its 202s), the orders topic grows from 6 to 12 partitions under `orders api
--workers 2` and two workers: every customer's orders are stored once and in acceptance order,
customers really moved partition, the clients saw 503 intake_paused with Retry-After, and the
pause is measured. Again with one old partition held back by the workers' fault point until a
second into the pause, so that moved customers have unstored orders on their old partition when
the new ones appear. Also: the plan alone changes nothing; a count not above the topic's exits 2;
a growth that cannot drain in time resumes intake with the old count (exit 1); a count changed
behind the API's back is refused, `orders migrate` refuses to register it and the grow with that
count does; a stale plan and a second grow at once are refused; a grow killed after adding the
partitions is finished by running it again.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from aiokafka.admin import NewPartitions
from prometheus_client import REGISTRY
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.batching import partition_for
from app.db import intake
from app.db.intake import IntakeState
from app.db.tables import orders
from app.errors import OrdersError
from app.operations.growth_plan import plan_growth
from app.operations.kafka_clients import admin_client
from app.operations.topic_growth import GrowthAbortedError, execute_growth
from app.settings import Settings
from app.topics import ensure_topics, register_intake
from tests.integration.api_client import (
    api_client,
    intake_behind,
    order_body,
    publisher_behind,
)
from tests.integration.kafka_tools import end_offsets
from tests.integration.live_stack import live_stack
from tests.integration.load import customers_for
from tests.integration.oracle import Expectations, check_ledger, wait_until_stored
from tests.integration.processes import ORDERS, settings_env
from tests.integration.waiting import eventually
from tests.integration.worker_harness import worker_running

OLD, NEW = 6, 12
PAUSED_FOR = re.compile(r"intake paused for ([0-9.]+) s")


@dataclass
class Grow:
    code: int
    out: str
    err: str


async def grow(settings: Settings, *args: str, timeout: float = 180) -> Grow:
    """`orders topics grow ARGS` as an operator runs it (its own process)."""
    process = await asyncio.create_subprocess_exec(
        ORDERS,
        "topics",
        "grow",
        *args,
        env=settings_env(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return Grow(process.returncode, out.decode(), err.decode())


async def registered(settings: Settings) -> None:
    """What `orders migrate` does for intake: the topic's count in intake_state."""
    await register_intake(settings, await ensure_topics(settings.kafka))


async def intake_state(engine: AsyncEngine, settings: Settings) -> IntakeState | None:
    async with engine.connect() as connection:
        return await intake.read_state(connection, settings.kafka.orders_topic)


async def partitions_of(settings: Settings) -> int:
    return len(await end_offsets(settings.kafka.bootstrap_servers, settings.kafka.orders_topic))


@dataclass
class Load:
    """Customers placing orders one at a time each; a 503 is counted and retried after its
    Retry-After with the same Idempotency-Key (the same order)."""

    expected: Expectations = field(default_factory=Expectations)
    refusals: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    without_retry_after: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def customer(self, client: httpx.AsyncClient, customer: str) -> None:
        n = 0
        while not self.stop.is_set():
            key = f"{customer}-{n}"
            while not self.stop.is_set():  # a refused order is retried until the load stops
                response = await client.post(
                    "/orders", json=order_body(customer, n), headers={"Idempotency-Key": key}
                )
                if response.status_code == 202:
                    self.expected.accept(customer, uuid.UUID(response.json()["order_id"]))
                    break
                assert response.status_code == 503, response.text
                problem = response.json()
                paused = problem["title"] == "Intake closed" and "paused" in problem["detail"]
                self.refusals["intake_paused" if paused else problem["detail"][:60]] += 1
                retry_after = response.headers.get("retry-after")
                if retry_after is None:
                    self.without_retry_after += 1
                await asyncio.sleep(float(retry_after or 1))
            n += 1
            await asyncio.sleep(0.05)  # ~20 orders/s per customer: the cores run everything


def moved_customers(rows: list[tuple[str, int]]) -> set[str]:
    """Customers whose stored orders sit on more than one partition: placed before the growth
    on one, after it on another."""
    partitions: defaultdict[str, set[int]] = defaultdict(set)
    for customer, partition in rows:
        partitions[customer].add(partition)
    return {customer for customer, seen in partitions.items() if len(seen) > 1}


async def stored_moved_customers(engine: AsyncEngine, customers: list[str]) -> set[str]:
    """moved_customers over these customers' stored orders."""
    async with engine.connect() as connection:
        rows = (
            await connection.execute(
                select(orders.c.customer_id, orders.c.kafka_partition).where(
                    orders.c.customer_id.in_(customers)
                )
            )
        ).all()
    return moved_customers([(c, p) for c, p in rows])


def unavailable_counted(scrape: str, reason: str) -> float:
    found = re.search(
        rf'^orders_http_unavailable_total\{{reason="{reason}"\}} (\S+)$', scrape, re.M
    )
    return float(found.group(1)) if found else 0.0


async def stored_on_a_new_partition(
    engine: AsyncEngine, customers: list[str], timeout: float = 60.0
) -> None:
    """Until one of these customers has an order stored on a partition the growth added."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        async with engine.connect() as connection:
            found = await connection.scalar(
                select(orders.c.order_id)
                .where(orders.c.customer_id.in_(customers), orders.c.kafka_partition >= OLD)
                .limit(1)
            )
        if found is not None:
            return
        await asyncio.sleep(0.2)


@dataclass
class Growth:
    load: Load
    grown: Grow
    scrape: str  # the API's /metrics after the load
    pause_s: float  # as the grow measured it


async def grow_under_load(
    settings: Settings,
    engine: AsyncEngine,
    customers: list[str],
    log_dir: Path,
    worker_env: dict[str, str] | None = None,
    while_paused: Callable[[], Awaitable[None]] | None = None,
) -> Growth:
    """`orders api --workers 2` and two workers, the customers placing orders, then `orders
    topics grow --partitions 12 --execute` (`while_paused` runs beside it); the load goes on
    after it, then stops and every accepted order is stored."""
    await registered(settings)
    assert await intake_state(engine, settings) == IntakeState(0, False, OLD)
    two_apis = settings.model_copy(update={"api": settings.api.model_copy(update={"workers": 2})})
    load = Load()
    async with live_stack(two_apis, log_dir, workers=2, worker_env=worker_env) as stack:
        async with stack.client(timeout=30) as client:
            tasks = [asyncio.create_task(load.customer(client, c)) for c in customers]
            try:
                # Orders in flight and in the workers' lag when the growth begins.
                assert await eventually(lambda: load.expected.total > 200, 60), stack.logs()
                beside = asyncio.ensure_future(while_paused() if while_paused else asyncio.sleep(0))
                try:
                    grown = await grow(two_apis, "--partitions", str(NEW), "--execute")
                    assert grown.code == 0, f"{grown.out}\n{grown.err}\n{stack.logs()}"
                    await asyncio.wait_for(beside, 120)
                finally:
                    beside.cancel()
                at_growth = load.expected.total  # then orders placed with 12 partitions
                assert await eventually(lambda: load.expected.total > at_growth + 200, 60)
            finally:
                load.stop.set()
                await asyncio.gather(*tasks)
            scrape = (await client.get("/metrics")).text
        assert await wait_until_stored(engine, load.expected, timeout=180) == load.expected.total
    assert stack.clean_exit(), stack.logs()
    print(grown.out)  # the plan, the steps and their times (pytest -s shows them)
    found = PAUSED_FOR.search(grown.out)
    assert found, grown.out
    return Growth(load, grown, scrape, float(found.group(1)))


async def assert_every_order_kept(
    settings: Settings, engine: AsyncEngine, customers: list[str], growth: Growth
) -> set[str]:
    """Each customer's orders stored once, in acceptance order; the 503s of the pause told to
    retry and counted; the topic grown. The customers whose orders straddle the growth."""
    load = growth.load
    report = await check_ledger(engine, load.expected)
    assert report.holds, str(report)
    assert load.refusals["intake_paused"] > 0, dict(load.refusals)
    assert set(load.refusals) == {"intake_paused"}, dict(load.refusals)
    assert load.without_retry_after == 0
    assert unavailable_counted(growth.scrape, "intake_paused") == load.refusals["intake_paused"]
    moved = await stored_moved_customers(engine, customers)
    # The growth really moved customers with orders on both sides: else this proves nothing.
    assert len(moved) >= 10, moved
    assert all(partition_for(c.encode(), OLD) != partition_for(c.encode(), NEW) for c in moved)
    assert await partitions_of(settings) == NEW
    assert await intake_state(engine, settings) == IntakeState(2, False, NEW)
    return moved


@pytest.mark.timeout(600)
async def test_growing_under_load_keeps_every_customers_order(
    settings: Settings, engine: AsyncEngine, run_id: str, tmp_path: Path
) -> None:
    customers = customers_for(run_id, 50)
    growth = await grow_under_load(settings, engine, customers, tmp_path)
    await assert_every_order_kept(settings, engine, customers, growth)
    assert 0 < growth.pause_s < 60, growth.grown.out  # a bound a loaded CI machine keeps


@pytest.mark.timeout(600)
async def test_orders_waiting_on_the_old_partition_are_stored_before_the_new_ones(
    settings: Settings, engine: AsyncEngine, run_id: str, tmp_path: Path
) -> None:
    """One old partition is held back (the workers' fault point) until the grow has paused and
    waited a second: its moved customers have orders unstored on it when the partitions are
    added, and orders on their new partition right after. The grow must drain it first."""
    customers = customers_for(run_id, 50)
    moving = Counter(
        partition_for(c.encode(), OLD)
        for c in customers
        if partition_for(c.encode(), OLD) != partition_for(c.encode(), NEW)
    )
    held, _ = moving.most_common(1)[0]
    on_partition: defaultdict[int, list[str]] = defaultdict(list)
    for c in customers:
        on_partition[partition_for(c.encode(), OLD)].append(c)
    block = tmp_path / "hold-partition"
    block.touch()

    async def release_a_second_into_the_pause() -> None:
        """A second into the pause, with the old count still registered, as a grow that waits
        for the held partition leaves it. A grow that added the partitions without waiting
        finds it still held: released only once a moved customer of it has an order stored on
        its new partition, which breaks that customer's order (checked once, as the negative
        control of this test)."""
        loop = asyncio.get_running_loop()
        paused_at = None
        try:
            async with asyncio.timeout(120):  # a grow that failed before pausing: released
                while True:
                    state = await intake_state(engine, settings)
                    if paused_at is None and state is not None and state.paused:
                        paused_at = loop.time()
                    if state is not None and state.partitions == NEW:
                        await stored_on_a_new_partition(engine, on_partition[held])
                        break
                    if paused_at is not None and loop.time() - paused_at >= 1.0:
                        break
                    await asyncio.sleep(0.1)
        finally:
            block.unlink(missing_ok=True)

    env = {"ORDERS_FAULT_BLOCK_PARTITION": str(held), "ORDERS_FAULT_BLOCK_FILE": str(block)}
    growth = await grow_under_load(
        settings, engine, customers, tmp_path, env, release_a_second_into_the_pause
    )
    lag = re.search(r"lag of the worker group now: (\d+) records", growth.grown.out)
    assert lag, growth.grown.out
    assert int(lag.group(1)) > 0
    moved = await assert_every_order_kept(settings, engine, customers, growth)
    assert growth.pause_s >= 1.0, growth.grown.out  # it waited for the held partition
    assert any(partition_for(c.encode(), OLD) == held for c in moved), (held, moved)


async def test_the_plan_alone_changes_nothing(settings: Settings, engine: AsyncEngine) -> None:
    await registered(settings)
    planned = await grow(settings, "--partitions", str(NEW))
    assert planned.code == 0, planned.err
    assert f"{OLD} -> {NEW} partitions" in planned.out
    assert "plan only" in planned.out
    assert f"waits for: {settings.worker.group_id}" in planned.out
    assert await partitions_of(settings) == OLD
    assert await intake_state(engine, settings) == IntakeState(0, False, OLD)


@pytest.mark.parametrize("partitions", [OLD, 3])
async def test_a_count_not_above_the_topics_exits_2(
    settings: Settings, engine: AsyncEngine, partitions: int
) -> None:
    await registered(settings)
    refused = await grow(settings, "--partitions", str(partitions), "--execute")
    assert refused.code == 2, refused.out
    assert f"has {OLD} partitions; --partitions must be more" in refused.err
    assert await partitions_of(settings) == OLD
    assert await intake_state(engine, settings) == IntakeState(0, False, OLD)


async def test_a_growth_that_cannot_drain_in_time_resumes_with_the_old_count(
    settings: Settings, engine: AsyncEngine, run_id: str
) -> None:
    """No worker runs: the group never reaches the log end, and `--timeout 3` gives up."""
    await registered(settings)
    statuses: list[int] = []
    async with api_client(settings) as client:
        for n, customer in enumerate(customers_for(run_id, 20)):
            assert (await client.post("/orders", json=order_body(customer, n))).status_code == 202

        async def meanwhile() -> None:
            while True:
                response = await client.post("/orders", json=order_body(f"{run_id}-x", 0))
                statuses.append(response.status_code)
                await asyncio.sleep(0.1)

        placing = asyncio.create_task(meanwhile())
        try:
            timed_out = await grow(
                settings, "--partitions", str(NEW), "--execute", "--timeout", "3"
            )
            during = list(statuses)
            # The gate reopens at its next poll after the resume: from then on, every order.
            assert await eventually(lambda: intake_behind(client).open, 10)
            await asyncio.sleep(0.3)  # an order posted before the reopening is answered by now
            statuses.clear()
            await asyncio.sleep(1)  # a few polls of the gate
        finally:
            placing.cancel()
    assert timed_out.code == 1, timed_out.out
    assert "did not process up to the log end in time" in timed_out.err
    assert f"intake resumed with {OLD} partitions: nothing changed" in timed_out.err
    assert await partitions_of(settings) == OLD
    assert await intake_state(engine, settings) == IntakeState(2, False, OLD)
    assert 503 in during, during  # paused for the 3 s it waited
    assert statuses, "no order placed after the growth gave up"
    assert set(statuses) == {202}, statuses  # open again, with the old count
    assert "intake paused (generation 1)" in timed_out.out


async def test_a_count_changed_behind_the_apis_back_is_registered_by_the_grow_not_migrate(
    settings: Settings, engine: AsyncEngine, run_id: str
) -> None:
    """`kafka-topics --alter` behind the API's back: the API refuses, `orders migrate` refuses to
    re-register (it would reopen with no drain), and `orders topics grow --partitions 8
    --execute` pauses, drains and registers 8."""
    await registered(settings)
    async with api_client(settings) as client, worker_running(settings, engine):
        assert (await client.post("/orders", json=order_body(run_id))).status_code == 202
        async with admin_client(settings.kafka) as admin:  # kafka-topics --alter --partitions 8
            await admin.create_partitions({settings.kafka.orders_topic: NewPartitions(8)})
        # The producer would see it at its next metadata refresh (up to 5 minutes): now.
        assert await publisher_behind(client).partition_count(refresh=True) == 8
        before = REGISTRY.get_sample_value(
            "orders_http_unavailable_total", {"reason": "partition_count_changed"}
        )
        refused = await client.post("/orders", json=order_body(run_id))
        assert refused.status_code == 503, refused.text
        assert "partition" in refused.json()["detail"]
        after = REGISTRY.get_sample_value(
            "orders_http_unavailable_total", {"reason": "partition_count_changed"}
        )
        assert after == (before or 0) + 1
        with pytest.raises(OrdersError, match=r"`orders topics grow --partitions 8 --execute`"):
            await registered(settings)  # `orders migrate`
        assert await intake_state(engine, settings) == IntakeState(0, False, OLD)
        grown = await grow(settings, "--partitions", "8", "--execute")
        assert grown.code == 0, f"{grown.out}\n{grown.err}"
        assert "the topic has that count already" in grown.out
        assert await intake_state(engine, settings) == IntakeState(2, False, 8)
        for _ in range(50):
            accepted = await client.post("/orders", json=order_body(run_id))
            if accepted.status_code == 202:
                break
            await asyncio.sleep(0.1)
        assert accepted.status_code == 202, accepted.text
    await registered(settings)  # agrees now: `orders migrate` passes


async def test_a_plan_made_stale_by_another_growth_is_not_executed(
    settings: Settings, engine: AsyncEngine
) -> None:
    """Planned, then another growth ran (here: a pause and a resume) before this one took the
    lock: nothing is done, intake is not paused."""
    await registered(settings)
    plan = await plan_growth(settings, engine, NEW)
    topic = settings.kafka.orders_topic
    async with engine.begin() as connection:
        await intake.pause(connection, topic, OLD, "another growth")
        await intake.resume(connection, topic, OLD)
    steps: list[str] = []
    with pytest.raises(GrowthAbortedError, match=r"changed since the plan.*nothing done"):
        await execute_growth(settings, engine, plan, timeout_s=10, say=steps.append)
    assert steps == []  # not paused
    assert await intake_state(engine, settings) == IntakeState(2, False, OLD)
    assert await partitions_of(settings) == OLD


async def test_a_second_growth_of_the_topic_at_the_same_time_is_refused(
    settings: Settings, engine: AsyncEngine
) -> None:
    """The advisory lock held (as by a grow running): another grow exits 1 without pausing."""
    await registered(settings)
    topic = settings.kafka.orders_topic
    async with engine.connect() as holder:
        assert await intake.try_lock_growth(holder, topic)
        await holder.commit()
        second = await grow(settings, "--partitions", str(NEW), "--execute")
        await intake.unlock_growth(holder, topic)
        await holder.commit()
    assert second.code == 1, second.out
    assert f"another `orders topics grow` of topic {topic} is running" in second.err
    assert await intake_state(engine, settings) == IntakeState(0, False, OLD)
    assert await partitions_of(settings) == OLD


async def state_until(
    engine: AsyncEngine,
    settings: Settings,
    holds: Callable[[IntakeState | None], bool],
    timeout: float = 60.0,
) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if holds(await intake_state(engine, settings)):
            return True
        await asyncio.sleep(0.1)
    return False


async def partitions_until(settings: Settings, count: int, timeout: float = 60.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await partitions_of(settings) == count:
            return True
        await asyncio.sleep(0.1)
    return False


@pytest.mark.timeout(600)
async def test_a_growth_killed_after_adding_partitions_is_finished_by_running_it_again(
    settings: Settings, engine: AsyncEngine, run_id: str
) -> None:
    """The grow is killed (-9) once the partitions exist, before it resumed: intake stays
    paused with the old count registered. `orders topics grow --partitions 12 --execute` again
    drains and resumes with 12, and every customer's orders are stored once, in order.

    To kill it in that window for sure, the test holds the intake row FOR SHARE once the grow
    has paused (its resume, an UPDATE, then waits for it), and starts the worker only then (the
    grow's drain waits for it meanwhile)."""
    await registered(settings)
    customers = customers_for(run_id, 20)
    load = Load()
    topic = settings.kafka.orders_topic
    async with api_client(settings) as client:
        tasks = [asyncio.create_task(load.customer(client, c)) for c in customers]
        try:
            assert await eventually(lambda: load.expected.total > 100, 60)
            first = await asyncio.create_subprocess_exec(
                ORDERS,
                "topics",
                "grow",
                "--partitions",
                str(NEW),
                "--execute",
                env=settings_env(settings),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            try:
                assert await state_until(engine, settings, lambda s: s is not None and s.paused)
                async with engine.connect() as holder:
                    await holder.execute(
                        text("SELECT 1 FROM intake_state WHERE topic = :topic FOR SHARE"),
                        {"topic": topic},
                    )
                    async with worker_running(settings, engine):
                        assert await partitions_until(settings, NEW)
                        await asyncio.sleep(0.5)  # into its resume, waiting for the row
                        first.kill()
                        await first.wait()
                        await holder.rollback()
                        assert await intake_state(engine, settings) == IntakeState(
                            1, True, OLD, (f"growing to {NEW} partitions")
                        )
                        at_kill = load.expected.total
                        await asyncio.sleep(1.0)
                        assert load.expected.total == at_kill  # paused: nothing accepted
                        again = await grow(settings, "--partitions", str(NEW), "--execute")
                        assert again.code == 0, f"{again.out}\n{again.err}"
                        assert "the topic has that count already" in again.out
                        assert await intake_state(engine, settings) == IntakeState(3, False, NEW)
                        assert await eventually(lambda: load.expected.total > at_kill + 100, 60)
                        load.stop.set()
                        await asyncio.gather(*tasks)
                        stored = await wait_until_stored(engine, load.expected, timeout=180)
                        assert stored == load.expected.total
            finally:
                if first.returncode is None:
                    first.kill()
                    await first.wait()
        finally:
            load.stop.set()
            await asyncio.gather(*tasks)
    report = await check_ledger(engine, load.expected)
    assert report.holds, str(report)
    assert len(await stored_moved_customers(engine, customers)) >= 3
