"""Operator commands against the real services: lag, offset resets, dead letters."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from aiokafka.structs import OffsetAndMetadata, TopicPartition
from sqlalchemy.ext.asyncio import AsyncEngine

from app import contract
from app import dlq_headers as dlq
from app.batching import partition_for
from app.db import intake
from app.db.positions import set_position
from app.operations.dlq import (
    REPLAYED_FROM,
    ReplayRefusedError,
    list_dead_letters,
    replay_dead_letter,
)
from app.operations.group_delete import (
    Deleted,
    GroupDeleteRefusedError,
    delete_group,
    delete_kafka_group,
    plan_delete,
)
from app.operations.kafka_clients import KafkaCommandError, admin_client, offsets_consumer
from app.operations.lag import group_lag
from app.operations.offsets import ResetRefusedError, Target, apply_reset, plan_reset
from app.settings import Settings
from tests.integration.direct import late_order
from tests.integration.kafka_tools import end_offsets, non_empty, read_topic
from tests.integration.load import customers_for, orders_accepted
from tests.integration.oracle import Expectations, check_ledger, stored_positions, wait_until_stored
from tests.integration.processes import settings_env
from tests.integration.waiting import eventually
from tests.integration.worker_harness import committed_offsets, worker_running

ORDERS = str(Path(sys.executable).with_name("orders"))


async def test_lag_shows_stored_committed_and_log_end(
    settings: Settings, engine: AsyncEngine, run_id: str
) -> None:
    expected = await orders_accepted(settings, customers_for(run_id, 12), per_customer=10)
    before = {row.partition: row for row in await group_lag(settings, engine)}
    assert sum(row.lag for row in before.values()) == 120
    assert all(row.stored is None for row in before.values())

    async with worker_running(settings, engine):
        assert await wait_until_stored(engine, expected) == 120
    after = await group_lag(settings, engine)
    assert sum(row.lag for row in after) == 0
    assert all(row.stored == row.committed == row.log_end for row in after if row.log_end)

    shown = (
        await asyncio.to_thread(
            subprocess.run,
            [ORDERS, "lag"],
            env=settings_env(settings),
            capture_output=True,
            text=True,
            check=True,
        )
    ).stdout
    assert f"group {settings.worker.group_id}" in shown
    assert shown.strip().splitlines()[-1].split() == ["total", "0"]


async def test_an_offset_reset_is_refused_while_workers_run_then_replays_harmlessly(
    settings: Settings, engine: AsyncEngine, run_id: str
) -> None:
    expected = await orders_accepted(settings, customers_for(run_id, 10), per_customer=10)
    async with worker_running(settings, engine) as worker:
        assert await wait_until_stored(engine, expected) == 100
        moves = await plan_reset(settings, engine, Target("earliest"), None)
        assert {m.new for m in moves} == {0}
        with pytest.raises(ResetRefusedError, match="active member"):
            await apply_reset(settings, engine, moves)
    assert worker.stats.inserted == 100

    await apply_reset(settings, engine, moves)
    group, topic = settings.worker.group_id, settings.kafka.orders_topic
    assert set((await stored_positions(engine, group, topic)).values()) == {0}
    assert set((await committed_offsets(settings)).values()) == {0}

    async with worker_running(settings, engine) as replay:
        assert await wait_until_stored(engine, expected) == 100
        ends = non_empty(await end_offsets(settings.kafka.bootstrap_servers, topic))
        assert await eventually(lambda: sum(replay.stats.positions.values()) == sum(ends.values()))
    # (the reset wrote a position for every partition, the empty ones at 0)
    assert non_empty(await stored_positions(engine, group, topic)) == ends
    assert replay.stats.records == 100
    assert replay.stats.inserted == 0  # replayed, absorbed
    assert (await check_ledger(engine, expected)).holds

    # --shift-by on one partition, planned against the stored position, clamped to the log.
    [one] = [m.partition for m in moves if ends.get(m.partition)][:1]
    [shift] = await plan_reset(settings, engine, Target("shift", -5), [one])
    assert (shift.current, shift.new) == (ends[one], max(ends[one] - 5, 0))


async def test_dead_letters_are_listed_with_their_origin_and_can_be_replayed(
    settings: Settings, engine: AsyncEngine, run_id: str
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers)
    await producer.start()
    try:
        bad = await producer.send_and_wait(
            settings.kafka.orders_topic,
            b"{broken",
            key=f"{run_id}-x".encode(),
            headers=[("request-id", b"r-9")],
        )
    finally:
        await producer.stop()
    async with worker_running(settings, engine) as worker:
        assert await eventually(lambda: worker.stats.dead_lettered == 1)
        [letter] = (await list_dead_letters(settings.kafka)).letters
        assert letter.origin == f"{settings.kafka.orders_topic}/{bad.partition}@{bad.offset}"
        assert letter.headers["dlq.error.class"] == "PoisonRecordError"
        assert letter.value == b"{broken"

        partition, offset = await replay_dead_letter(settings.kafka, engine, letter.offset)
        assert partition == bad.partition  # same key, same partition
        assert offset > bad.offset
        # Still poison: dead-lettered again.
        assert await eventually(lambda: worker.stats.dead_lettered == 2)
    dead = await read_topic(settings.kafka.bootstrap_servers, settings.kafka.dlq_topic)
    replayed = {key: value.decode() for key, value in dead[1].headers}
    assert replayed[REPLAYED_FROM] == str(letter.offset)
    assert replayed["request-id"] == "r-9"
    assert replayed["dlq.original.offset"] == str(offset)


async def a_late_order_dead_lettered(settings: Settings, customer: str) -> contract.OrderEnvelope:
    """A good order on the DLQ as an older worker would have put it there (first appended after
    its deadline, on partition 0 at offset 0 of the orders topic)."""
    order, first_append = late_order(customer)
    value, headers = contract.encode(order, "r-1")
    provenance = {
        dlq.H_TOPIC: settings.kafka.orders_topic,
        dlq.H_PARTITION: "0",
        dlq.H_OFFSET: "0",
        dlq.H_TIMESTAMP: str(int(first_append.timestamp() * 1000)),
        dlq.H_TIMESTAMP_TYPE: str(contract.LOG_APPEND_TIME),
        dlq.H_ERROR_CLASS: "PoisonRecordError",
    }
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers)
    await producer.start()
    try:
        await producer.send_and_wait(
            settings.kafka.dlq_topic,
            value,
            key=customer.encode(),
            headers=headers + [(k, v.encode()) for k, v in provenance.items()],
        )
    finally:
        await producer.stop()
    return order


async def test_a_replayed_dead_letter_that_now_parses_is_stored_judged_by_its_first_append(
    settings: Settings, engine: AsyncEngine, run_id: str
) -> None:
    """As if an older worker had dead-lettered a good order: replayed after its deadline, it is
    judged by the time the broker first appended it, and stored."""
    customer = f"{run_id}-replayed"
    order = await a_late_order_dead_lettered(settings, customer)
    await replay_dead_letter(settings.kafka, engine, 0)
    expected = Expectations()
    expected.accept(customer, order.order_id)
    async with worker_running(settings, engine) as worker:
        assert await wait_until_stored(engine, expected) == 1
    assert worker.stats.expired == 0
    assert (await check_ledger(engine, expected)).holds


async def test_a_replay_is_refused_while_intake_is_paused_and_goes_where_the_api_would_put_it(
    settings: Settings, engine: AsyncEngine, run_id: str
) -> None:
    """A replay passes the intake gate like an order: while `orders topics grow` holds intake
    paused, a record sent could land behind the drain, so it is refused and nothing is sent;
    once resumed it goes to murmur2(key) over the registered count."""
    customer, topic = f"{run_id}-gated", settings.kafka.orders_topic
    partitions = len(await end_offsets(settings.kafka.bootstrap_servers, topic))
    await a_late_order_dead_lettered(settings, customer)
    async with engine.begin() as connection:
        await intake.register_topic(connection, topic, partitions)
        await intake.pause(connection, topic, partitions, "growing to 12 partitions")
    with pytest.raises(ReplayRefusedError, match=r"intake of .* is paused \(growing to 12"):
        await replay_dead_letter(settings.kafka, engine, 0)
    replayed = await orders_command(settings, "dlq", "replay", "--offset", "0", "--execute")
    assert replayed.returncode == 1, replayed
    assert "is paused" in replayed.stderr
    assert sum((await end_offsets(settings.kafka.bootstrap_servers, topic)).values()) == 0
    async with engine.begin() as connection:
        await intake.resume(connection, topic, partitions)
    partition, _ = await replay_dead_letter(settings.kafka, engine, 0)
    assert partition == partition_for(customer.encode(), partitions)


async def letters_on_the_dlq(settings: Settings, count: int, customer: str) -> None:
    """Dead letters as a worker writes them: the original headers, then the provenance."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers)
    await producer.start()
    try:
        for n in range(count):
            provenance = {
                dlq.H_TOPIC: settings.kafka.orders_topic,
                dlq.H_PARTITION: "0",
                dlq.H_OFFSET: str(n),
                dlq.H_TIMESTAMP: str(int(time.time() * 1000)),
                dlq.H_TIMESTAMP_TYPE: str(contract.LOG_APPEND_TIME),
                dlq.H_ERROR_CLASS: "PoisonRecordError",
                dlq.H_ERROR_MESSAGE: "not JSON",
                dlq.H_WORKER: "w-test",
            }
            await producer.send_and_wait(
                settings.kafka.dlq_topic,
                b"{broken",
                key=customer.encode(),
                headers=[(k, v.encode()) for k, v in provenance.items()],
            )
    finally:
        await producer.stop()


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def orders_command(
    settings: Settings, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [ORDERS, *args],
        env=settings_env(settings, **env),
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_dlq_commands_with_kafka_unreachable_fail_fast_with_a_clear_error(
    settings: Settings, engine: AsyncEngine
) -> None:
    away = f"127.0.0.1:{closed_port()}"
    kafka = settings.kafka.model_copy(update={"bootstrap_servers": away})
    started = time.monotonic()
    with pytest.raises(KafkaCommandError, match=away):
        await list_dead_letters(kafka)
    with pytest.raises(KafkaCommandError, match=away):
        await replay_dead_letter(kafka, engine, 0)

    listed = await orders_command(settings, "dlq", "list", KAFKA_BOOTSTRAP_SERVERS=away)
    replayed = await orders_command(
        settings, "dlq", "replay", "--offset", "0", KAFKA_BOOTSTRAP_SERVERS=away
    )
    assert time.monotonic() - started < settings.kafka.request_timeout_ms / 1000 * 4
    for result in (listed, replayed):
        assert result.returncode == 1, result
        assert f"orders: connecting: Kafka at {away}" in result.stderr
        assert "Traceback" not in result.stderr
    # The quarantine, in PostgreSQL, is still listed.
    assert "0 of 0 quarantined record(s)" in listed.stdout


async def test_dlq_list_after_delete_records_starts_at_the_new_log_start(
    settings: Settings, engine: AsyncEngine, run_id: str
) -> None:
    await letters_on_the_dlq(settings, 5, f"{run_id}-x")
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    await admin.start()
    try:
        tp = TopicPartition(settings.kafka.dlq_topic, 0)
        assert await admin.delete_records({tp: RecordsToDelete(before_offset=3)}) == {tp: 3}
    finally:
        await admin.close()

    page = await list_dead_letters(settings.kafka, 0)
    assert (page.asked, page.start, page.log_start, page.log_end) == (0, 3, 3, 5)
    assert page.moved_to_log_start
    assert [letter.offset for letter in page.letters] == [3, 4]
    assert [letter.origin for letter in page.letters] == [
        f"{settings.kafka.orders_topic}/0@3",
        f"{settings.kafka.orders_topic}/0@4",
    ]

    async with asyncio.timeout(5):  # at or after the log end: nothing, at once
        assert (await list_dead_letters(settings.kafka, 5)).letters == []
        assert (await list_dead_letters(settings.kafka, 99)).letters == []
    with pytest.raises(
        ReplayRefusedError, match=r"dead letter 1 no longer exists.*starts at offset 3"
    ):
        await replay_dead_letter(settings.kafka, engine, 1)
    with pytest.raises(ReplayRefusedError, match=r"no dead letter at offset 5.*ends at offset 5"):
        await replay_dead_letter(settings.kafka, engine, 5)

    shown = await orders_command(settings, "dlq", "list")
    assert shown.returncode == 0, shown
    assert "offset 0 is below the log start" in shown.stdout
    assert "2 dead letter(s) shown from offset 3" in shown.stdout
    refused = await orders_command(settings, "dlq", "replay", "--offset", "1", "--execute")
    assert refused.returncode == 1
    assert "orders: dead letter 1 no longer exists" in refused.stderr


async def kafka_groups(settings: Settings) -> set[str]:
    """The consumer groups Kafka knows (what kafka-consumer-groups --list shows)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    await admin.start()
    try:
        return {group for group, _ in await admin.list_consumer_groups()}
    finally:
        await admin.close()


async def test_a_group_delete_is_refused_while_workers_run_then_the_group_starts_afresh(
    settings: Settings, engine: AsyncEngine, run_id: str
) -> None:
    group, topic = settings.worker.group_id, settings.kafka.orders_topic
    expected = await orders_accepted(settings, customers_for(run_id, 8), per_customer=5)
    async with worker_running(settings, engine):
        assert await wait_until_stored(engine, expected) == 40
        plan = await plan_delete(settings, engine, group)
        assert len(plan.members) == 1
        with pytest.raises(GroupDeleteRefusedError, match="1 active member"):
            await delete_group(settings, engine, group)
        # Past that check (a member joining just after it), Kafka itself refuses.
        async with admin_client(settings.kafka) as admin:
            with pytest.raises(GroupDeleteRefusedError, match="NON_EMPTY_GROUP"):
                await delete_kafka_group(admin, group)
        refused = await orders_command(settings, "offsets", "delete", "--execute")
        assert refused.returncode == 1, refused
        assert f"orders: group {group} has 1 active member(s)" in refused.stderr
        assert "Traceback" not in refused.stderr
    positions = await stored_positions(engine, group, topic)
    ends = non_empty(await end_offsets(settings.kafka.bootstrap_servers, topic))
    assert positions == ends  # nothing deleted by the refusals
    assert non_empty(await committed_offsets(settings)) == ends

    # The plan, with the group stopped, shows both places and changes nothing.
    planned = await orders_command(settings, "offsets", "delete")
    assert planned.returncode == 0, planned
    assert f"group {group}: positions in PostgreSQL (the truth): {len(ends)}" in planned.stdout
    assert f"offsets committed in Kafka (the mirror): {len(ends)}" in planned.stdout
    assert "active members: 0" in planned.stdout
    assert "plan only" in planned.stdout
    assert await stored_positions(engine, group, topic) == positions
    assert group in await kafka_groups(settings)

    deleted = await orders_command(settings, "offsets", "delete", "--execute")
    assert deleted.returncode == 0, deleted
    assert f"{len(ends)} position(s) deleted from PostgreSQL" in deleted.stdout
    assert "deleted in Kafka" in deleted.stdout
    assert await stored_positions(engine, group, topic) == {}
    assert await committed_offsets(settings) == {}
    assert group not in await kafka_groups(settings)
    again = await orders_command(settings, "offsets", "delete", "--execute")
    assert again.returncode == 0, again
    assert "nothing to do" in again.stdout

    # No position anywhere: a new worker reads from the log's beginning, stores nothing twice.
    async with worker_running(settings, engine) as fresh:
        assert await eventually(lambda: sum(fresh.stats.positions.values()) == sum(ends.values()))
    assert fresh.stats.records == 40
    assert fresh.stats.inserted == 0
    assert non_empty(await stored_positions(engine, group, topic)) == ends
    assert (await check_ledger(engine, expected)).holds


async def test_a_group_delete_deletes_what_exists_in_either_place(
    settings: Settings, engine: AsyncEngine, run_id: str
) -> None:
    topic = settings.kafka.orders_topic
    only_postgres, only_kafka = f"lab-cli-{run_id}-pg", f"lab-cli-{run_id}-kafka"
    async with engine.begin() as connection:
        for partition in (0, 1):
            await set_position(
                connection,
                group_id=only_postgres,
                topic=topic,
                partition=partition,
                next_offset=0,
                owner="test",
            )
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"x", partition=0)
    finally:
        await producer.stop()
    async with offsets_consumer(settings.kafka, only_kafka) as consumer:  # commits, never joins
        consumer.assign([TopicPartition(topic, 0)])
        await consumer.commit({TopicPartition(topic, 0): OffsetAndMetadata(1, "")})

    pg_plan = await plan_delete(settings, engine, only_postgres)
    assert (len(pg_plan.stored), pg_plan.committed, pg_plan.kafka_state) == (2, {}, "Dead")
    kafka_plan = await plan_delete(settings, engine, only_kafka)
    assert (kafka_plan.stored, kafka_plan.committed) == ([], {TopicPartition(topic, 0): 1})
    assert await delete_group(settings, engine, only_postgres) == Deleted(2, in_kafka=False)
    assert await delete_group(settings, engine, only_kafka) == Deleted(0, in_kafka=True)
    assert only_kafka not in await kafka_groups(settings)
    for group in (only_postgres, only_kafka):
        assert not (await plan_delete(settings, engine, group)).known
    assert await delete_group(settings, engine, f"lab-cli-{run_id}-none") == Deleted(0, False)


async def test_an_offset_reset_of_another_group_moves_only_that_group(
    settings: Settings, engine: AsyncEngine, run_id: str
) -> None:
    """`orders offsets reset --group G`: the analytics and payments groups keep their positions
    in PostgreSQL too; resetting one of them leaves the worker group where it stands."""
    topic, other = settings.kafka.orders_topic, f"ops-{run_id}-other"
    expected = await orders_accepted(settings, customers_for(run_id, 3), per_customer=2)
    async with worker_running(settings, engine):
        assert await wait_until_stored(engine, expected) == 6
    workers_before = await stored_positions(engine, settings.worker.group_id, topic)

    moves = await plan_reset(settings, engine, Target("latest"), None, group=other)
    assert all(move.current is None for move in moves)  # the other group never stored one
    await apply_reset(settings, engine, moves, group=other)

    ends = await end_offsets(settings.kafka.bootstrap_servers, topic)
    assert await stored_positions(engine, other, topic) == ends
    assert await stored_positions(engine, settings.worker.group_id, topic) == workers_before
    await delete_group(settings, engine, other)
