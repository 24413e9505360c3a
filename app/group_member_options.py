"""The options every consumer-group member of the project shares (the order workers, analytics,
payments): where the brokers are, how it authenticates, and the group-membership timings,
which all groups take from WORKER_* so that one set of numbers describes how members behave."""

from __future__ import annotations

from typing import Any

from app.kafka_security import kafka_client_security
from app.settings import Settings

# How often a member asks for the topic's metadata again. A new partition (`orders topics grow`)
# is assigned only once a member has seen it; aiokafka's default (5 minutes) would leave the
# orders placed on it waiting that long. One metadata request per member every 30 s.
METADATA_MAX_AGE_MS = 30_000


def group_member_options(settings: Settings) -> dict[str, Any]:
    kafka, worker = settings.kafka, settings.worker
    return {
        "bootstrap_servers": kafka.bootstrap_servers,
        "session_timeout_ms": worker.session_timeout_ms,
        "heartbeat_interval_ms": worker.heartbeat_interval_ms,
        "max_poll_interval_ms": worker.max_poll_interval_ms,
        "rebalance_timeout_ms": worker.rebalance_timeout_ms,
        "request_timeout_ms": kafka.request_timeout_ms,
        "metadata_max_age_ms": METADATA_MAX_AGE_MS,
        **kafka_client_security(kafka),
    }
