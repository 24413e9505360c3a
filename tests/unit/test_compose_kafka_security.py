"""Compose's Kafka is secured, consistently: every broker listens SASL_SSL (and mutual TLS
between brokers and controllers), each app service authenticates as its own user, holds no other
user's password, and the users, ACLs and certificate names agree with the code that makes them.

Read without a Docker engine, with tests/unit/test_compose.py's helpers. The scripts these
services run (scripts/kafka/*.sh) run for real in tests/integration/test_kafka_security.py
(tls.sh, acls.sh, secured.properties) and in scripts/lint-docker.sh (bash -n, shellcheck).
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from app.settings import load_settings
from tests.unit.test_compose import (
    CLUSTER,
    KAFKA_PASSWORDS,
    ROOT,
    STACKS,
    app_services,
    brokers,
    container_env,
    env_example,
    environment_of,
    interpolate,
    load_yaml,
    no_local_config,
    operator_env,
    resolved,
)

__all__ = ["no_local_config"]  # the fixture, used here by name

SCRIPTS = ROOT / "scripts" / "kafka"
# Which user each app service is, and the variable that holds its password.
USERS = {
    "migrate": ("orders-operator", "KAFKA_OPERATOR_PASSWORD"),
    "api": ("orders-api", "KAFKA_API_PASSWORD"),
    "worker": ("orders-worker", "KAFKA_WORKER_PASSWORD"),
    "analytics": ("orders-analytics", "KAFKA_ANALYTICS_PASSWORD"),
    "payments": ("orders-payments", "KAFKA_PAYMENTS_PASSWORD"),
}
SCRAM_VARIABLES = {
    "SCRAM_ADMIN_PASSWORD": "KAFKA_ADMIN_PASSWORD",
    "SCRAM_API_PASSWORD": "KAFKA_API_PASSWORD",
    "SCRAM_WORKER_PASSWORD": "KAFKA_WORKER_PASSWORD",
    "SCRAM_ANALYTICS_PASSWORD": "KAFKA_ANALYTICS_PASSWORD",
    "SCRAM_PAYMENTS_PASSWORD": "KAFKA_PAYMENTS_PASSWORD",
    "SCRAM_OPERATOR_PASSWORD": "KAFKA_OPERATOR_PASSWORD",
}


def local_security() -> ModuleType:
    """scripts/local_services/kafka_security.py (what `make up` secures the broker with)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        return importlib.import_module("local_services.kafka_security")
    finally:
        sys.path.remove(str(ROOT / "scripts"))


@STACKS
def test_each_app_service_is_its_own_kafka_user_over_sasl_ssl(stack: tuple[str, ...]) -> None:
    chosen = operator_env()
    for name, service in app_services(stack):
        environment = container_env(service)
        user, password = USERS[name]
        assert environment["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL", name
        assert environment["KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512", name
        assert environment["KAFKA_SASL_USERNAME"] == user, name
        assert environment["KAFKA_SASL_PASSWORD"] == chosen[password], name
        # The CA file comes from the volume that holds the CA certificate, and nothing else.
        mount, _, _ = environment["KAFKA_SSL_CAFILE"].rpartition("/")
        assert f"kafka-ca:{mount}:ro" in service["volumes"], name
        assert not any(str(v).startswith("kafka-tls:") for v in service["volumes"]), name


@STACKS
def test_each_app_container_holds_no_kafka_password_but_its_own(
    stack: tuple[str, ...], no_local_config: pytest.MonkeyPatch
) -> None:
    chosen = operator_env()
    for name, service in app_services(stack):
        environment = container_env(service)
        _, own = USERS[name]
        holding = {
            variable
            for variable, value in environment.items()
            for password in KAFKA_PASSWORDS
            if chosen[password] in value and password != own
        }
        assert not holding, f"{name} holds another Kafka user's password in {sorted(holding)}"
        with no_local_config.context() as patch:
            for variable, value in environment.items():
                patch.setenv(variable, value)
            kafka = load_settings().kafka
        assert kafka.sasl_password is not None
        assert kafka.sasl_password.get_secret_value() == chosen[own], name


@pytest.mark.parametrize("password", KAFKA_PASSWORDS)
def test_a_missing_kafka_password_fails_loudly(password: str) -> None:
    assert env_example()[password] == "", f".env.example must not ship a {password}"
    without = {key: value for key, value in operator_env().items() if key != password}
    for variables in ({**operator_env(), password: ""}, without):
        with pytest.raises(KeyError, match=password):
            interpolate(load_yaml("compose.yaml"), variables)


@STACKS
def test_the_brokers_listen_sasl_ssl_and_mutual_tls_only(stack: tuple[str, ...]) -> None:
    services = resolved(stack)
    for name, env in brokers(services).items():
        protocols = dict(
            item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
        )
        listeners = [item.partition("://")[0] for item in env["KAFKA_LISTENERS"].split(",")]
        controllers = env["KAFKA_CONTROLLER_LISTENER_NAMES"].split(",")
        for listener in listeners:
            wanted = "SSL" if listener in controllers else "SASL_SSL"
            assert protocols[listener] == wanted, f"{name}: {listener} is {protocols[listener]}"
        assert protocols[env["KAFKA_INTER_BROKER_LISTENER_NAME"]] == "SASL_SSL", name
        for advertised in env["KAFKA_ADVERTISED_LISTENERS"].split(","):
            assert protocols[advertised.partition("://")[0]] == "SASL_SSL", advertised
        # The security itself (SCRAM, the stores, the authorizer) is broker.sh's to add.
        service = services[name]
        assert service["command"] == ["bash", "/opt/orders-kafka/broker.sh"], name
        assert "./scripts/kafka:/opt/orders-kafka:ro" in service["volumes"], name
        assert "kafka-tls:/etc/kafka/secrets:ro" in service["volumes"], name
        assert "--command-config" in service["healthcheck"]["test"], name


@STACKS
def test_the_brokers_create_every_user_from_its_required_password(stack: tuple[str, ...]) -> None:
    chosen = operator_env()
    raw = {name: environment_of(s) for name, s in load_yaml(stack[-1])["services"].items()}
    services = resolved(stack)
    for name, env in brokers(services).items():
        for scram, variable in SCRAM_VARIABLES.items():
            assert env[scram] == chosen[variable], f"{name}: {scram}"
        if name in raw and "SCRAM_ADMIN_PASSWORD" in raw[name]:
            assert raw[name]["SCRAM_ADMIN_PASSWORD"].startswith("${KAFKA_ADMIN_PASSWORD:?")


def test_the_users_agree_everywhere() -> None:
    """broker.sh creates, acls.sh grants, `make up` creates, the app services use: one set."""
    created = set(
        re.findall(r"^\s*\[([a-z-]+)\]=\$\{SCRAM_", (SCRIPTS / "broker.sh").read_text(), re.M)
    )
    granted = set(re.findall(r"^allow ([a-z-]+) ", (SCRIPTS / "acls.sh").read_text(), re.M))
    local = set(local_security().PRINCIPALS)
    used = {user for user, _ in USERS.values()}
    assert created == local == {"admin"} | used
    assert granted == used  # admin is the super user: no ACLs


@STACKS
def test_setup_runs_in_order_certificates_broker_acls_migrate(stack: tuple[str, ...]) -> None:
    services = resolved(stack)
    for name in brokers(services):
        depends = services[name]["depends_on"]
        assert depends["kafka-tls"]["condition"] == "service_completed_successfully", name
    acls = services["kafka-acls"]["depends_on"]
    assert {name: acls[name]["condition"] for name in brokers(services)} == dict.fromkeys(
        brokers(services), "service_healthy"
    )
    migrate = services["migrate"]["depends_on"]
    assert migrate["kafka-acls"]["condition"] == "service_completed_successfully"


@STACKS
def test_the_acls_name_what_the_app_uses(
    stack: tuple[str, ...], no_local_config: pytest.MonkeyPatch
) -> None:
    services = resolved(stack)
    acls = environment_of(services["kafka-acls"])
    with no_local_config.context() as patch:
        for variable, value in container_env(services["worker"]).items():
            patch.setenv(variable, value)
        settings = load_settings()
    assert acls["ACL_ORDERS_TOPIC"] == settings.kafka.orders_topic
    assert acls["ACL_DLQ_TOPIC"] == settings.kafka.dlq_topic
    assert acls["ACL_GROUP"] == settings.worker.group_id
    assert acls["ACL_ANALYTICS_GROUP"] == settings.analytics.group_id
    assert acls["ACL_PAYMENTS_GROUP"] == settings.payments.group_id
    assert acls["ACL_PAYMENTS_TOPIC"] == settings.payments.topic
    assert set(acls["ACL_BOOTSTRAP"].split(",")) == set(settings.kafka.bootstrap_servers.split(","))
    assert settings.kafka.ssl_cafile is not None
    assert acls["ACL_CA_FILE"] == settings.kafka.ssl_cafile.as_posix()


@STACKS
def test_the_certificate_names_every_broker(stack: tuple[str, ...]) -> None:
    services = resolved(stack)
    names = set(environment_of(services["kafka-tls"])["TLS_HOSTNAMES"].split())
    for env in brokers(services).values():
        for advertised in env["KAFKA_ADVERTISED_LISTENERS"].split(","):
            assert advertised.split("//")[1].rpartition(":")[0] in names, advertised
    assert "localhost" in names  # the healthcheck's address


def test_the_cluster_secures_its_two_extra_brokers_like_the_first() -> None:
    cluster = brokers(resolved(CLUSTER))
    first = cluster.pop("kafka")
    for name, env in cluster.items():
        for variable in (
            *SCRAM_VARIABLES,
            "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP",
            "KAFKA_LISTENERS",
        ):
            assert env[variable] == first[variable], f"{name}: {variable}"


@pytest.mark.parametrize("script", sorted(p.name for p in SCRIPTS.glob("*.sh")))
def test_the_container_scripts_parse(script: str) -> None:
    result = subprocess.run(["bash", "-n", str(SCRIPTS / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_secured_broker_settings_use_only_known_placeholders() -> None:
    text = (SCRIPTS / "secured.properties").read_text()
    assert set(re.findall(r"@[A-Z_]+@", text)) == {
        "@TLS_DIR@",
        "@STORE_PASSWORD@",
        "@ADMIN_PASSWORD@",
    }
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert "allow.everyone.if.no.acl.found=false" in lines
    assert "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer" in lines
    assert Path(SCRIPTS / "broker.sh").read_text().count("secured.properties") >= 1


def test_no_empty_kafka_value_carries_a_comment_compose_would_read_as_the_value() -> None:
    """Compose's env_file reads `KAFKA_SSL_CAFILE=    # note` as the value "# note" (python-dotenv
    and make read it as empty): an empty value's note goes on the line above."""
    text = (ROOT / ".env.example").read_text()
    assert not re.findall(r"^KAFKA_\w+=[ \t]+#.*$", text, flags=re.MULTILINE)
