"""Kafka secured: SASL_SSL with SCRAM-SHA-512, and what each service principal may do.

One broker of this module's own, started by the same code as `KAFKA_SECURITY=sasl_ssl make up`
(scripts/local_services/kafka.py, kafka_security.py, scripts/kafka/{tls,acls}.sh), with the ACLs
granted on name prefixes so that each scenario has fresh topics and a fresh group. Every client
here is built by the app's own code from the settings a credentials file gives
(`<folder>/credentials/<principal>.env`); the tests' other modules keep using the PLAINTEXT
broker of `make up`. The ACLs are also listed, and held to the exact set scripts/kafka/acls.sh
grants (ACLS below): a privilege too many fails as surely as one missing.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import ssl
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.conn import create_conn
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
)
from aiokafka.helpers import create_ssl_context
from aiokafka.structs import ConsumerRecord, TopicPartition
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app import contract
from app.db.tables import orders
from app.kafka_security import kafka_client_security
from app.operations.dlq import list_dead_letters, replay_dead_letter
from app.operations.kafka_clients import KafkaCommandError
from app.operations.lag import group_lag
from app.operations.offsets import Target, apply_reset, plan_reset
from app.publisher import OrderPublisher, build_producer, close_producer
from app.settings import DatabaseSettings, KafkaSettings, Settings, WorkerSettings
from app.topics import ensure_topics
from tests.integration.throwaway import ThrowawayCluster
from tests.integration.waiting import eventually
from tests.integration.worker_harness import worker_running

BASE_PORT = 19592  # broker 19592, controller 19593
PREFIXES = ("t-orders-", "t-dlq-", "t-workers-")  # orders topic, DLQ topic, group
ORDERS, DLQ, GROUP = PREFIXES
# The other groups' and the payments topic's names: AclScope's defaults, granted as prefixes
# too, so that `<name>-<run>` is fresh per scenario and still covered.
ANALYTICS_GROUP, PAYMENTS_GROUP, PAYMENTS = "order-analytics", "order-payments", "payments"
# The payments members' transactional ids, f"{group}-{topic}-{partition}": always a prefix.
TRANSACTIONAL_IDS = f"{PAYMENTS_GROUP}-"
ORDERS_CLI = str(Path(sys.executable).with_name("orders"))

# Every ACL of the secured broker, as scripts/kafka/acls.sh grants them (ACL_PATTERN=prefixed):
# (principal, resource type, resource name, pattern type, operation, permission).
ACLS = {
    # The API: produce orders.
    ("User:orders-api", "TOPIC", ORDERS, "PREFIXED", "WRITE", "ALLOW"),
    ("User:orders-api", "TOPIC", ORDERS, "PREFIXED", "DESCRIBE", "ALLOW"),
    # The workers: consume orders in their group, dead-letter poison.
    ("User:orders-worker", "TOPIC", ORDERS, "PREFIXED", "READ", "ALLOW"),
    ("User:orders-worker", "TOPIC", ORDERS, "PREFIXED", "DESCRIBE", "ALLOW"),
    ("User:orders-worker", "TOPIC", DLQ, "PREFIXED", "WRITE", "ALLOW"),
    ("User:orders-worker", "TOPIC", DLQ, "PREFIXED", "DESCRIBE", "ALLOW"),
    ("User:orders-worker", "GROUP", GROUP, "PREFIXED", "READ", "ALLOW"),
    ("User:orders-worker", "GROUP", GROUP, "PREFIXED", "DESCRIBE", "ALLOW"),
    # Analytics: consume orders in its own group.
    ("User:orders-analytics", "TOPIC", ORDERS, "PREFIXED", "READ", "ALLOW"),
    ("User:orders-analytics", "TOPIC", ORDERS, "PREFIXED", "DESCRIBE", "ALLOW"),
    ("User:orders-analytics", "GROUP", ANALYTICS_GROUP, "PREFIXED", "READ", "ALLOW"),
    ("User:orders-analytics", "GROUP", ANALYTICS_GROUP, "PREFIXED", "DESCRIBE", "ALLOW"),
    # Payments: consume orders in its own group, write payments in transactions that carry the
    # consumed offsets. No IDEMPOTENT_WRITE on the cluster: since Kafka 3.0 (KIP-679) WRITE on
    # the transactional id is what a transactional producer needs (the test below proves it).
    ("User:orders-payments", "TOPIC", ORDERS, "PREFIXED", "READ", "ALLOW"),
    ("User:orders-payments", "TOPIC", ORDERS, "PREFIXED", "DESCRIBE", "ALLOW"),
    ("User:orders-payments", "GROUP", PAYMENTS_GROUP, "PREFIXED", "READ", "ALLOW"),
    ("User:orders-payments", "GROUP", PAYMENTS_GROUP, "PREFIXED", "DESCRIBE", "ALLOW"),
    ("User:orders-payments", "TOPIC", PAYMENTS, "PREFIXED", "WRITE", "ALLOW"),
    ("User:orders-payments", "TOPIC", PAYMENTS, "PREFIXED", "DESCRIBE", "ALLOW"),
    ("User:orders-payments", "TRANSACTIONAL_ID", TRANSACTIONAL_IDS, "PREFIXED", "WRITE", "ALLOW"),
    (
        "User:orders-payments",
        "TRANSACTIONAL_ID",
        TRANSACTIONAL_IDS,
        "PREFIXED",
        "DESCRIBE",
        "ALLOW",
    ),
    # The operator: migrate (create, configs), lag, offsets reset, dlq list, dlq replay.
    *(
        ("User:orders-operator", "TOPIC", topic, "PREFIXED", operation, "ALLOW")
        for topic in (ORDERS, DLQ)
        for operation in ("CREATE", "DESCRIBE_CONFIGS", "ALTER_CONFIGS", "READ", "DESCRIBE")
    ),
    ("User:orders-operator", "TOPIC", ORDERS, "PREFIXED", "WRITE", "ALLOW"),
    ("User:orders-operator", "TOPIC", ORDERS, "PREFIXED", "ALTER", "ALLOW"),
    *(
        ("User:orders-operator", "TOPIC", PAYMENTS, "PREFIXED", operation, "ALLOW")
        for operation in ("CREATE", "DESCRIBE_CONFIGS", "ALTER_CONFIGS", "DESCRIBE")
    ),
    ("User:orders-operator", "GROUP", GROUP, "PREFIXED", "READ", "ALLOW"),
    ("User:orders-operator", "GROUP", GROUP, "PREFIXED", "DESCRIBE", "ALLOW"),
    ("User:orders-operator", "GROUP", GROUP, "PREFIXED", "DELETE", "ALLOW"),
    ("User:orders-operator", "GROUP", ANALYTICS_GROUP, "PREFIXED", "DESCRIBE", "ALLOW"),
    ("User:orders-operator", "GROUP", PAYMENTS_GROUP, "PREFIXED", "DESCRIBE", "ALLOW"),
}

# A stand-in on PATH for `java` and `keytool` while the broker is set up: it writes down its
# command line (what `ps` shows every user), then runs the real program.
RECORDING = """#!/usr/bin/env bash
printf '%s\\n' "$*" >>{log}
exec {real} "$@"
"""


@pytest.fixture(scope="module")
def secured_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThrowawayCluster]:
    home = tmp_path_factory.mktemp("secured-kafka") / "cluster"
    cluster = ThrowawayCluster(home, BASE_PORT, security="sasl_ssl", acl_prefixes=PREFIXES)
    recorders = home.parent / "recorders"
    recorders.mkdir()
    for program in ("java", "keytool"):
        real = shutil.which(program)
        assert real, f"{program} is missing"
        recorder = recorders / program
        recorder.write_text(RECORDING.format(log=home.parent / "command-lines.log", real=real))
        recorder.chmod(0o755)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PATH", f"{recorders}:{os.environ['PATH']}")
        cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop_all()


@dataclass(frozen=True)
class Scenario:
    """One scenario's names, and the Kafka settings of each principal (from its credentials)."""

    cluster: ThrowawayCluster
    run: str

    @property
    def group(self) -> str:
        return f"{PREFIXES[2]}{self.run}"

    def kafka(self, principal: str) -> KafkaSettings:
        """The settings the app reads from `set -a; . credentials/<principal>.env`."""
        variables = {
            name.removeprefix("KAFKA_").lower(): value
            for name, value in self.cluster.credentials(principal).items()
        }
        return KafkaSettings(
            **variables,  # type: ignore[arg-type]
            orders_topic=f"{PREFIXES[0]}{self.run}",
            dlq_topic=f"{PREFIXES[1]}{self.run}",
        )

    def settings(self, principal: str, database_url: str) -> Settings:
        return Settings(
            kafka=self.kafka(principal),
            database=DatabaseSettings(url=database_url),
            worker=WorkerSettings(group_id=self.group),
        )

    @property
    def api(self) -> KafkaSettings:
        return self.kafka("orders-api")

    @property
    def worker(self) -> KafkaSettings:
        return self.kafka("orders-worker")

    @property
    def operator(self) -> KafkaSettings:
        return self.kafka("orders-operator")

    @property
    def analytics_group(self) -> str:
        return f"{ANALYTICS_GROUP}-{self.run}"

    @property
    def payments_group(self) -> str:
        return f"{PAYMENTS_GROUP}-{self.run}"

    @property
    def payments_topic(self) -> str:
        return f"{PAYMENTS}-{self.run}"


@pytest.fixture
async def scenario(secured_kafka: ThrowawayCluster) -> Scenario:
    """Fresh topics, created as `orders migrate` does, by the operator's principal."""
    fresh = Scenario(secured_kafka, uuid.uuid4().hex[:8])
    reports = await ensure_topics(fresh.operator)
    assert {r.name: r.created for r in reports} == {
        fresh.operator.orders_topic: True,
        fresh.operator.dlq_topic: True,
    }
    return fresh


def order(customer: str, accept_by: datetime) -> contract.OrderEnvelope:
    items = (contract.OrderLine(sku="sku-1", quantity=2, unit_price=Decimal("3.50")),)
    return contract.OrderEnvelope(
        order_id=contract.new_order_id(),
        customer_id=customer,
        items=items,
        total=contract.order_total(items),
        currency="EUR",
        accepted_at=datetime.now(UTC),
        accept_by=accept_by,
    )


@asynccontextmanager
async def api_publisher(kafka: KafkaSettings) -> AsyncIterator[OrderPublisher]:
    """The API's producer, as its lifespan starts it."""
    publisher = OrderPublisher(kafka, ack_deadline_s=10.0, ack_grace_s=2.0)
    await publisher.start()
    try:
        assert publisher.started, "the API's producer did not connect"
        yield publisher
    finally:
        await publisher.stop()


async def publish(kafka: KafkaSettings, customer: str) -> tuple[contract.OrderEnvelope, int]:
    """One order through the API's publisher; the order and its offset."""
    async with api_publisher(kafka) as publisher:
        envelope = order(customer, publisher.acceptance_deadline(datetime.now(UTC)))
        delivery = await publisher.publish(envelope, request_id=f"req-{customer}")
    assert delivery.offset >= 0
    return envelope, delivery.partition


async def produce(kafka: KafkaSettings, topic: str, value: bytes, key: bytes) -> tuple[int, int]:
    """One record through the producer the app builds (the API's and the DLQ's); its
    partition and offset."""
    producer = build_producer(kafka)
    try:
        async with asyncio.timeout(30):
            await producer.start()
            sent = await producer.send_and_wait(topic, value, key=key)
    finally:
        await close_producer(producer, 10.0)
    return int(sent.partition), int(sent.offset)


@asynccontextmanager
async def consumer_of(
    kafka: KafkaSettings, group: str | None = None, isolation_level: str = "read_uncommitted"
) -> AsyncIterator[AIOKafkaConsumer]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap_servers,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level=isolation_level,
        **kafka_client_security(kafka),
    )
    await consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop()


# --- no password on a command line ---


def test_no_password_went_on_a_command_line_while_the_broker_was_set_up(
    secured_kafka: ThrowawayCluster,
) -> None:
    """Certificates (tls.sh: keytool), storage with the SCRAM users (StorageTool), ACLs
    (acls.sh: AclCommand), the readiness probe, the broker: every java and keytool run."""
    folder = secured_kafka.home.parent
    runs = (folder / "command-lines.log").read_text().splitlines()
    assert any("kafka.tools.StorageTool format" in run for run in runs), runs
    assert sum("-genkeypair" in run for run in runs) == 2, runs
    assert any("AclCommand" in run for run in runs), runs
    passwords = {(folder / "tls" / "store.password").read_text().strip()}
    principals = ("admin", "orders-api", "orders-worker", "orders-operator")
    for principal in (*principals, "orders-analytics", "orders-payments"):
        for line in (folder / "credentials" / f"{principal}.env").read_text().splitlines():
            if line.startswith("KAFKA_SASL_PASSWORD="):
                passwords.add(line.partition("=")[2])
    assert len(passwords) == 7
    assert not [run for run in runs if any(password in run for password in passwords)]


# --- exactly the ACLs that acls.sh grants ---

_ACL_RESOURCE = re.compile(r"ResourcePattern\(resourceType=(\w+), name=(.*?), patternType=(\w+)\)")
_ACL_ENTRY = re.compile(r"\(principal=(.+?), host=(.+?), operation=(\w+), permissionType=(\w+)\)")


def listed_acls(cluster: ThrowawayCluster) -> set[tuple[str, ...]]:
    """Every ACL of the cluster, from Kafka's AclCommand --list as the super user."""
    services = cluster.services
    listing = subprocess.run(
        [
            services.java(),
            *services.TOOL_JVM,
            "-cp",
            services.kafka_classpath(),
            "org.apache.kafka.tools.AclCommand",
            "--bootstrap-server",
            cluster.bootstrap,
            "--command-config",
            str(cluster.home.parent / "credentials" / "admin.properties"),
            "--list",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    acls, resource = set(), None
    for line in listing.stdout.splitlines():
        if found := _ACL_RESOURCE.search(line):
            resource = found.groups()
        elif entry := _ACL_ENTRY.search(line):
            assert resource is not None, listing.stdout
            principal, host, operation, permission = entry.groups()
            assert host == "*", line
            acls.add((principal, resource[0], resource[1], resource[2], operation, permission))
    return acls


def test_the_broker_has_exactly_the_acls_of_acls_sh(secured_kafka: ThrowawayCluster) -> None:
    listed = listed_acls(secured_kafka)
    assert listed - ACLS == set(), "privileges granted beyond acls.sh's"
    assert ACLS - listed == set(), "privileges of acls.sh missing"


# --- who is refused at the door ---


@pytest.fixture(scope="module")
def foreign_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA certificate that did not sign the broker's."""
    folder = tmp_path_factory.mktemp("foreign-ca")
    new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    files = ["-keyout", str(folder / "ca.key"), "-out", str(folder / "ca.crt")]
    subprocess.run(
        ["openssl", "req", "-x509", *new_key, "-days", "1", "-subj", "/CN=another-ca", *files],
        check=True,
        capture_output=True,
    )
    return folder / "ca.crt"


async def connect(port: int = BASE_PORT, **security: object) -> None:
    """Open one connection as every aiokafka client does (TLS, SASL, ApiVersions), then close."""
    async with asyncio.timeout(30):
        connection = await create_conn("127.0.0.1", port, request_timeout_ms=10000, **security)
    connection.close()


async def test_the_right_credentials_connect(scenario: Scenario) -> None:
    """The reference for the refusals below: only the one thing each changes differs."""
    await connect(**kafka_client_security(scenario.api))


async def test_a_plaintext_client_is_refused(scenario: Scenario) -> None:
    with pytest.raises(KafkaConnectionError):
        await connect(security_protocol="PLAINTEXT")


@pytest.mark.parametrize(
    ("username", "password"), [("orders-api", "not-its-password"), ("nobody", "anything")]
)
async def test_a_wrong_password_or_unknown_user_fails_authentication(
    scenario: Scenario, username: str, password: str
) -> None:
    security = kafka_client_security(scenario.api)
    security["sasl_plain_username"], security["sasl_plain_password"] = username, password
    with pytest.raises(SaslAuthenticationFailed):
        await connect(**security)


async def test_a_client_that_trusts_another_ca_refuses_the_broker(
    scenario: Scenario, foreign_ca: Path
) -> None:
    """A broker impersonator with its own certificate would be refused the same way."""
    security = kafka_client_security(scenario.api)
    security["ssl_context"] = create_ssl_context(cafile=foreign_ca)
    with pytest.raises(ssl.SSLCertVerificationError):
        await connect(**security)


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SSL"])
async def test_the_controller_listener_refuses_clients_without_the_brokers_certificate(
    scenario: Scenario, protocol: str
) -> None:
    """Mutual TLS there: a client with the right CA but no certificate of its own is cut off."""
    ca = create_ssl_context(cafile=scenario.api.ssl_cafile)
    with pytest.raises(KafkaConnectionError):
        await connect(BASE_PORT + 1, security_protocol=protocol, ssl_context=ca)


# --- what each principal may do ---


async def test_the_api_places_orders_but_cannot_read_them_or_move_the_group(
    scenario: Scenario,
) -> None:
    api = scenario.api
    _, partition = await publish(api, "customer-api")
    orders_partition = TopicPartition(api.orders_topic, partition)

    async with consumer_of(api) as consumer:
        consumer.assign([orders_partition])
        with pytest.raises(TopicAuthorizationFailedError):
            await consumer.getmany(orders_partition, timeout_ms=5000)

    async with consumer_of(api, scenario.group) as consumer:
        consumer.assign([orders_partition])
        with pytest.raises(GroupAuthorizationFailedError):
            await consumer.commit({orders_partition: 0})

    with pytest.raises(TopicAuthorizationFailedError):
        await produce(api, api.dlq_topic, b"not from the api", b"k")


async def test_the_worker_consumes_in_its_group_and_dead_letters_but_cannot_place_orders(
    scenario: Scenario,
) -> None:
    worker = scenario.worker
    await publish(scenario.api, "customer-worker")

    async with consumer_of(worker, scenario.group) as consumer:
        consumer.subscribe([worker.orders_topic])
        fetched: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = {}
        async with asyncio.timeout(30):
            while not fetched:
                fetched = await consumer.getmany(timeout_ms=1000)
        [(tp, records)] = fetched.items()
        await consumer.commit({tp: len(records)})
        assert await consumer.committed(tp) == len(records)

    assert await produce(worker, worker.dlq_topic, b"poison", b"k") == (0, 0)
    with pytest.raises(TopicAuthorizationFailedError):
        await produce(worker, worker.orders_topic, b"an order that skipped the API", b"k")

    async with consumer_of(worker, f"another-group-{scenario.run}") as consumer:
        consumer.subscribe([worker.orders_topic])
        with pytest.raises(GroupAuthorizationFailedError):
            async with asyncio.timeout(30):
                await consumer.getmany(timeout_ms=5000)


async def test_the_operator_runs_migrate_lag_and_offsets_reset(
    scenario: Scenario, database_url: str, engine: AsyncEngine
) -> None:
    operator = scenario.settings("orders-operator", database_url)
    await publish(scenario.api, "customer-operator")

    # migrate again: both topics exist; their configs are read (DescribeConfigs) and kept.
    again = await ensure_topics(operator.kafka)
    assert {(r.name, r.created, r.changes) for r in again} == {
        (operator.kafka.orders_topic, False, ()),
        (operator.kafka.dlq_topic, False, ()),
    }

    rows = await group_lag(operator, engine)
    assert sum(row.log_end for row in rows) == 1
    assert sum(row.lag for row in rows) == 1

    moves = await plan_reset(operator, engine, Target("latest"), None)
    await apply_reset(operator, engine, moves)  # the group's members, then its offsets
    after = await group_lag(operator, engine)
    assert sum(row.lag for row in after) == 0
    assert {row.committed for row in after if row.log_end} == {1}


async def test_an_order_and_a_poison_record_each_travel_with_their_own_principals(
    scenario: Scenario, database_url: str, engine: AsyncEngine
) -> None:
    """API -> orders -> worker -> PostgreSQL; poison -> DLQ -> `orders dlq list | replay`."""
    envelope, _ = await publish(scenario.api, "customer-e2e")
    # A record that is no order: only a principal allowed to write orders could send it.
    poison = await produce(scenario.api, scenario.api.orders_topic, b"not json", b"customer-e2e")

    async with worker_running(scenario.settings("orders-worker", database_url), engine) as worker:
        stats = worker.stats
        assert await eventually(lambda: stats.inserted == 1 and stats.dead_lettered == 1, 60)
    async with engine.connect() as connection:
        stored = await connection.scalar(
            select(orders.c.customer_id).where(orders.c.order_id == envelope.order_id)
        )
    assert stored == "customer-e2e"

    operator = scenario.operator
    page = await list_dead_letters(operator)
    [letter] = page.letters
    assert letter.value == b"not json"
    assert letter.origin == f"{operator.orders_topic}/{poison[0]}@{poison[1]}"
    partition, offset = await replay_dead_letter(operator, engine, letter.offset)
    assert (partition, offset) == (poison[0], poison[1] + 1)  # its key's partition, appended


# --- a refusal says so ---


async def test_listing_the_dlq_without_the_right_says_not_authorized(
    scenario: Scenario, database_url: str, tmp_path: Path
) -> None:
    """The API's user may not see the DLQ at all: the broker answers as if the topic did not
    exist, and the operator command must not say that it does not."""
    api = scenario.api
    with pytest.raises(KafkaCommandError) as refused:
        await list_dead_letters(api)
    expected = f"not authorized to read topic {api.dlq_topic!r} as user 'orders-api'"
    assert expected in str(refused.value)

    # `orders dlq list` as that user: the same line, and exit code 1.
    variables = scenario.cluster.credentials("orders-api")
    environment = {
        "PATH": os.environ["PATH"],
        "ORDERS_STATE_DIR": str(tmp_path),
        **variables,
        "KAFKA_ORDERS_TOPIC": api.orders_topic,
        "KAFKA_DLQ_TOPIC": api.dlq_topic,
        "WORKER_GROUP_ID": scenario.group,
        "DATABASE_URL": database_url,
    }
    listing = await asyncio.to_thread(
        subprocess.run,
        [ORDERS_CLI, "dlq", "list"],
        env=environment,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert listing.returncode == 1, listing
    assert expected in listing.stderr
    assert "does not exist" not in listing.stderr + listing.stdout


# --- the other two scenarios' members (app/analytics/, app/payments/) ---


async def create_payments_topic(scenario: Scenario) -> str:
    """`orders migrate`'s topics, payments included, by the operator's principal: the orders
    topics exist already (their configs read and kept), the payments topic is created."""
    reports = await ensure_topics(scenario.operator, scenario.payments_topic)
    assert {r.name: r.created for r in reports} == {
        scenario.operator.orders_topic: False,
        scenario.operator.dlq_topic: False,
        scenario.payments_topic: True,
    }
    return scenario.payments_topic


def transactional_producer(kafka: KafkaSettings, transactional_id: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=kafka.bootstrap_servers,
        transactional_id=transactional_id,
        enable_idempotence=True,
        acks="all",
        request_timeout_ms=10000,
        **kafka_client_security(kafka),
    )


async def first_records(
    consumer: AIOKafkaConsumer,
) -> tuple[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
    fetched: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = {}
    async with asyncio.timeout(30):
        while not fetched:
            fetched = await consumer.getmany(timeout_ms=1000)
    [(tp, records)] = fetched.items()
    return tp, records


async def stable_offset(consumer: AIOKafkaConsumer, tp: TopicPartition, wanted: int) -> int | None:
    """The group's committed offset of `tp`, polled until it is `wanted` (for 30 s). An offset
    sent in a transaction becomes fetchable once the coordinator has written the commit marker
    into __consumer_offsets, a moment after EndTxn returns."""
    committed = None
    for _ in range(150):
        committed = await consumer.committed(tp)
        if committed == wanted:
            break
        await asyncio.sleep(0.2)
    return committed


async def test_analytics_consumes_orders_in_its_group_and_nothing_more(
    scenario: Scenario,
) -> None:
    analytics = scenario.kafka("orders-analytics")
    payments_topic = await create_payments_topic(scenario)
    await publish(scenario.api, "customer-analytics")

    # Fast mode: a member of its group that commits what it read (auto-commit's request).
    async with consumer_of(analytics, scenario.analytics_group) as consumer:
        consumer.subscribe([analytics.orders_topic])
        tp, records = await first_records(consumer)
        await consumer.commit({tp: records[-1].offset + 1})
        assert await consumer.committed(tp) == records[-1].offset + 1

    # It reads; it writes nowhere: not payments, not orders, not the DLQ. Allowed WRITE on no
    # topic at all, it is not even given a producer id (KIP-679: an idempotent producer needs
    # WRITE on some topic, or IDEMPOTENT_WRITE on the cluster), before any topic is named.
    for topic in (payments_topic, analytics.orders_topic, analytics.dlq_topic):
        with pytest.raises(ClusterAuthorizationFailedError):
            await produce(analytics, topic, b"not from analytics", b"k")
    # Neither the workers' group nor the payments group is its own.
    for group in (scenario.group, scenario.payments_group):
        async with consumer_of(analytics, group) as consumer:
            consumer.subscribe([analytics.orders_topic])
            with pytest.raises(GroupAuthorizationFailedError):
                async with asyncio.timeout(30):
                    await consumer.getmany(timeout_ms=5000)


async def test_payments_writes_exactly_once_with_its_offsets_in_the_transaction(
    scenario: Scenario,
) -> None:
    """What app/payments does per partition, as its user: read orders read_committed in its
    group, then one transaction holding the payments event and the consumed offset. Only the
    ACLs listed in ACLS are granted: this passing is the proof that no IDEMPOTENT_WRITE on the
    cluster is needed."""
    payments = scenario.kafka("orders-payments")
    payments_topic = await create_payments_topic(scenario)
    await publish(scenario.api, "customer-payments")
    group = scenario.payments_group

    async with consumer_of(payments, group, "read_committed") as consumer:
        consumer.subscribe([payments.orders_topic])
        tp, records = await first_records(consumer)
        producer = transactional_producer(payments, f"{group}-{tp.topic}-{tp.partition}")
        async with asyncio.timeout(60):
            await producer.start()
            try:
                async with producer.transaction():
                    await producer.send_and_wait(payments_topic, b"charged", key=records[0].key)
                    await producer.send_offsets_to_transaction({tp: records[-1].offset + 1}, group)
            finally:
                await producer.stop()
        assert await stable_offset(consumer, tp, records[-1].offset + 1) == records[-1].offset + 1

    # A read_committed reader downstream (the super user here) sees the one event.
    async with consumer_of(scenario.kafka("admin"), None, "read_committed") as reader:
        reader.subscribe([payments_topic])
        _, events = await first_records(reader)
    assert [event.value for event in events] == [b"charged"]


async def test_payments_is_refused_what_its_code_does_not_do(scenario: Scenario) -> None:
    payments = scenario.kafka("orders-payments")
    # A transactional id outside its prefix (another service's, or a typo) is not its own.
    outsider = transactional_producer(payments, f"order-workers-{scenario.run}-0")
    with pytest.raises(TransactionalIdAuthorizationFailed):
        async with asyncio.timeout(60):
            await outsider.start()
    await outsider.stop()
    # It writes payments only: not orders, not the DLQ.
    for topic in (payments.orders_topic, payments.dlq_topic):
        with pytest.raises(TopicAuthorizationFailedError):
            await produce(payments, topic, b"not from payments", b"k")
    # The analytics group is not its own.
    async with consumer_of(payments, scenario.analytics_group) as consumer:
        consumer.subscribe([payments.orders_topic])
        with pytest.raises(GroupAuthorizationFailedError):
            async with asyncio.timeout(30):
                await consumer.getmany(timeout_ms=5000)
