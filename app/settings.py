"""One place for configuration: environment variables (and `.env`), validated at start.

Each group reads its own prefix (`KAFKA_`, `DATABASE_`, `API_`, `WORKER_`), so
`KAFKA_BOOTSTRAP_SERVERS` and `DATABASE_URL` mean what operators expect. With nothing set, the
defaults point at the services `make up` starts on loopback.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, PostgresDsn, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.errors import ConfigurationError


def _group(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=prefix, env_file=".env", extra="ignore")


class KafkaSettings(BaseSettings):
    model_config = _group("KAFKA_")

    bootstrap_servers: str = "127.0.0.1:9092"
    client_id: str = "orders"
    orders_topic: str = "orders"
    dlq_topic: str = "orders.DLQ"
    partitions: int = Field(default=6, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    min_insync_replicas: int = Field(default=1, ge=1)
    # Producer tuning. The API batches per partition itself (app/batching.py): records arriving
    # while a produce request is in flight share the next one, so batches grow with load and
    # linger would only add its delay on top. Raise it to trade latency for fewer requests.
    linger_ms: int = Field(default=0, ge=0)
    max_batch_size: int = Field(default=65536, ge=1024)
    compression_type: Literal["none", "gzip", "lz4", "snappy", "zstd"] = "lz4"
    request_timeout_ms: int = Field(default=10000, ge=1000)

    @model_validator(mode="after")
    def _isr_fits_replicas(self) -> KafkaSettings:
        if self.min_insync_replicas > self.replication_factor:
            msg = (
                f"KAFKA_MIN_INSYNC_REPLICAS ({self.min_insync_replicas}) cannot exceed "
                f"KAFKA_REPLICATION_FACTOR ({self.replication_factor})"
            )
            raise ValueError(msg)
        return self


class DatabaseSettings(BaseSettings):
    model_config = _group("DATABASE_")

    url: PostgresDsn = PostgresDsn("postgresql+asyncpg://orders:orders@127.0.0.1:5432/orders")
    pool_size: int = Field(default=5, ge=1)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    # A frozen process must not keep row locks forever: the server ends its open transaction.
    idle_in_transaction_timeout_s: float = Field(default=30.0, gt=0)

    @field_validator("url")
    @classmethod
    def _asyncpg_driver(cls, url: PostgresDsn) -> PostgresDsn:
        if url.scheme not in {"postgresql+asyncpg", "postgresql", "postgres"}:
            msg = "DATABASE_URL must be a postgresql:// or postgresql+asyncpg:// URL"
            raise ValueError(msg)
        return PostgresDsn(str(url).replace(f"{url.scheme}://", "postgresql+asyncpg://", 1))


class ApiSettings(BaseSettings):
    model_config = _group("API_")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    # The acceptance deadline: an order the broker has not appended within this long after the
    # request arrived is refused (503) and never processed, even if it reaches the log later.
    ack_deadline_s: float = Field(default=5.0, gt=0)
    # How much longer to wait for the acknowledgement of a record appended in time, which is
    # still in flight at the deadline (without it, the answer would be 503 for a stored order).
    ack_grace_s: float = Field(default=2.0, ge=0)
    retry_after_s: int = Field(default=2, ge=1)
    # How long an Idempotency-Key is remembered (app/api/idempotency.py); expired keys are
    # treated as unknown, and purged in the background.
    idempotency_retention_s: float = Field(default=24 * 3600.0, gt=0)


class WorkerSettings(BaseSettings):
    model_config = _group("WORKER_")

    group_id: str = "order-workers"
    max_records: int = Field(default=1000, ge=1)
    fetch_timeout_ms: int = Field(default=500, ge=10)
    session_timeout_ms: int = Field(default=10000, ge=1000)
    heartbeat_interval_ms: int = Field(default=2000, ge=100)
    max_poll_interval_ms: int = Field(default=60000, ge=1000)
    rebalance_timeout_ms: int = Field(default=45000, ge=1000)
    # Upper bound for one batch (DB transaction + Kafka commit); rebalances wait this long for it.
    batch_timeout_s: float = Field(default=20.0, gt=0)
    commit_timeout_s: float = Field(default=5.0, gt=0)
    shutdown_timeout_s: float = Field(default=25.0, gt=0)
    retry_backoff_initial_s: float = Field(default=0.2, gt=0)
    retry_backoff_max_s: float = Field(default=5.0, gt=0)
    # A dead letter the DLQ topic cannot take while it is unreachable fails its batch (retried)
    # for this long; after that it is kept in PostgreSQL's quarantine table instead, so that an
    # unreachable DLQ cannot stall the partitions for longer.
    dlq_unreachable_quarantine_s: float = Field(default=30.0, ge=0)

    @model_validator(mode="after")
    def _rebalance_outlasts_batch(self) -> WorkerSettings:
        # A rebalance waits for the in-flight batch to commit; the broker's rebalance timeout
        # must outlast the worst-case batch or the member is dropped mid-commit.
        if self.rebalance_timeout_ms < self.batch_timeout_s * 1000 * 2:
            msg = "WORKER_REBALANCE_TIMEOUT_MS must be at least twice WORKER_BATCH_TIMEOUT_S"
            raise ValueError(msg)
        if self.max_poll_interval_ms < self.rebalance_timeout_ms:
            msg = "WORKER_MAX_POLL_INTERVAL_MS must be at least WORKER_REBALANCE_TIMEOUT_MS"
            raise ValueError(msg)
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            msg = (
                "WORKER_HEARTBEAT_INTERVAL_MS must be at most a third of WORKER_SESSION_TIMEOUT_MS"
            )
            raise ValueError(msg)
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)


def load_settings() -> Settings:
    """Read and validate the configuration; a bad value names its environment variable."""
    try:
        return Settings(
            kafka=KafkaSettings(),
            database=DatabaseSettings(),
            api=ApiSettings(),
            worker=WorkerSettings(),
        )
    except ValidationError as exc:
        raise ConfigurationError(_describe(exc)) from exc


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()


_PREFIXES = {
    "KafkaSettings": "KAFKA_",
    "DatabaseSettings": "DATABASE_",
    "ApiSettings": "API_",
    "WorkerSettings": "WORKER_",
    "Settings": "",
}


def _describe(exc: ValidationError) -> str:
    prefix = _PREFIXES.get(exc.title, "")
    problems = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"])
        variable = f"{prefix}{field}".upper() if field else f"{prefix}*"
        problems.append(f"{variable}: {error['msg']}")
    return "invalid configuration: " + "; ".join(problems)
