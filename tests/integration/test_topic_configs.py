"""`orders migrate` holds existing topics to the configs the guarantees depend on."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from app.settings import KafkaSettings
from app.topics import (
    TOPIC_OVERRIDE,
    TopicConfigError,
    describe_topic_configs,
    ensure_topics,
    set_topic_config,
    topic_configs,
)
from tests.integration.conftest import make_settings
from tests.integration.endpoints import Endpoints
from tests.integration.processes import settings_env

ORDERS = str(Path(sys.executable).with_name("orders"))
LOG_APPEND_TIME = 1
CUSTOM_RETENTION = "123456789"


async def topics_made_by_hand(kafka: KafkaSettings) -> None:
    """As an older version or an operator would have made them: CreateTime, a retention of
    their own, nothing else set."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    await admin.start()
    try:
        own = {"message.timestamp.type": "CreateTime", "retention.ms": CUSTOM_RETENTION}
        response = await admin.create_topics(
            [
                NewTopic(kafka.orders_topic, kafka.partitions, 1, topic_configs=own),
                NewTopic(kafka.dlq_topic, 1, 1, topic_configs=own),
            ]
        )
        assert all(code == 0 for _, code, _ in response.topic_errors)
    finally:
        await admin.close()


async def configs_of(kafka: KafkaSettings, topic: str) -> dict[str, tuple[str | None, int]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    await admin.start()
    try:
        names = [*topic_configs(kafka), "retention.ms"]
        return await describe_topic_configs(admin, topic, names)
    finally:
        await admin.close()


async def settled_configs(kafka: KafkaSettings, topic: str) -> dict[str, tuple[str | None, int]]:
    """The topic's configs once the change reached the broker that answers (shortly after the
    controller accepted it)."""
    async with asyncio.timeout(15):
        while True:
            described = await configs_of(kafka, topic)
            if described["message.timestamp.type"][0] == "LogAppendTime":
                return described
            await asyncio.sleep(0.1)


async def test_migrate_sets_what_an_existing_topic_lacks_and_leaves_its_other_configs(
    endpoints: Endpoints, database_url: str
) -> None:
    settings = make_settings(endpoints, database_url)
    kafka = settings.kafka
    await topics_made_by_hand(kafka)

    migrated = await asyncio.to_thread(
        subprocess.run,
        [ORDERS, "migrate"],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert migrated.returncode == 0, migrated
    for topic in (kafka.orders_topic, kafka.dlq_topic):
        said = f"topic {topic}: set message.timestamp.type: CreateTime (topic override) -> "
        assert said + "LogAppendTime" in migrated.stderr
        assert f"topic {topic}: exists, " in migrated.stderr
        assert "set 3 config(s)" in migrated.stderr  # the other two pinned on the topic
    assert "retention.ms" not in migrated.stderr

    wanted = topic_configs(kafka)
    for topic in (kafka.orders_topic, kafka.dlq_topic):
        described = await settled_configs(kafka, topic)
        # Every wanted config is now the topic's own, and the custom retention survived (the
        # legacy AlterConfigs would have reset it to the broker's default).
        assert {name: described[name] for name in wanted} == {
            name: (value, TOPIC_OVERRIDE) for name, value in wanted.items()
        }
        assert described["retention.ms"] == (CUSTOM_RETENTION, TOPIC_OVERRIDE)

    again = await ensure_topics(kafka)
    assert [report.changes for report in again] == [(), ()]

    # What the configs are for: the broker's clock now stamps what is appended.
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers)
    await producer.start()
    try:
        sent = await producer.send_and_wait(kafka.orders_topic, b"{}", key=b"c-1")
    finally:
        await producer.stop()
    assert sent.timestamp_type == LOG_APPEND_TIME


async def test_a_config_the_broker_refuses_names_the_topic_the_config_and_the_value(
    endpoints: Endpoints, run_id: str
) -> None:
    kafka = KafkaSettings(
        bootstrap_servers=endpoints.kafka_bootstrap,
        orders_topic=f"orders-{run_id}",
        dlq_topic=f"orders-{run_id}.DLQ",
    )
    await ensure_topics(kafka)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    await admin.start()
    try:
        with pytest.raises(TopicConfigError) as refused:
            await set_topic_config(admin, kafka.orders_topic, "message.timestamp.type", "Sundial")
        with pytest.raises(TopicConfigError, match="no-such-topic"):
            await describe_topic_configs(admin, f"no-such-topic-{run_id}", ["retention.ms"])
    finally:
        await admin.close()
    assert f"message.timestamp.type=Sundial on topic {kafka.orders_topic}" in str(refused.value)
    assert "InvalidConfigurationError" in str(refused.value)
