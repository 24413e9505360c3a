"""The key-ordered scheduler over a real topic, charging a real `orders gateway` process that
fails 20% of calls (503) and leaves 5% unanswered after charging: every order charged exactly
once, each customer's charges in offset order, commits only up to the watermark."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from app import contract
from app.payments.gateway_client import GatewayClient, charge_until_final
from app.payments.key_ordered import KeyOrderedScheduler
from app.payments.order_charges import charge_for
from app.settings import KafkaSettings
from app.topics import ensure_topics
from app.worker.fetch_positions import Record
from tests.integration.direct import payable_order
from tests.integration.endpoints import Endpoints
from tests.integration.kafka_tools import end_offsets
from tests.integration.processes import GatewayProcess

ORDERS_PER_RUN = 400
CUSTOMERS = 40


@pytest.fixture
def flaky_gateway(tmp_path: Path) -> Iterator[str]:
    """`orders gateway`, 20 ms per call, 20% errors, 5% answers held past the client's timeout."""
    with GatewayProcess(tmp_path, latency_ms=20, error_rate=0.2, timeout_rate=0.05) as url:
        yield url


async def fill(bootstrap: str, topic: str, run: str) -> dict[str, list[str]]:
    """Orders of CUSTOMERS customers, and a poison record; each customer's ids in offset order."""
    per_customer: dict[str, list[str]] = {}
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        sent = []
        for n in range(ORDERS_PER_RUN):
            order = payable_order(f"{run}-{n % CUSTOMERS}")
            value, headers = contract.encode(order, f"req-{n}")
            per_customer.setdefault(order.customer_id, []).append(str(order.order_id))
            sent.append(await producer.send(topic, value, key=order.key, headers=headers))
        sent.append(await producer.send(topic, b"not an order", key=f"{run}-0".encode()))
        async with asyncio.timeout(30):
            await asyncio.gather(*sent)
    finally:
        await producer.stop()
    return per_customer


async def test_every_order_charged_once_in_each_customers_order_through_a_flaky_gateway(
    endpoints: Endpoints, flaky_gateway: str
) -> None:
    run = uuid.uuid4().hex[:8]
    kafka = KafkaSettings(
        bootstrap_servers=endpoints.kafka_bootstrap,
        orders_topic=f"payments-sched-{run}",
        dlq_topic=f"payments-sched-{run}.DLQ",
    )
    await ensure_topics(kafka)
    topic, group = kafka.orders_topic, f"payments-sched-{run}"
    try:
        per_customer = await fill(kafka.bootstrap_servers, topic, run)
        ends = await end_offsets(kafka.bootstrap_servers, topic)
        attempts: list[object] = []
        unfinished: dict[int, set[int]] = {p: set() for p in ends}  # submitted, not yet done
        held_commits = 0  # commits made while a record was unfinished

        async with GatewayClient(flaky_gateway, timeout_s=0.5, max_connections=32) as client:

            async def charge(record: Record) -> None:
                request = charge_for(record)  # None for the poison record: nothing to charge
                if request is not None:
                    await charge_until_final(
                        client,
                        request,
                        backoff_initial_s=0.01,
                        backoff_max_s=0.1,
                        on_attempt=lambda _, outcome: attempts.append(outcome),
                    )
                unfinished[record.partition].discard(record.offset)

            scheduler: KeyOrderedScheduler[Record] = KeyOrderedScheduler(
                charge, max_in_flight=32, max_buffered=64
            )
            consumer = AIOKafkaConsumer(
                bootstrap_servers=kafka.bootstrap_servers,
                group_id=group,
                enable_auto_commit=False,
                isolation_level="read_committed",
            )
            await consumer.start()
            try:
                tps = [TopicPartition(topic, p) for p in ends]
                consumer.assign(tps)
                await consumer.seek_to_beginning(*tps)
                async with asyncio.timeout(120):  # never hang: 400 orders take ~10 s
                    while scheduler.watermarks() != {p: e for p, e in ends.items() if e}:
                        batch = await consumer.getmany(timeout_ms=100, max_records=50)
                        for tp, records in batch.items():
                            for record in records:
                                assert await scheduler.submit(record)
                                # Its task has not run yet: submit only creates it.
                                unfinished[tp.partition].add(record.offset)
                            scheduler.fetched_to(tp.partition, await consumer.position(tp))
                        marks = scheduler.watermarks()
                        for partition, mark in marks.items():
                            # The lowest unfinished offset, else the end of what was fetched.
                            waiting = unfinished[partition]
                            if waiting:
                                assert mark == min(waiting), (partition, mark, min(waiting))
                            assert mark <= ends[partition]
                        if marks:  # the watermark and nothing beyond
                            await consumer.commit(
                                {
                                    TopicPartition(topic, p): OffsetAndMetadata(m, "")
                                    for p, m in marks.items()
                                }
                            )
                            held = [p for p, m in marks.items() if m in unfinished[p]]
                            if held:  # the broker holds a commit below work still running
                                tp = TopicPartition(topic, held[0])
                                assert await consumer.committed(tp) == marks[held[0]]
                                held_commits += 1
                        assert not scheduler.failures
                committed = {tp.partition: await consumer.committed(tp) for tp in tps}
            finally:
                await scheduler.close(5)
                await consumer.stop()

        async with httpx.AsyncClient(base_url=flaky_gateway, timeout=10) as http:
            stats = (await http.get("/stats")).json()
            charged = {
                customer: (await http.get(f"/customers/{customer}/charges")).json()["order_ids"]
                for customer in per_customer
            }
    finally:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
        await admin.start()
        try:
            await admin.delete_topics([topic, kafka.dlq_topic])
        finally:
            await admin.close()

    assert stats["charges"] == ORDERS_PER_RUN, stats
    assert stats["orders_charged_more_than_once"] == 0
    assert stats["injected_errors"] > 0, "the gateway's errors were retried"
    assert stats["injected_timeouts"] > 0, "timed-out charges were retried"
    assert stats["replays"] >= stats["injected_timeouts"], "a retry after a timeout replays"
    # Every call the gateway saw was an attempt; an attempt whose client timed out before the
    # gateway read its body (uvicorn busy with a burst) never reached the gateway's counter.
    assert len(attempts) >= stats["calls"], "every call seen as an attempt"
    assert held_commits > 0, "no commit was made while a record was still unfinished"
    assert stats["customer_overlaps"] == 0, "a customer's next charge began before the last ended"
    assert charged == per_customer, "each customer's charges in offset order"
    assert committed == {p: (e if e else None) for p, e in ends.items()}
