"""The local broker secured (`KAFKA_SECURITY=sasl_ssl make up`): TLS, SCRAM users, ACLs.

Clients authenticate with SCRAM-SHA-512 over TLS (SASL_SSL), and KRaft's StandardAuthorizer
allows each principal only what its ACLs say (scripts/kafka/acls.sh):

    admin            the brokers' own user between themselves, and the super user
    orders-api       writes `orders`
    orders-worker    reads `orders` in group `order-workers`, writes `orders.DLQ`
    orders-analytics reads `orders` in group `order-analytics`
    orders-payments  reads `orders` in group `order-payments`, writes `payments` in
                     transactions (transactional ids `order-payments-*`)
    orders-operator  what `orders migrate | lag | offsets reset | dlq list | dlq replay` do

Why SCRAM-SHA-512 rather than SASL/PLAIN over TLS: the password itself never crosses the wire
(a challenge-response proves it), so a broker impersonator or whatever terminates TLS learns
nothing reusable; the brokers hold a salted verifier in the cluster metadata (written here at
storage format time, `kafka-storage format --add-scram`), not a password file on each broker;
users are added and passwords rotated at runtime with `kafka-configs --alter --add-config
'SCRAM-SHA-512=[password=...]'`, without restarting a broker.

The controller listener uses mutual TLS (SSL, client certificate required), not SASL: a
controller must authenticate brokers before it has read the metadata that holds the SCRAM
credentials, so KRaft does not offer SCRAM there. The brokers' certificate
(CN=orders-kafka-broker) is a super user; a client without a key signed by this CA cannot even
complete a handshake there. (PLAINTEXT there would make the brokers' principal ANONYMOUS, and
ANONYMOUS would have to be a super user: anyone reaching that port would be one.)
The broker settings for all this are scripts/kafka/secured.properties, which compose's brokers
use too (scripts/kafka/broker.sh).

Layout under a root folder (`<state>/kafka` for `make up`):

    tls/                         CA certificate, broker keystore/truststore (scripts/kafka/tls.sh)
    credentials/<principal>.env  KAFKA_* lines for the app, 0600: `set -a; . that-file`
    credentials/admin.properties the super user's client config for Kafka's Java tools
    cluster-N-sasl_ssl/          the secured cluster's storage, apart from the plaintext one's

Standard library only, like the rest of scripts/local_services.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .processes import ROOT, STATE, ServiceError, say

SECURITY_MODES = ("plaintext", "sasl_ssl")
MECHANISM = "SCRAM-SHA-512"
ADMIN = "admin"
PRINCIPALS = (
    ADMIN,
    "orders-api",
    "orders-worker",
    "orders-analytics",
    "orders-payments",
    "orders-operator",
)
TLS_SCRIPT = ROOT / "scripts" / "kafka" / "tls.sh"
ACLS_SCRIPT = ROOT / "scripts" / "kafka" / "acls.sh"
SECURED_PROPERTIES = ROOT / "scripts" / "kafka" / "secured.properties"


@dataclass(frozen=True)
class AclScope:
    """The resources the service principals are granted: the settings' topic and group names,
    literal (`make up`), or as name prefixes (tests, which use fresh names per scenario: a
    prefixed `payments` covers `payments-<run>`, `order-payments` covers `order-payments-<run>`)."""

    orders_topic: str = "orders"
    dlq_topic: str = "orders.DLQ"
    group: str = "order-workers"
    pattern: str = "literal"
    analytics_group: str = "order-analytics"
    payments_group: str = "order-payments"
    payments_topic: str = "payments"

    @classmethod
    def from_environment(cls) -> AclScope:
        """The names the app will use: its settings' variables (make exports .env), or defaults."""
        return cls(
            os.environ.get("KAFKA_ORDERS_TOPIC") or cls.orders_topic,
            os.environ.get("KAFKA_DLQ_TOPIC") or cls.dlq_topic,
            os.environ.get("WORKER_GROUP_ID") or cls.group,
            analytics_group=os.environ.get("ANALYTICS_GROUP_ID") or cls.analytics_group,
            payments_group=os.environ.get("PAYMENTS_GROUP_ID") or cls.payments_group,
            payments_topic=os.environ.get("PAYMENTS_TOPIC") or cls.payments_topic,
        )


@dataclass(frozen=True)
class SecuredLayout:
    root: Path

    @property
    def tls(self) -> Path:
        return self.root / "tls"

    @property
    def ca_file(self) -> Path:
        return self.tls / "ca.crt"

    @property
    def credentials(self) -> Path:
        return self.root / "credentials"

    def env_file(self, principal: str) -> Path:
        return self.credentials / f"{principal}.env"

    @property
    def admin_properties(self) -> Path:
        return self.credentials / "admin.properties"


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, created so (never briefly world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(text)
    path.chmod(0o600)  # an older file keeps its mode through O_TRUNC


def jaas(username: str, password: str) -> str:
    return (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{username}" password="{password}";'
    )


class SecuredBroker:
    """What a secured node needs: its TLS material and the users' passwords."""

    def __init__(self, layout: SecuredLayout, passwords: dict[str, str]) -> None:
        self.layout = layout
        self.passwords = passwords

    def listener_properties(self, broker_port: int, controller_port: int) -> list[str]:
        tls = self.layout.tls
        filled = {
            "@TLS_DIR@": str(tls),
            "@STORE_PASSWORD@": (tls / "store.password").read_text().strip(),
            "@ADMIN_PASSWORD@": self.passwords[ADMIN],
        }
        security = []
        for line in SECURED_PROPERTIES.read_text().splitlines():
            if line and not line.startswith("#"):
                for placeholder, value in filled.items():
                    line = line.replace(placeholder, value)
                security.append(line)
        return [
            f"listeners=BROKER://127.0.0.1:{broker_port},CONTROLLER://127.0.0.1:{controller_port}",
            f"advertised.listeners=BROKER://127.0.0.1:{broker_port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=BROKER",
            "listener.security.protocol.map=BROKER:SASL_SSL,CONTROLLER:SSL",
            *security,
        ]

    def format_arguments(self) -> list[str]:
        """StorageTool's --add-scram for every user: the credentials go into the cluster's
        first metadata, so they exist before any broker accepts a connection. They hold the
        passwords: kafka.format_storage hands them over in a private file, never on the
        command line."""
        arguments = []
        for principal in PRINCIPALS:
            password = self.passwords[principal]
            arguments += ["--add-scram", f"{MECHANISM}=[name={principal},password={password}]"]
        return arguments

    def write_credentials(self, bootstrap: str) -> None:
        """One env file per principal (the app's KAFKA_* settings), and the super user's
        client config for Kafka's Java tools."""
        for principal in PRINCIPALS:
            write_private(
                self.layout.env_file(principal),
                "\n".join(
                    [
                        f"# Kafka credentials of {principal}; in a shell: set -a; . this-file",
                        f"KAFKA_BOOTSTRAP_SERVERS={bootstrap}",
                        "KAFKA_SECURITY_PROTOCOL=SASL_SSL",
                        f"KAFKA_SASL_MECHANISM={MECHANISM}",
                        f"KAFKA_SASL_USERNAME={principal}",
                        f"KAFKA_SASL_PASSWORD={self.passwords[principal]}",
                        f"KAFKA_SSL_CAFILE={self.layout.ca_file}",
                        "",
                    ]
                ),
            )
        write_private(
            self.layout.admin_properties,
            "\n".join(
                [
                    "# The super user, for Kafka's tools: --command-config this-file",
                    "security.protocol=SASL_SSL",
                    f"sasl.mechanism={MECHANISM}",
                    f"sasl.jaas.config={jaas(ADMIN, self.passwords[ADMIN])}",
                    "ssl.truststore.type=PEM",
                    f"ssl.truststore.location={self.layout.ca_file}",
                    "",
                ]
            ),
        )

    def apply_acls(self, cluster: Path, bootstrap: str, java: list[str], scope: AclScope) -> None:
        """Add the ACLs (scripts/kafka/acls.sh, also compose's) with `java` (the JVM and its
        class path); skipped when this cluster already has this version of them for this scope."""
        stamp = cluster / "acls.applied"
        wanted = hashlib.sha256(ACLS_SCRIPT.read_bytes() + repr(scope).encode()).hexdigest()
        if stamp.exists() and stamp.read_text() == wanted:
            return
        say(
            f"adding ACLs ({scope.pattern}: {scope.orders_topic}, {scope.dlq_topic}, "
            f"{scope.payments_topic}, groups {scope.group}, {scope.analytics_group}, "
            f"{scope.payments_group})"
        )
        environment = {
            **os.environ,
            "ACL_BOOTSTRAP": bootstrap,
            "ACL_ADMIN_PASSWORD": self.passwords[ADMIN],
            "ACL_CA_FILE": str(self.layout.ca_file),
            "ACL_ORDERS_TOPIC": scope.orders_topic,
            "ACL_DLQ_TOPIC": scope.dlq_topic,
            "ACL_GROUP": scope.group,
            "ACL_ANALYTICS_GROUP": scope.analytics_group,
            "ACL_PAYMENTS_GROUP": scope.payments_group,
            "ACL_PAYMENTS_TOPIC": scope.payments_topic,
            "ACL_PATTERN": scope.pattern,
        }
        result = subprocess.run(
            ["bash", str(ACLS_SCRIPT), *java, "org.apache.kafka.tools.AclCommand"],
            env=environment,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise ServiceError(f"the ACLs could not be added:\n{result.stderr.strip()}")
        stamp.write_text(wanted)


def prepare_secured(layout: SecuredLayout, formatted: bool) -> SecuredBroker:
    """Issue the certificates (once) and read the users' passwords, making new ones for a
    cluster that is not formatted yet."""
    if not TLS_SCRIPT.exists():
        raise ServiceError(f"{TLS_SCRIPT} is missing")
    issued = subprocess.run(
        ["bash", str(TLS_SCRIPT), str(layout.tls), "127.0.0.1", "localhost"],
        capture_output=True,
        text=True,
        check=False,
    )
    if issued.returncode != 0:
        raise ServiceError(f"issuing the TLS certificates failed:\n{issued.stderr.strip()}")
    if issued.stdout.strip():
        say(issued.stdout.strip())
    passwords = {principal: _stored_password(layout, principal) for principal in PRINCIPALS}
    missing = [principal for principal, password in passwords.items() if password is None]
    if missing and formatted:
        raise ServiceError(
            f"the secured cluster is formatted but {layout.credentials} lacks the credentials of "
            f"{', '.join(missing)}; they live only in its metadata now: restore them, or delete "
            "the cluster's folder to start over"
        )
    return SecuredBroker(
        layout,
        {
            principal: password or secrets.token_urlsafe(24)
            for principal, password in passwords.items()
        },
    )


def credentials_environment(principal: str, root: Path | None = None) -> dict[str, str]:
    """The KAFKA_* variables `make up` wrote for `principal` (`root`: `<state>/kafka`); empty
    when there are none. For launchers that give each process its own user (scripts/run-stack.py:
    orders-api for the API, orders-worker for the workers, orders-analytics and orders-payments
    for theirs, orders-operator for migrate)."""
    return read_credentials(SecuredLayout(root or STATE / "kafka").env_file(principal))


def read_credentials(path: Path) -> dict[str, str]:
    """The KAFKA_* variables of one user's credentials file; empty when there is none."""
    if not path.exists():
        return {}
    variables = {}
    for line in path.read_text().splitlines():
        name, _, value = line.partition("=")
        if value and not name.startswith("#"):
            variables[name] = value
    return variables


def _stored_password(layout: SecuredLayout, principal: str) -> str | None:
    return credentials_environment(principal, layout.root).get("KAFKA_SASL_PASSWORD")
