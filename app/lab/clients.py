"""What every Kafka client of the lab is given: the broker, its security, a client id that names
the lab's client (`<client_id>-lab-<name>`), and the settings' request timeout."""

from __future__ import annotations

from typing import Any

from app.kafka_security import kafka_client_security
from app.settings import KafkaSettings


def lab_client_options(
    kafka: KafkaSettings, name: str, *, request_timeout_ms: int | None = None
) -> dict[str, Any]:
    """aiokafka keyword arguments shared by the lab's producers, consumers and admin clients
    (`request_timeout_ms`: a longer one than the settings', for clients that must outlast a
    broker restart)."""
    return {
        "bootstrap_servers": kafka.bootstrap_servers,
        "client_id": f"{kafka.client_id}-lab-{name}",
        "request_timeout_ms": request_timeout_ms or kafka.request_timeout_ms,
        **kafka_client_security(kafka),
    }
