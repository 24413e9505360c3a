"""The environment that reproduces a Settings object in a child process.

The lab starts consumers it can kill -9 (and the tests start `orders` commands) as separate
processes; each must see exactly the configuration of its parent, including values the parent
got from code rather than from its own environment (a test's database, a lab's topic).
"""

from __future__ import annotations

import os

from pydantic_settings import BaseSettings

from app.settings import Settings

_PREFIXES = (
    "KAFKA_",
    "DATABASE_",
    "API_",
    "WORKER_",
    "AUTH_",
    "METRICS_",
    "ANALYTICS_",
    "GATEWAY_",
    "PAYMENTS_",
    "ORDERS_FAULT",
)


def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment variables that reproduce `settings` in a child process."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(_PREFIXES)}
    groups = (
        settings.kafka,
        settings.database,
        settings.api,
        settings.worker,
        settings.auth,
        settings.metrics,
        settings.analytics,
        settings.gateway,
        settings.payments,
    )
    for group in groups:
        assert isinstance(group, BaseSettings)
        prefix = str(group.model_config.get("env_prefix", ""))
        for name, value in group.model_dump(mode="json").items():
            if value is not None:  # unset (AUTH_JWKS_URL...): absent, not the text "None"
                env[f"{prefix}{name}".upper()] = str(value)
    env["LOG_LEVEL"] = settings.log_level
    env.update(extra)
    return env
