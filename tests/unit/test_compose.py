"""The container files agree with the code, checked without a Docker engine.

compose.yaml, compose.cluster.yaml and docker/Dockerfile are parsed here and held against the
Compose Specification's JSON schema (vendored by check-jsonschema), `app.settings` (every
variable the app is given is a real setting) and `app.cli` (every command is a real `orders`
subcommand). scripts/lint-docker.sh adds hadolint and Compose's own parser.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import stat
import subprocess
import tomllib
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit
from xml.etree import ElementTree

import pytest
import yaml
from dotenv import dotenv_values
from jsonschema.validators import validator_for
from packaging.specifiers import SpecifierSet
from pydantic_settings import BaseSettings

from app.cli import build_parser
from app.db import migrate
from app.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
SINGLE = ("compose.yaml",)
CLUSTER = ("compose.yaml", "compose.cluster.yaml")
STACKS = pytest.mark.parametrize("stack", [SINGLE, CLUSTER], ids=["single", "cluster"])
# Each runs the `orders` subcommand of its name, with the operator's .env and a Kafka user.
APP_SERVICES = ("migrate", "api", "worker", "analytics", "payments")
# Consumer-group members: scaled with --scale, drained on SIGTERM.
MEMBER_SERVICES = ("worker", "analytics", "payments")
# The PostgreSQL passwords compose requires, which .env.example leaves empty on purpose.
DATABASE_PASSWORDS = ("POSTGRES_PASSWORD", "ORDERS_DB_OWNER_PASSWORD", "ORDERS_DB_APP_PASSWORD")
# The Kafka users' passwords, likewise (tests/unit/test_compose_kafka_security.py).
KAFKA_PASSWORDS = (
    "KAFKA_ADMIN_PASSWORD",
    "KAFKA_API_PASSWORD",
    "KAFKA_WORKER_PASSWORD",
    "KAFKA_ANALYTICS_PASSWORD",
    "KAFKA_PAYMENTS_PASSWORD",
    "KAFKA_OPERATOR_PASSWORD",
)
ROLES_SQL = ROOT / "docker" / "postgres-init" / "10-orders-roles.sql"
SUPERUSER_HBA = ROOT / "docker" / "postgres-init" / "00-superuser-local-only.sh"
# pg_hba.conf as the postgres image leaves it before its init scripts run: initdb's rules
# (POSTGRES_INITDB_ARGS=--auth-host=scram-sha-256), then POSTGRES_HOST_AUTH_METHOD's.
IMAGE_HBA = """\
# TYPE  DATABASE        USER            ADDRESS                 METHOD
local   all             all                                     trust
host    all             all             127.0.0.1/32            scram-sha-256
host    all             all             ::1/128                 scram-sha-256
local   replication     all                                     trust
host    replication     all             127.0.0.1/32            scram-sha-256
host    replication     all             ::1/128                 scram-sha-256

host all all all scram-sha-256
"""
POSTGRES_PORT = 5432  # the postgres image's default, unless PGPORT says otherwise


# --- reading the files the way Compose and Docker do ---


def load_yaml(name: str) -> dict[str, Any]:
    document = yaml.safe_load((ROOT / name).read_text())
    assert isinstance(document, dict), name
    return document


def merge(base: Any, override: Any) -> Any:
    """Compose's merge as these files use it: mappings merge key by key, anything else is
    replaced. (scripts/lint-docker.sh checks the real merge with `compose config`.)"""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = merge(base[key], value) if key in base else value
        return merged
    return override


def env_example() -> dict[str, str]:
    values = dotenv_values(ROOT / ".env.example")
    return {key: value or "" for key, value in values.items()}


def documented_in_env_example() -> set[str]:
    """The keys .env.example sets, and those it documents in a commented-out line."""
    text = (ROOT / ".env.example").read_text()
    return set(re.findall(r"^#? ?([A-Z][A-Z0-9_]*)=", text, flags=re.MULTILINE))


_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_]\w*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_]\w*)")


def interpolate(node: Any, variables: dict[str, str]) -> Any:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?error} and $$, over a whole document."""
    if isinstance(node, dict):
        return {key: interpolate(value, variables) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate(value, variables) for value in node]
    if not isinstance(node, str):
        return node

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        operator, argument = match.group(2) or "", match.group(3) or ""
        value = variables.get(name)
        missing = value is None or (operator.startswith(":") and value == "")
        if missing and operator.endswith("?"):
            msg = f"required variable {name} is missing a value: {argument}"
            raise KeyError(msg)
        if missing and operator.endswith("-"):
            return argument
        return value or ""

    return _VARIABLE.sub(substitute, node)


def stack_files(stack: tuple[str, ...]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for name in stack:
        merged = merge(merged, load_yaml(name))
    return merged


def operator_env() -> dict[str, str]:
    """.env.example as an operator completes it: each variable compose requires and
    .env.example leaves empty (the passwords) filled in."""
    text = (ROOT / "compose.yaml").read_text() + (ROOT / "compose.cluster.yaml").read_text()
    required = set(re.findall(r"\$\{([A-Za-z_]\w*):\?", text))
    return {
        key: value or (f"filled-in-{key.lower()}" if key in required else value)
        for key, value in env_example().items()
    }


def resolved(stack: tuple[str, ...]) -> dict[str, Any]:
    """The stack as `docker compose up` sees it after `cp .env.example .env` and filling in
    the passwords."""
    services: dict[str, Any] = interpolate(stack_files(stack), operator_env())["services"]
    return services


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {
        key: str(value).lower() if isinstance(value, bool) else str(value)
        for key, value in environment.items()
    }


def container_env(service: dict[str, Any]) -> dict[str, str]:
    """What the app process sees: the env_file (.env, from .env.example), then `environment`."""
    assert service.get("env_file") in (".env", [".env"]), "the app reads the operator's .env"
    return operator_env() | environment_of(service)


def settings_variables() -> set[str]:
    """Every environment variable app.settings reads, derived from its classes."""
    names = set()
    for name, field in Settings.model_fields.items():
        group = field.annotation
        if isinstance(group, type) and issubclass(group, BaseSettings):
            prefix = group.model_config.get("env_prefix") or ""
            names |= {f"{prefix}{member}".upper() for member in group.model_fields}
        else:
            names.add(name.upper())
    return names


def brokers(services: dict[str, Any]) -> dict[str, dict[str, str]]:
    """The Kafka nodes (the image's one-shot services, kafka-tls and kafka-acls, are not)."""
    return {
        name: environment_of(service)
        for name, service in services.items()
        if str(service.get("image", "")).startswith("apache/kafka:")
        and "KAFKA_PROCESS_ROLES" in environment_of(service)
    }


def listener_ports(broker_env: dict[str, str], *, controller: bool) -> set[int]:
    controllers = set(broker_env["KAFKA_CONTROLLER_LISTENER_NAMES"].split(","))
    ports = set()
    for listener in broker_env["KAFKA_LISTENERS"].split(","):
        name, _, address = listener.partition("://")
        if (name in controllers) == controller:
            ports.add(int(address.rpartition(":")[2]))
    return ports


def seconds(duration: str) -> float:
    units = {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(us|ms|h|m|s)", duration)
    assert "".join(number + unit for number, unit in parts) == duration, duration
    return sum(float(number) * units[unit] for number, unit in parts)


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    instructions, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        keyword, _, arguments = (pending + text).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for instruction in dockerfile():
        if instruction[0] == "FROM":
            result.append([])
        result[-1].append(instruction)
    return result


def only(stage: list[tuple[str, str]], keyword: str) -> str:
    found = [arguments for name, arguments in stage if name == keyword]
    assert len(found) == 1, f"one {keyword} expected in the final stage, found {found}"
    return found[0]


def app_services(stack: tuple[str, ...]) -> Iterator[tuple[str, dict[str, Any]]]:
    services = resolved(stack)
    for name in APP_SERVICES:
        assert name in services, f"{stack}: no {name} service"
        yield name, services[name]


@pytest.fixture
def no_local_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """Neither a developer's .env, nor `make up`'s credentials, nor the variables `make` exports
    from .env reach the settings."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ORDERS_STATE_DIR", str(tmp_path))
    for variable in settings_variables():
        monkeypatch.delenv(variable, raising=False)
    return monkeypatch


# --- compose: schema ---


@pytest.mark.parametrize("stack", [SINGLE, ("compose.cluster.yaml",), CLUSTER])
def test_compose_files_follow_the_compose_specification(stack: tuple[str, ...]) -> None:
    schema_file = files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    validator_class = validator_for(schema)
    validator_class.check_schema(schema)
    errors = [
        f"{'.'.join(map(str, error.absolute_path)) or '<top>'}: {error.message}"
        for error in validator_class(schema).iter_errors(stack_files(stack))
    ]
    assert not errors, "\n".join(errors)


# --- compose: the app's configuration ---


def test_the_settings_variables_are_derived_from_the_settings_classes() -> None:
    names = settings_variables()
    assert {"LOG_LEVEL", "KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "API_PORT"} <= names
    assert "WORKER_SHUTDOWN_TIMEOUT_S" in names
    assert "KAFKA_BOOTSTRAP_SERVER" not in names


@STACKS
def test_compose_passes_the_app_only_real_settings(stack: tuple[str, ...]) -> None:
    valid = settings_variables()
    for name, service in app_services(stack):
        environment = environment_of(service)
        # Emptied here: a password of .env (the env_file) that this container must not hold.
        emptied = {variable for variable, value in environment.items() if value == ""}
        assert emptied <= {*DATABASE_PASSWORDS, *KAFKA_PASSWORDS}, f"{name}: {sorted(emptied)}"
        unknown = set(environment) - valid - emptied
        assert not unknown, f"{name}: not settings of app.settings: {sorted(unknown)}"


def test_env_example_holds_settings_and_compose_variables_only() -> None:
    """A key of .env.example is read by the app or interpolated by a compose file; no typos."""
    compose_text = (ROOT / "compose.yaml").read_text() + (ROOT / "compose.cluster.yaml").read_text()
    interpolated = {match.group(1) or match.group(4) for match in _VARIABLE.finditer(compose_text)}
    stray = set(env_example()) - settings_variables() - interpolated
    assert not stray, f".env.example keys that nothing reads: {sorted(stray)}"


def test_env_example_documents_every_setting() -> None:
    """Set, or shown commented out where a value there would be wrong (DATABASE_URL: `make up`
    writes it to the state folder, and a line in .env would override that)."""
    missing = settings_variables() - documented_in_env_example()
    assert not missing, f"settings missing from .env.example: {sorted(missing)}"


@STACKS
def test_each_app_container_gets_a_valid_configuration(
    stack: tuple[str, ...], no_local_config: pytest.MonkeyPatch
) -> None:
    for name, service in app_services(stack):
        environment = container_env(service)
        with no_local_config.context() as patch:
            for variable, value in environment.items():
                patch.setenv(variable, value)
            settings = load_settings()  # raises ConfigurationError naming a bad variable
        assert settings.kafka.bootstrap_servers == environment["KAFKA_BOOTSTRAP_SERVERS"], name


def test_required_compose_variables_are_in_env_example() -> None:
    for name in ("compose.yaml", "compose.cluster.yaml"):
        text = (ROOT / name).read_text()
        for required in re.findall(r"\$\{([A-Za-z_]\w*):?\?", text):
            assert required in env_example(), f"{name} requires {required}; .env.example lacks it"


@pytest.mark.parametrize("password", DATABASE_PASSWORDS)
def test_a_missing_database_password_fails_loudly(password: str) -> None:
    assert env_example()[password] == "", f".env.example must not ship a {password}"
    empty = {**operator_env(), password: ""}
    absent = {key: value for key, value in operator_env().items() if key != password}
    for variables in (empty, absent):
        with pytest.raises(KeyError, match=password):
            interpolate(load_yaml("compose.yaml"), variables)


# --- compose: commands, addresses and ports ---


@STACKS
def test_every_app_command_is_an_orders_subcommand(stack: tuple[str, ...]) -> None:
    for name, service in app_services(stack):
        command = service["command"]
        assert isinstance(command, list), f"{name}: exec form, so SIGTERM reaches orders"
        args = build_parser().parse_args(command)
        assert args.command == name
        if name == "migrate":  # the brokers run with topic auto-creation off
            assert not args.skip_topics, "migrate must create the topics"


@STACKS
def test_the_app_is_pointed_at_services_that_listen_there(stack: tuple[str, ...]) -> None:
    services = resolved(stack)
    kafka = brokers(services)
    postgres_env = environment_of(services["postgres"])
    for name, service in app_services(stack):
        environment = container_env(service)
        for server in environment["KAFKA_BOOTSTRAP_SERVERS"].split(","):
            host, _, port = server.rpartition(":")
            assert host in kafka, f"{name}: {server} is not a Kafka service of {stack}"
            assert int(port) in listener_ports(kafka[host], controller=False), f"{name}: {server}"
            advertised = kafka[host]["KAFKA_ADVERTISED_LISTENERS"]
            assert f"//{server}" in advertised, f"{host} advertises {advertised}, not {server}"

        roles = {"DATABASE_URL": ("orders_app", "ORDERS_DB_APP_PASSWORD")}
        if name == "migrate":
            roles["DATABASE_MIGRATION_URL"] = ("orders_owner", "ORDERS_DB_OWNER_PASSWORD")
        else:
            assert "DATABASE_MIGRATION_URL" not in environment, f"{name}: no DDL role"
        for variable, (role, password) in roles.items():
            url = urlsplit(environment[variable])
            assert url.hostname in services, f"{name}: no service {url.hostname}"
            assert str(services[url.hostname]["image"]).startswith("postgres:")
            assert url.port == int(postgres_env.get("PGPORT", POSTGRES_PORT))
            assert (url.username, url.password, url.path) == (
                role,
                postgres_env[password],
                "/" + postgres_env["POSTGRES_DB"],
            ), f"{name}: {variable} does not match the postgres service's {role}"
            # The init script creates exactly this role.
            assert f"ALTER ROLE {role} WITH LOGIN" in ROLES_SQL.read_text(), role


@STACKS
def test_the_kraft_quorum_is_consistent(stack: tuple[str, ...]) -> None:
    kafka = brokers(resolved(stack))
    node_ids = {int(env["KAFKA_NODE_ID"]): name for name, env in kafka.items()}
    assert len(node_ids) == len(kafka), "node ids must be unique"
    for name, env in kafka.items():
        assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false", name
        assert int(env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"]) == len(kafka), name
        assert env["CLUSTER_ID"] == next(iter(kafka.values()))["CLUSTER_ID"], name
        voters = {
            int(node): address
            for node, _, address in (
                voter.partition("@") for voter in env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
            )
        }
        assert set(voters) == set(node_ids), f"{name}: voters {voters} vs nodes {node_ids}"
        for node, address in voters.items():
            host, _, port = address.rpartition(":")
            assert host == node_ids[node], f"{name}: voter {node} is {host}"
            assert int(port) in listener_ports(kafka[host], controller=True), address
        for listener in env["KAFKA_ADVERTISED_LISTENERS"].split(","):
            assert listener.split("//")[1].rpartition(":")[0] in kafka, listener


@STACKS
def test_replication_fits_the_brokers(stack: tuple[str, ...]) -> None:
    count = len(brokers(resolved(stack)))
    for name, service in app_services(stack):
        environment = container_env(service)
        factor = int(environment["KAFKA_REPLICATION_FACTOR"])
        min_isr = int(environment["KAFKA_MIN_INSYNC_REPLICAS"])
        assert factor == count, f"{name}: replication factor {factor} on {count} broker(s)"
        if count > 1:  # one broker may fail while acks=all writes still succeed
            assert min_isr <= factor - 1, name
            assert min_isr >= 2, name  # an acknowledged write is on two brokers at least


def test_the_cluster_has_three_brokers_of_the_single_brokers_version() -> None:
    single, cluster = resolved(SINGLE), resolved(CLUSTER)
    assert len(brokers(single)) == 1
    assert len(brokers(cluster)) == 3
    assert {cluster[name]["image"] for name in brokers(cluster)} == {
        single[name]["image"] for name in brokers(single)
    }


def test_compose_runs_the_kafka_version_that_make_up_runs() -> None:
    maven = "{http://maven.apache.org/POM/4.0.0}"
    pom = ElementTree.parse(ROOT / "scripts" / "kafka" / "pom.xml")
    version = pom.findtext(f"{maven}properties/{maven}kafka.version")
    assert version, "scripts/kafka/pom.xml: no kafka.version"
    services = resolved(SINGLE)
    for name in brokers(services):
        assert services[name]["image"] == f"apache/kafka:{version}", name


@STACKS
def test_the_api_publishes_the_port_it_listens_on(stack: tuple[str, ...]) -> None:
    api = resolved(stack)["api"]
    listening = build_parser().parse_args(api["command"]).port
    assert listening is not None, "pin --port: an API_PORT in .env must not move the API"
    assert api["ports"], "the API is published"
    for port in api["ports"]:
        target = port["target"] if isinstance(port, dict) else port.rpartition(":")[2]
        assert int(str(target).partition("/")[0]) == listening, port
    assert listening == dockerfile_api_port()


@STACKS
def test_startup_order_waits_for_health_and_migrations(stack: tuple[str, ...]) -> None:
    services = resolved(stack)
    migrate_deps = services["migrate"]["depends_on"]
    for dependency in [*brokers(services), "postgres"]:
        assert migrate_deps[dependency]["condition"] == "service_healthy", dependency
        assert services[dependency]["healthcheck"]["test"], dependency
    for name in ("api", "worker", "analytics", "payments"):
        condition = services[name]["depends_on"]["migrate"]["condition"]
        assert condition == "service_completed_successfully", name
    # Payments charges from its first order on: the gateway answers first.
    assert services["payments"]["depends_on"]["gateway"]["condition"] == "service_healthy"
    assert services["gateway"]["healthcheck"]["test"]
    # The image's HEALTHCHECK probes the API's port: migrate, analytics and payments serve no
    # probe (none to run), the worker its own.
    for name in ("migrate", "analytics", "payments"):
        assert services[name]["healthcheck"] == {"disable": True}, name
    probe = " ".join(services["worker"]["healthcheck"]["test"])
    port = container_env(services["worker"])["WORKER_METRICS_PORT"]
    assert f"http://127.0.0.1:{port}/readyz" in probe, probe


@STACKS
@pytest.mark.parametrize("member", MEMBER_SERVICES)
def test_workers_scale_and_drain_before_they_are_killed(
    stack: tuple[str, ...], member: str, no_local_config: pytest.MonkeyPatch
) -> None:
    """Each group's members drain within WORKER_SHUTDOWN_TIMEOUT_S (app/worker/runner.py,
    app/analytics/runner.py, app/payments/)."""
    worker = resolved(stack)[member]
    assert "container_name" not in worker, "--scale needs compose to name the containers"
    assert "ports" not in worker, "--scale: replicas cannot share a published port"
    assert worker.get("stop_signal") == "SIGTERM"
    for variable, value in container_env(worker).items():
        no_local_config.setenv(variable, value)
    drain = load_settings().worker.shutdown_timeout_s
    grace = seconds(worker["stop_grace_period"])
    assert grace > drain + 5, f"stop_grace_period {grace}s vs WORKER_SHUTDOWN_TIMEOUT_S {drain}s"


def test_postgres_credentials_are_required_not_defaulted() -> None:
    postgres = load_yaml("compose.yaml")["services"]["postgres"]["environment"]
    for variable in DATABASE_PASSWORDS:
        assert re.fullmatch(rf"\$\{{{variable}:\?[^}}]+\}}", postgres[variable]), variable
    assert postgres["POSTGRES_INITDB_ARGS"] == "--auth-host=scram-sha-256"
    assert postgres["POSTGRES_HOST_AUTH_METHOD"] == "scram-sha-256"


@STACKS
def test_the_roles_script_runs_at_the_databases_first_start(stack: tuple[str, ...]) -> None:
    postgres = resolved(stack)["postgres"]
    assert "./docker/postgres-init:/docker-entrypoint-initdb.d:ro" in postgres["volumes"]
    # The image runs *.sql and *.sh there in name order, and ignores anything else: the
    # superuser's pg_hba rules first, then the roles.
    scripts = sorted(path.name for path in ROLES_SQL.parent.iterdir())
    assert scripts == [SUPERUSER_HBA.name, ROLES_SQL.name], scripts


def _hba_rules(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines() if line.strip() and line[0] != "#"]


def test_the_superuser_may_not_log_in_over_tcp(tmp_path: Path) -> None:
    """The init script puts `reject` rules for the superuser ahead of every other (PostgreSQL
    takes the first rule that matches), keeps the file's mode, and changes nothing run again;
    the healthcheck's pg_isready still answers (a refused login proves the server is up)."""
    hba = tmp_path / "pg_hba.conf"
    hba.write_text(IMAGE_HBA)
    hba.chmod(0o600)
    environment = {"PATH": os.environ["PATH"], "PGDATA": str(tmp_path)}
    for _ in range(2):
        subprocess.run(["bash", str(SUPERUSER_HBA)], env=environment, check=True)
    rules = _hba_rules(hba.read_text())
    assert rules[:2] == [
        ["host", "all", "postgres", "all", "reject"],
        ["host", "replication", "postgres", "all", "reject"],
    ]
    assert rules[2:] == _hba_rules(IMAGE_HBA)
    assert stat.S_IMODE(hba.stat().st_mode) == 0o600
    # POSTGRES_USER names another superuser: its rules, then.
    hba.write_text(IMAGE_HBA)
    subprocess.run(
        ["bash", str(SUPERUSER_HBA)], env={**environment, "POSTGRES_USER": "root"}, check=True
    )
    assert _hba_rules(hba.read_text())[0] == ["host", "all", "root", "all", "reject"]
    healthcheck = load_yaml("compose.yaml")["services"]["postgres"]["healthcheck"]["test"]
    assert "pg_isready" in " ".join(healthcheck)


def test_the_image_may_source_the_superuser_script() -> None:
    """Not executable (a checkout without file modes), the image sources it, in its own shell
    (set -Eeo pipefail): it must neither exit that shell nor leave variables in it."""
    script = f'set -Eeo pipefail; PGDATA=$(mktemp -d); printf "{IMAGE_HBA}" >"$PGDATA/pg_hba.conf"'
    script += f'; source {SUPERUSER_HBA}; echo "after: ${{orders_hba:-unset}}"; rm -r "$PGDATA"'
    sourced = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    assert sourced.stdout.strip() == "after: unset"


def test_the_shared_roles_script_gives_the_owner_no_createdb() -> None:
    """Only `make up` lets the owner create databases (scripts/local_services/postgres.py), for
    the integration tests; compose's owner owns one database, nothing more."""
    [attributes] = re.findall(r"ALTER ROLE orders_owner WITH ([^;]*);", ROLES_SQL.read_text())
    assert "NOCREATEDB" in attributes.split()
    assert "CREATEDB" not in attributes.split()


@STACKS
def test_each_app_container_holds_no_database_password_but_its_own(
    stack: tuple[str, ...],
) -> None:
    chosen = operator_env()
    superuser, owner = chosen["POSTGRES_PASSWORD"], chosen["ORDERS_DB_OWNER_PASSWORD"]
    for name, service in app_services(stack):
        environment = container_env(service)
        holding = {
            variable
            for variable, value in environment.items()
            if superuser in value or owner in value
        }
        expected = {"DATABASE_MIGRATION_URL"} if name == "migrate" else set()
        assert holding == expected, f"{name}: {sorted(holding)}"


# --- the Dockerfile ---


def dockerfile_api_port() -> int:
    final = stages()[-1]
    command = json.loads(only(final, "CMD"))
    port: int = build_parser().parse_args(command).port
    healthcheck = only(final, "HEALTHCHECK")
    probe = re.search(r"https?://[^'\"\s]+", healthcheck)
    assert probe, healthcheck
    url = urlsplit(probe.group(0))
    assert (url.hostname, url.port, url.path) == ("127.0.0.1", port, "/healthz"), healthcheck
    assert only(final, "EXPOSE") == str(port)
    return port


def test_the_base_image_is_a_pinned_python_that_the_project_supports() -> None:
    aliases: set[str] = set()
    bases = []
    for stage in stages():
        image, _, alias = stage[0][1].partition(" AS ")
        if image not in aliases:
            bases.append(image)
        aliases.add(alias.strip())
    assert bases, "no FROM"
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    for image in bases:
        match = re.fullmatch(r"python:(\d+\.\d+\.\d+)-slim-bookworm", image)
        assert match, f"{image}: pin an exact python:X.Y.Z-slim-bookworm tag"
        assert match.group(1) in SpecifierSet(requires), f"{image} vs requires-python {requires}"


def test_the_image_runs_orders_as_an_unprivileged_user() -> None:
    final = stages()[-1]
    user = [arguments for name, arguments in final if name == "USER"]
    assert user, "no USER: the container would run as root"
    assert user[-1].partition(":")[0] not in {"root", "0"}, user[-1]
    assert json.loads(only(final, "ENTRYPOINT")) == ["orders"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["orders"] == "app.cli:main"
    assert only(final, "HEALTHCHECK").split()[-1] != "NONE"
    dockerfile_api_port()


def test_dependencies_are_a_layer_of_their_own() -> None:
    build = next(stage for stage in stages() if any("pip install" in a for _, a in stage))
    steps = [f"{name} {arguments}" for name, arguments in build]
    manifest = next(i for i, step in enumerate(steps) if step.startswith("COPY pyproject.toml"))
    install = next(i for i, step in enumerate(steps) if "pip install" in step)
    sources = next(i for i, step in enumerate(steps) if step.startswith("COPY app/"))
    assert manifest < install < sources, steps


def test_migrations_sit_where_app_db_migrate_looks() -> None:
    """migrate.py resolves Path(__file__).parents[2] / "migrations": /app/migrations here."""
    assert migrate.MIGRATIONS == ROOT / "migrations"
    final = stages()[-1]
    workdir = PurePosixPath(only(final, "WORKDIR"))
    copies = {}
    for name, arguments in final:
        if name == "COPY" and not arguments.startswith("--from"):
            source, destination = arguments.split()
            copies[source.rstrip("/")] = workdir / destination
    installed = copies["app"] / "db" / "migrate.py"
    assert installed.parents[2] / "migrations" == copies["migrations"]
    assert any("-e ." in arguments for _, arguments in dockerfile()), "editable install"


def test_dockerignore_keeps_secrets_and_state_out_of_the_build_context() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for secret_or_state in (".env", ".venv", ".state", ".git"):
        assert secret_or_state in patterns, secret_or_state
    for needed in ("pyproject.toml", "app", "migrations"):
        hits = [pattern for pattern in patterns if fnmatch.fnmatch(needed, pattern)]
        assert not hits, f"{needed} is excluded by {hits}"


# --- compose: Prometheus and Grafana (monitoring/) ---

MONITORING_SERVICES = ("prometheus", "grafana")


def makefile_variable(name: str) -> str:
    [value] = re.findall(rf"^{name} :?= (\S+)", (ROOT / "Makefile").read_text(), re.MULTILINE)
    return value


@STACKS
def test_monitoring_runs_pinned_official_images(stack: tuple[str, ...]) -> None:
    services = resolved(stack)
    # The Go module v0.MMM.P is Prometheus 3.MM.P: compose runs what `make promtool` checks with.
    module = re.fullmatch(r"v0\.3(\d\d)\.(\d+)", makefile_variable("PROMETHEUS_VERSION"))
    assert module, makefile_variable("PROMETHEUS_VERSION")
    minor, patch = int(module.group(1)), int(module.group(2))
    assert services["prometheus"]["image"] == f"prom/prometheus:v3.{minor}.{patch}"
    assert re.fullmatch(r"grafana/grafana:\d+\.\d+\.\d+", services["grafana"]["image"])


@STACKS
def test_monitoring_is_published_on_loopback_and_reads_its_files_read_only(
    stack: tuple[str, ...],
) -> None:
    services = resolved(stack)
    for name in MONITORING_SERVICES:
        service = services[name]
        assert service["ports"], name
        for port in service["ports"]:
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port}"
        binds = [volume for volume in service["volumes"] if volume.startswith("./")]
        assert binds, f"{name}: its provisioning is mounted from monitoring/"
        for volume in binds:
            assert volume.endswith(":ro"), f"{name}: {volume} must be read-only"
            assert volume.startswith("./monitoring/"), volume
        # Their containers hold none of the app's secrets: no .env, no Kafka or database URL.
        assert "env_file" not in service, name
        assert not any(key.startswith(("KAFKA_", "DATABASE_")) for key in environment_of(service))


def test_grafanas_admin_password_is_required_not_defaulted() -> None:
    grafana = load_yaml("compose.yaml")["services"]["grafana"]["environment"]
    password = grafana["GF_SECURITY_ADMIN_PASSWORD"]
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?[^}]+\}", password), password
    assert env_example()["GRAFANA_ADMIN_PASSWORD"] == "", ".env.example must not ship one"
    without = {k: v for k, v in operator_env().items() if k != "GRAFANA_ADMIN_PASSWORD"}
    with pytest.raises(KeyError, match="GRAFANA_ADMIN_PASSWORD"):
        interpolate(load_yaml("compose.yaml"), without)
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false"


@STACKS
def test_prometheus_scrapes_the_api_and_every_worker_replica(
    stack: tuple[str, ...], no_local_config: pytest.MonkeyPatch
) -> None:
    services = resolved(stack)
    prometheus = services["prometheus"]
    mounted = {v.split(":")[1]: v.split(":")[0] for v in prometheus["volumes"] if v[0] == "."}
    config_file = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    config_path = PurePosixPath(config_file.partition("=")[2])
    config = load_yaml(str(PurePosixPath(mounted[str(config_path.parent)]) / config_path.name))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}

    api_port = build_parser().parse_args(services["api"]["command"]).port
    assert jobs["orders-api"]["static_configs"] == [{"targets": [f"api:{api_port}"]}]

    # One A record per replica of the worker service: `--scale worker=N` is scraped N times.
    [discovery] = jobs["orders-worker"]["dns_sd_configs"]
    assert (discovery["names"], discovery["type"]) == (["worker"], "A")
    for variable, value in container_env(services["worker"]).items():
        no_local_config.setenv(variable, value)
    worker = load_settings().worker
    assert worker.metrics_host == "0.0.0.0", "reachable from the prometheus container"
    assert discovery["port"] == worker.metrics_port != 0
    assert "ports" not in services["worker"], "the workers' metrics are not published"


# --- compose: the simulated payment gateway ---


@STACKS
def test_the_gateway_serves_on_the_address_payments_calls(
    stack: tuple[str, ...], no_local_config: pytest.MonkeyPatch
) -> None:
    services = resolved(stack)
    gateway = services["gateway"]
    assert gateway["image"] == services["api"]["image"], "the app's image"
    args = build_parser().parse_args(gateway["command"])
    assert args.command == "gateway"
    assert args.host == "0.0.0.0", "reachable from the payments containers"
    assert args.port is not None, "pin --port: a GATEWAY_PORT in .env must not move it"
    for variable, value in container_env(services["payments"]).items():
        no_local_config.setenv(variable, value)
    url = urlsplit(load_settings().payments.gateway_url)
    assert (url.scheme, url.hostname, url.port) == ("http", "gateway", args.port)
    # Its healthcheck (what payments waits for) asks the gateway's own GET /stats.
    probe = " ".join(gateway["healthcheck"]["test"])
    assert f"http://127.0.0.1:{args.port}/stats" in probe, probe


@STACKS
def test_the_gateway_is_published_on_loopback_only(stack: tuple[str, ...]) -> None:
    """It has no authentication: /stats for the host's reader, nobody else's."""
    gateway = resolved(stack)["gateway"]
    port = build_parser().parse_args(gateway["command"]).port
    assert gateway["ports"] == [f"127.0.0.1:{port}:{port}"]


@STACKS
def test_the_gateway_holds_no_secret_and_only_its_settings(
    stack: tuple[str, ...], no_local_config: pytest.MonkeyPatch
) -> None:
    """No Kafka, no database: no .env (every password is there), no credentials, and each
    variable it is given a real setting."""
    gateway = resolved(stack)["gateway"]
    assert "env_file" not in gateway
    environment = environment_of(gateway)
    assert not set(environment) - settings_variables(), sorted(environment)
    assert not any(key.startswith(("KAFKA_", "DATABASE_")) for key in environment)
    assert not any(str(v).startswith("kafka-ca:") for v in gateway.get("volumes", []))
    chosen = operator_env()
    secrets = [chosen[name] for name in (*DATABASE_PASSWORDS, *KAFKA_PASSWORDS)]
    assert not [value for value in environment.values() if any(s in value for s in secrets)]
    with no_local_config.context() as patch:
        for variable, value in environment.items():
            patch.setenv(variable, value)
        assert load_settings().gateway.latency_ms == float(environment["GATEWAY_LATENCY_MS"])
