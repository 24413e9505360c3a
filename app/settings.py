"""One place for configuration: environment variables (and `.env`), validated at start.

Each group reads its own prefix (`KAFKA_`, `DATABASE_`, `API_`, `WORKER_`, `AUTH_`), so
`KAFKA_BOOTSTRAP_SERVERS` and `DATABASE_URL` mean what operators expect. With nothing set, the
defaults point at the services `make up` starts on loopback.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import (
    Field,
    PostgresDsn,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from app.errors import ConfigurationError


def _group(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=prefix, env_file=".env", extra="ignore")


def local_services_env() -> Path:
    """KEY=VALUE lines `make up` writes for the services it started (their random credentials)."""
    return state_dir() / "services.env"


class _LocalServicesGroup(BaseSettings):
    """A group `make up` may have written values for: read them last, below the environment
    and `.env`, so anything an operator sets wins. Resolved at each instantiation, so that
    ORDERS_STATE_DIR is honoured whenever it is set."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        local = DotEnvSettingsSource(settings_cls, env_file=local_services_env())
        return init_settings, env_settings, dotenv_settings, local, file_secret_settings


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
    # How every client connects (options built in one place: app/kafka_security.py).
    # PLAINTEXT suits the local dev broker only; `KAFKA_SECURITY=sasl_ssl make up` writes a
    # SASL_SSL + SCRAM-SHA-512 set per service under .state/kafka/credentials/.
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = "SCRAM-SHA-512"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    # The CA that signed the brokers' certificates (PEM); unset: the system's trusted CAs.
    ssl_cafile: Path | None = None
    # A client certificate (PEM, with its chain) and key, for brokers that require mutual TLS.
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None

    @field_validator(
        "sasl_username", "sasl_password", "ssl_cafile", "ssl_certfile", "ssl_keyfile", mode="before"
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # `KAFKA_SSL_CAFILE=` in .env (as .env.example lists it) means "not set", not Path(".").
        return None if value == "" else value

    @model_validator(mode="after")
    def _security_is_consistent(self) -> KafkaSettings:
        protocol = self.security_protocol
        if protocol.startswith("SASL_"):
            if not self.sasl_username or not self.sasl_password:
                msg = (
                    f"KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_USERNAME and "
                    "KAFKA_SASL_PASSWORD"
                )
                raise ValueError(msg)
            if protocol == "SASL_PLAINTEXT" and self.sasl_mechanism == "PLAIN":
                msg = (
                    "KAFKA_SASL_MECHANISM=PLAIN over KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT would "
                    "send the password in clear text: use SASL_SSL, or a SCRAM mechanism"
                )
                raise ValueError(msg)
        elif self.sasl_username or self.sasl_password:
            # Someone believes this client authenticates; it would not.
            msg = f"KAFKA_SASL_USERNAME/PASSWORD are set but KAFKA_SECURITY_PROTOCOL={protocol}"
            raise ValueError(msg)
        if protocol not in ("SSL", "SASL_SSL") and (
            self.ssl_cafile or self.ssl_certfile or self.ssl_keyfile
        ):
            msg = f"KAFKA_SSL_* files are set but KAFKA_SECURITY_PROTOCOL={protocol} has no TLS"
            raise ValueError(msg)
        if self.ssl_keyfile and not self.ssl_certfile:
            msg = "KAFKA_SSL_KEYFILE needs KAFKA_SSL_CERTFILE (the certificate it belongs to)"
            raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _isr_fits_replicas(self) -> KafkaSettings:
        if self.min_insync_replicas > self.replication_factor:
            msg = (
                f"KAFKA_MIN_INSYNC_REPLICAS ({self.min_insync_replicas}) cannot exceed "
                f"KAFKA_REPLICATION_FACTOR ({self.replication_factor})"
            )
            raise ValueError(msg)
        return self


class DatabaseSettings(_LocalServicesGroup):
    model_config = _group("DATABASE_")

    # The application's role: DML only (migrations/versions/0003 grants it). No password here:
    # `make up` writes the local roles' URLs, with random passwords, to <state>/services.env.
    url: PostgresDsn = PostgresDsn("postgresql+asyncpg://orders_app@127.0.0.1:5432/orders")
    # The schema owner's URL, used by `orders migrate` only (DDL); unset: DATABASE_URL's.
    migration_url: PostgresDsn | None = None
    # The role the migrations grant the application's privileges to; unset: DATABASE_URL's user.
    app_role: str | None = Field(default=None, pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    pool_size: int = Field(default=5, ge=1)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    # A frozen process must not keep row locks forever: the server ends its open transaction.
    idle_in_transaction_timeout_s: float = Field(default=30.0, gt=0)

    @field_validator("url", "migration_url")
    @classmethod
    def _asyncpg_driver(cls, url: PostgresDsn | None) -> PostgresDsn | None:
        if url is None:
            return None
        if url.scheme not in {"postgresql+asyncpg", "postgresql", "postgres"}:
            msg = "must be a postgresql:// or postgresql+asyncpg:// URL"
            raise ValueError(msg)
        # No escape hatch on purpose: it would sit in the same .env as the weak password, and
        # every legitimate setup has a real one (`make up` and the tests generate theirs).
        _refuse_default_password(url)
        return PostgresDsn(str(url).replace(f"{url.scheme}://", "postgresql+asyncpg://", 1))

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """repr() and str() (and so a logged or printed Settings) show the URLs with their
        passwords masked; `str(settings.database.url)` itself is the real URL."""
        for name, value in super().__repr_args__():
            masked = name in ("url", "migration_url") and isinstance(value, PostgresDsn)
            yield name, _without_password(value) if masked else value

    @property
    def owner_url(self) -> PostgresDsn:
        """Where migrations connect: DATABASE_MIGRATION_URL, else DATABASE_URL."""
        return self.migration_url or self.url

    @property
    def granted_role(self) -> str:
        """The role migrations grant the application's privileges to."""
        return self.app_role or unquote(self.url.hosts()[0]["username"] or "")


# Passwords that are someone's default somewhere (this project's own former one included), or
# the placeholder .env.example ships: a URL carrying one is refused, never used.
_DEFAULT_PASSWORDS = frozenset({"orders", "postgres", "password", "change-me", "changeme"})


def _without_password(url: PostgresDsn) -> str:
    text = str(url)
    for host in url.hosts():
        if host["password"]:
            text = text.replace(f":{host['password']}@", ":***@", 1)
    return text


def _refuse_default_password(url: PostgresDsn) -> None:
    for host in url.hosts():
        user = unquote(host["username"] or "")
        password = unquote(host["password"] or "")
        if password and (password == user or password.lower() in _DEFAULT_PASSWORDS):
            msg = (
                f"the password of {user!r} is a default or its user name; use a random one "
                "(`make up` writes local ones to .state/services.env)"
            )
            raise ValueError(msg)


# `orders api --workers N` and API_WORKERS: at most this many API processes on one host.
MAX_API_WORKERS = 64


class ApiSettings(BaseSettings):
    model_config = _group("API_")

    host: str = "127.0.0.1"
    # Serve /docs, /redoc and /openapi.json (404 when false).
    docs_enabled: bool = True
    port: int = Field(default=8000, ge=1, le=65535)
    # API processes sharing the listening socket (`orders api --workers N` overrides it); over
    # 1, they share metrics, rate limits and readiness through one directory (README: "Several
    # API processes").
    workers: int = Field(default=1, ge=1, le=MAX_API_WORKERS)
    # With several: uvicorn's supervisor kills and replaces a process that does not answer its
    # ping (every 0.5 s) for this long (its timeout_worker_healthcheck).
    workers_healthcheck_timeout_s: int = Field(default=5, ge=1)
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
    # Abuse limits at the HTTP edge (app/api/http_server.py, edge_guard.py, rate_limit.py).
    # Every one but the rate limits is per API process: N processes admit N times as much (the
    # rate limits' buckets are shared by the processes of one host).
    # The request head (request line + headers): bigger or more numerous -> 431, then close.
    max_header_bytes: int = Field(default=16 * 1024, ge=1024)
    max_headers: int = Field(default=100, ge=8)
    # From a request's first byte (from accept, for a connection's first request) until its
    # headers are complete; then from there until its body is complete (408 if unanswered).
    head_timeout_s: float = Field(default=10.0, gt=0)
    body_timeout_s: float = Field(default=10.0, gt=0)
    # An idle keep-alive connection is closed after this long (from its last response, or from
    # the end of its last request when that was answered before its body was read).
    keep_alive_timeout_s: int = Field(default=5, ge=1)
    # A response the client does not read for this long (the server's send buffer stays full)
    # aborts the connection, freeing the request's in-flight place and its buffers.
    write_timeout_s: float = Field(default=10.0, gt=0)
    # Pipelined requests waiting behind the one being answered, per connection; past them the
    # connection is not read until one is answered.
    max_pipelined: int = Field(default=8, ge=1)
    # Connections open at once; one more is answered 503 and closed.
    max_connections: int = Field(default=1024, ge=1)
    # The listen queue of connections the kernel accepted before the process does.
    backlog: int = Field(default=2048, ge=1)
    # Requests being answered at once (each pending POST holds memory while it waits for the
    # broker's acknowledgement); one more is answered 503. /healthz and /readyz are not counted.
    max_in_flight: int = Field(default=512, ge=1)
    # Per-client token bucket: a sustained rate and a burst; 0 in either disables the limit.
    # These are for customers' tokens (with a customer_id: one customer's orders) ...
    rate_limit_per_s: float = Field(default=100.0, ge=0)
    rate_limit_burst: int = Field(default=200, ge=0)
    # ... and these for services' and operators' tokens (no customer_id), which act for every
    # customer: a shop's backend places all its customers' orders through one token.
    service_rate_limit_per_s: float = Field(default=2000.0, ge=0)
    service_rate_limit_burst: int = Field(default=4000, ge=0)
    # Intake (app/api/intake.py): each API process reads every INTAKE_POLL_S whether `orders
    # topics grow` paused intake; one that could not read it for INTAKE_STALE_S refuses orders
    # (503 intake_unknown), as it could have missed a pause. A shorter PostgreSQL outage does
    # not stop intake.
    intake_poll_s: float = Field(default=0.25, gt=0, le=5)
    intake_stale_s: float = Field(default=60.0, ge=1)


def state_dir() -> Path:
    """Where local state lives (`make up`'s services, the development signing key)."""
    return Path(os.environ.get("ORDERS_STATE_DIR", ".state"))


# Hosts a JWKS may be fetched from over plain http (a test's own server): never off the machine.
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class AuthSettings(BaseSettings):
    """Bearer access tokens (JWT, RFC 9068), verified by app/auth. Keys come from AUTH_JWKS_FILE,
    or AUTH_JWKS_URL, or else the local development key (created on first use)."""

    # An empty AUTH_JWKS_FILE= (as in .env.example) means unset, not the current folder.
    model_config = SettingsConfigDict(**_group("AUTH_"), env_ignore_empty=True)

    # false lets every request in as an anonymous service with every scope (logged at start).
    enabled: bool = True
    issuer: str = Field(default="orders-local", min_length=1)
    audience: str = Field(default="orders-api", min_length=1)
    # Clock skew allowed on exp, nbf and iat.
    leeway_s: float = Field(default=30.0, ge=0, le=300)
    jwks_file: Path | None = None
    # https:// only (the keys decide who gets in); http:// for a loopback host only, for tests.
    jwks_url: str | None = None
    # A JWKS URL's keys are fetched again after this long, and on an unknown kid at most once
    # per cooldown (a stream of made-up kids must not become a stream of fetches).
    jwks_max_age_s: float = Field(default=300.0, gt=0)
    jwks_refresh_cooldown_s: float = Field(default=30.0, ge=0)
    jwks_timeout_s: float = Field(default=5.0, gt=0)
    local_key_file: Path = Field(
        default_factory=lambda: state_dir() / "auth" / "local-signing-key.pem"
    )
    # Verified tokens remembered (token -> principal, until it expires), per API process.
    token_cache_size: int = Field(default=10_000, ge=0)

    @field_validator("jwks_url")
    @classmethod
    def _jwks_over_tls(cls, url: str | None) -> str | None:
        if url is None:
            return None
        try:
            parts = urlsplit(url)
            scheme, host = parts.scheme, parts.hostname
        except ValueError:  # a malformed [IPv6] host, say
            scheme, host = "", None
        if not host or not (scheme == "https" or (scheme == "http" and host in _LOOPBACK_HOSTS)):
            msg = (
                "AUTH_JWKS_URL must be an https:// URL (http:// only for a loopback host: "
                f"{', '.join(sorted(_LOOPBACK_HOSTS))})"
            )
            raise ValueError(msg)
        return url

    @model_validator(mode="after")
    def _one_key_source(self) -> AuthSettings:
        if self.jwks_file is not None and self.jwks_url is not None:
            msg = "set AUTH_JWKS_FILE or AUTH_JWKS_URL, not both"
            raise ValueError(msg)
        return self


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
    # The worker's own HTTP server: /metrics, /healthz, /readyz (0: none). Each replica has its
    # own (a container has its own address; locally `make run` gives each worker the next port).
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9100, ge=0, le=65535)
    # The stall detector (app/lag_status.py, Burrow's rules on the positions in PostgreSQL):
    # lag and positions are sampled every LAG_INTERVAL_S; a partition with lag whose stored
    # position has not moved for STALL_AFTER_S is STALLED; lag that grew at every one of the
    # last LAG_WINDOW samples is WARNING. /readyz fails once a partition has been stalled for
    # UNREADY_AFTER_STALL_S more, so that an orchestrator restarts the member.
    lag_interval_s: float = Field(default=5.0, gt=0)
    lag_window: int = Field(default=10, ge=2)
    stall_after_s: float = Field(default=30.0, gt=0)
    unready_after_stall_s: float = Field(default=30.0, ge=0)

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


class MetricsSettings(BaseSettings):
    """Prometheus metrics of the API (GET /metrics) and the worker (WORKER_METRICS_PORT)."""

    model_config = _group("METRICS_")

    # Off: nothing is counted on the hot paths and /metrics answers 404 (the benchmarks compare).
    enabled: bool = True


class AnalyticsSettings(BaseSettings):
    """`orders analytics`: revenue per currency in tumbling windows, a consumer group of its own."""

    model_config = _group("ANALYTICS_")

    group_id: str = "order-analytics"
    # exact: window state and positions in one PostgreSQL transaction (a crash redoes a batch,
    # counts nothing twice). fast: the course's Scenario 2, auto-commit and batched upserts
    # (cheaper; a crash may over- or under-count).
    mode: Literal["exact", "fast"] = "exact"
    # Windows by the broker's append time; a window closes GRACE_S after its end has passed.
    window_s: int = Field(default=60, ge=1, le=86400)
    grace_s: float = Field(default=10.0, ge=0)
    max_records: int = Field(default=2000, ge=1)
    auto_commit_interval_ms: int = Field(default=1000, ge=100)


class GatewaySettings(BaseSettings):
    """`orders gateway`: a simulated payment gateway (HTTP, idempotent by charge key)."""

    model_config = _group("GATEWAY_")

    host: str = "127.0.0.1"
    port: int = Field(default=8300, ge=1, le=65535)
    latency_ms: float = Field(default=50.0, ge=0)
    # Shares of charges answered 503 (error_rate) or left unanswered past the caller's timeout
    # (timeout_rate); a timed-out charge is still applied, as a real gateway's may be.
    error_rate: float = Field(default=0.0, ge=0, le=1)
    timeout_rate: float = Field(default=0.0, ge=0, le=1)


class PaymentsSettings(BaseSettings):
    """`orders payments`: charge every order once, emit one `payments` event per order."""

    model_config = _group("PAYMENTS_")

    group_id: str = "order-payments"
    topic: str = "payments"
    gateway_url: str = "http://127.0.0.1:8300"
    gateway_timeout_s: float = Field(default=2.0, gt=0)
    # Orders of different customers in flight at once (per member); one customer's go in order.
    max_in_flight: int = Field(default=256, ge=1)
    retry_backoff_initial_s: float = Field(default=0.1, gt=0)
    retry_backoff_max_s: float = Field(default=5.0, gt=0)
    # How often each partition's finished events and watermark are committed in a transaction.
    commit_interval_s: float = Field(default=0.1, gt=0)
    # On revocation: how long running charges may finish before their partition is handed over.
    revoke_grace_s: float = Field(default=5.0, ge=0)
    # A transaction's commit (or abort) bound; past it the partition's work is given up.
    transaction_timeout_s: float = Field(default=10.0, gt=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    analytics: AnalyticsSettings = Field(default_factory=AnalyticsSettings)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    payments: PaymentsSettings = Field(default_factory=PaymentsSettings)


def load_settings() -> Settings:
    """Read and validate the configuration; a bad value names its environment variable."""
    try:
        return Settings(
            kafka=KafkaSettings(),
            database=DatabaseSettings(),
            api=ApiSettings(),
            worker=WorkerSettings(),
            auth=AuthSettings(),
            metrics=MetricsSettings(),
            analytics=AnalyticsSettings(),
            gateway=GatewaySettings(),
            payments=PaymentsSettings(),
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
    "AuthSettings": "AUTH_",
    "MetricsSettings": "METRICS_",
    "AnalyticsSettings": "ANALYTICS_",
    "GatewaySettings": "GATEWAY_",
    "PaymentsSettings": "PAYMENTS_",
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
