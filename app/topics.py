"""Create the project's topics idempotently (the broker runs with auto topic creation off)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from app.settings import KafkaSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopicReport:
    name: str
    created: bool
    partitions: int


def topic_configs(settings: KafkaSettings) -> dict[str, str]:
    return {
        "min.insync.replicas": str(settings.min_insync_replicas),
        # An out-of-sync replica must never become leader: it would drop acknowledged orders.
        "unclean.leader.election.enable": "false",
        # The broker's clock stamps every record: the API and the worker both compare that
        # append time with the order's acceptance deadline (see app.contract.appended_in_time).
        "message.timestamp.type": "LogAppendTime",
    }


async def ensure_topics(settings: KafkaSettings) -> list[TopicReport]:
    """Create `orders` and its dead-letter topic if missing; report what exists."""
    wanted = [
        NewTopic(
            settings.orders_topic,
            settings.partitions,
            settings.replication_factor,
            topic_configs=topic_configs(settings),
        ),
        NewTopic(
            settings.dlq_topic,
            1,
            settings.replication_factor,
            topic_configs=topic_configs(settings),
        ),
    ]
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=f"{settings.client_id}-admin",
        request_timeout_ms=settings.request_timeout_ms,
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
        described = await admin.describe_topics([topic.name for topic in wanted])
        reports = [
            TopicReport(t["topic"], t["topic"] in created, len(t["partitions"])) for t in described
        ]
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
