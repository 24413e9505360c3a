"""Create the project's topics idempotently, and hold existing ones to the configs we rely on.

The broker runs with auto topic creation off. A topic that already exists (made by hand, by an
older version, by another tool) is not trusted: the configs the guarantees depend on are described
and set where they differ, each change logged.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError, for_code
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Boolean, Int8, Int16, Int32, Schema, String

from app.errors import OrdersError
from app.kafka_security import kafka_client_security
from app.settings import KafkaSettings, Settings

log = logging.getLogger(__name__)

DESCRIBE_RETRY_S = 5.0
# DescribeConfigs' config_source values (KIP-226).
TOPIC_OVERRIDE = 1
_SOURCES = {
    1: "topic override",
    2: "broker override",
    3: "cluster-wide broker default",
    4: "broker's server.properties",
    5: "Kafka's default",
}


class TopicConfigError(OrdersError):
    """A topic config the guarantees depend on could not be read or set."""


@dataclass(frozen=True)
class ConfigChange:
    config: str
    old: str | None
    old_source: str
    new: str

    def __str__(self) -> str:
        return f"{self.config}: {self.old} ({self.old_source}) -> {self.new}"


@dataclass(frozen=True)
class TopicReport:
    name: str
    created: bool
    partitions: int
    changes: tuple[ConfigChange, ...] = ()


def topic_configs(settings: KafkaSettings) -> dict[str, str]:
    return {
        "min.insync.replicas": str(settings.min_insync_replicas),
        # An out-of-sync replica must never become leader: it would drop acknowledged orders.
        "unclean.leader.election.enable": "false",
        # The broker's clock stamps every record: the API and the worker both compare that
        # append time with the order's acceptance deadline (see app.contract.appended_in_time).
        "message.timestamp.type": "LogAppendTime",
    }


async def ensure_topics(
    settings: KafkaSettings, payments_topic: str | None = None
) -> list[TopicReport]:
    """Create `orders` and its dead-letter topic if missing, set the configs we rely on where
    an existing topic differs, and report what exists and what changed. `payments_topic`
    (`orders payments`' output) gets the orders topic's partitions and configs: keyed by
    customer too, so a customer's payments stay in order on one partition."""
    wanted_configs = topic_configs(settings)
    wanted = [
        NewTopic(
            settings.orders_topic,
            settings.partitions,
            settings.replication_factor,
            topic_configs=wanted_configs,
        ),
        NewTopic(settings.dlq_topic, 1, settings.replication_factor, topic_configs=wanted_configs),
    ]
    if payments_topic is not None:
        wanted.append(
            NewTopic(
                payments_topic,
                settings.partitions,
                settings.replication_factor,
                topic_configs=wanted_configs,
            )
        )
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=f"{settings.client_id}-admin",
        request_timeout_ms=settings.request_timeout_ms,
        **kafka_client_security(settings),
    )
    await admin.start()
    try:
        response = await admin.create_topics(wanted)
        created = set()
        for name, code, message in response.topic_errors:
            error = for_code(code)
            if code == 0:
                created.add(name)
            elif error is not TopicAlreadyExistsError:
                msg = f"could not create topic {name}: {error.__name__}: {message}"
                raise error(msg)
        described = await _described(admin, [topic.name for topic in wanted])
        reports = []
        for t in described:
            name = t["topic"]
            # A topic created just now holds exactly the configs it was created with.
            changes = (
                () if name in created else await enforce_topic_configs(admin, name, wanted_configs)
            )
            reports.append(TopicReport(name, name in created, len(t["partitions"]), tuple(changes)))
    finally:
        await admin.close()
    for report in reports:
        if report.name == settings.orders_topic and report.partitions != settings.partitions:
            # Adding partitions would move customers to other partitions and break their order.
            log.warning(
                "topic %s has %d partitions, settings ask for %d; left unchanged",
                report.name,
                report.partitions,
                settings.partitions,
            )
    return reports


async def _described(admin: AIOKafkaAdminClient, names: list[str]) -> list[Any]:
    """The topics' metadata, asked again for a few seconds while one shows no partitions: a
    broker answers so for a topic created a moment ago, before its metadata has settled."""
    deadline = asyncio.get_running_loop().time() + DESCRIBE_RETRY_S
    while True:
        described: list[Any] = await admin.describe_topics(names)
        settled = all(t["partitions"] for t in described)
        if settled or asyncio.get_running_loop().time() >= deadline:
            return described
        await asyncio.sleep(0.2)


async def register_intake(settings: Settings, reports: list[TopicReport]) -> None:
    """Record the orders topic's partition count in intake_state: the count every API process
    holds its producer to (app/api/intake.py). A registered count is never replaced here: one
    that differs from the topic's (its partitions were added without `orders topics grow`, or a
    growth did not finish) is refused, naming the command that registers it safely (it pauses
    intake and drains the workers first; re-registering alone would reopen intake with customers
    moved and their earlier orders maybe still unstored)."""
    from app.db import intake
    from app.db.engine import create_engine

    topic = settings.kafka.orders_topic
    [orders] = [report for report in reports if report.name == topic]
    engine = create_engine(settings.database)
    try:
        async with engine.begin() as connection:
            state = await intake.register_topic(connection, topic, orders.partitions)
    finally:
        await engine.dispose()
    if state.partitions != orders.partitions:
        msg = (
            f"topic {topic} has {orders.partitions} partitions but intake_state registers "
            f"{state.partitions}, and the API refuses orders until they agree. Run `orders topics "
            f"grow --partitions {orders.partitions} --execute`: it pauses intake, waits until the "
            f"workers have stored everything, and registers {orders.partitions} (README, "
            "'Growing the orders topic')"
        )
        raise OrdersError(msg)
    log.info("topic %s: intake registered with %d partitions", topic, orders.partitions)


async def enforce_topic_configs(
    admin: AIOKafkaAdminClient, topic: str, wanted: dict[str, str]
) -> list[ConfigChange]:
    """Set each wanted config that the topic does not hold as its own override, one at a time
    (so a refusal names the config); every other config of the topic is left as it is.

    A value equal to the wanted one but inherited from the broker is pinned on the topic too:
    a later change of the broker's default must not quietly change this topic's guarantees.
    """
    current = await describe_topic_configs(admin, topic, list(wanted))
    changes = []
    for name, value in wanted.items():
        old, source = current.get(name, (None, 0))
        if old == value and source == TOPIC_OVERRIDE:
            continue
        await set_topic_config(admin, topic, name, value)
        change = ConfigChange(name, old, _SOURCES.get(source, f"source {source}"), value)
        # Pinning an inherited value changes nothing today; a different value is worth a warning.
        log.log(
            logging.INFO if old == value else logging.WARNING, "topic %s: set %s", topic, change
        )
        changes.append(change)
    return changes


async def describe_topic_configs(
    admin: AIOKafkaAdminClient, topic: str, names: list[str]
) -> dict[str, tuple[str | None, int]]:
    """The named configs of a topic: their value and where it comes from (config_source).

    A retriable error (a topic another process created a moment ago, not yet known to the
    broker that answers) is retried for a few seconds.
    """
    resource = ConfigResource(ConfigResourceType.TOPIC, topic, dict.fromkeys(names))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DESCRIBE_RETRY_S
    while True:
        [response] = await admin.describe_configs([resource])
        [described] = response.to_object()["resources"]
        if not described["error_code"]:
            break
        error = for_code(described["error_code"])
        if not error.retriable or loop.time() >= deadline:
            msg = f"could not read the configs of topic {topic}: {_explain(error, described)}"
            raise TopicConfigError(msg)
        await asyncio.sleep(0.2)
    return {
        entry["config_names"]: (entry["config_value"], entry["config_source"])
        for entry in described["config_entries"]
    }


async def set_topic_config(admin: AIOKafkaAdminClient, topic: str, name: str, value: str) -> None:
    """Set one config of a topic with IncrementalAlterConfigs, which changes that config alone.

    aiokafka's `alter_configs` sends the legacy AlterConfigs, which replaces the topic's whole set
    of overrides (resetting retention.ms and the like to the broker's defaults): not used here.
    """
    request = IncrementalAlterConfigsRequest(
        [(int(ConfigResourceType.TOPIC), topic, [(name, _OP_SET, value)])]
    )
    # aiokafka's admin has no public way to send a request it does not know.
    response = await admin._send_request(request)
    for answer in response.to_object()["responses"]:
        if answer["error_code"]:
            error = for_code(answer["error_code"])
            msg = f"could not set {name}={value} on topic {topic}: {_explain(error, answer)}"
            raise TopicConfigError(msg)


def _explain(error: type[Exception], answer: dict[str, Any]) -> str:
    message = answer.get("error_message")
    return f"{error.__name__}: {message}" if message else error.__name__


# --- IncrementalAlterConfigs (KIP-339, API key 44) v0, which aiokafka 0.14 does not define ---

_OP_SET = 0


class IncrementalAlterConfigsResponse_v0(Response):  # type: ignore[misc]
    API_KEY = 44
    API_VERSION = 0
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "responses",
            Array(
                ("error_code", Int16),
                ("error_message", String("utf-8")),
                ("resource_type", Int8),
                ("resource_name", String("utf-8")),
            ),
        ),
    )


class IncrementalAlterConfigsRequest_v0(RequestStruct):  # type: ignore[misc]
    API_KEY = 44
    API_VERSION = 0
    RESPONSE_TYPE = IncrementalAlterConfigsResponse_v0
    SCHEMA = Schema(
        (
            "resources",
            Array(
                ("resource_type", Int8),
                ("resource_name", String("utf-8")),
                (
                    "configs",
                    Array(
                        ("name", String("utf-8")),
                        ("config_operation", Int8),
                        ("value", String("utf-8")),
                    ),
                ),
            ),
        ),
        ("validate_only", Boolean),
    )


class IncrementalAlterConfigsRequest(Request[IncrementalAlterConfigsRequest_v0]):  # type: ignore[misc]
    API_KEY = 44

    def __init__(self, resources: list[Any], validate_only: bool = False) -> None:
        self._resources = resources
        self._validate_only = validate_only

    def build(self, request_struct_class: type[Any]) -> Any:
        return request_struct_class(self._resources, self._validate_only)
