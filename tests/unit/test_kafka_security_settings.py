"""Kafka client security: the settings refuse what would not be secure, and one function turns
them into aiokafka's options, which every client of the app takes."""

from __future__ import annotations

import ast
import ssl
import subprocess
from pathlib import Path

import pytest

from app.errors import ConfigurationError
from app.kafka_security import kafka_client_security
from app.settings import KafkaSettings, load_settings

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = {"AIOKafkaProducer", "AIOKafkaConsumer", "AIOKafkaAdminClient"}
SECURITY_VARIABLES = (
    "KAFKA_SECURITY_PROTOCOL",
    "KAFKA_SASL_MECHANISM",
    "KAFKA_SASL_USERNAME",
    "KAFKA_SASL_PASSWORD",
    "KAFKA_SSL_CAFILE",
    "KAFKA_SSL_CERTFILE",
    "KAFKA_SSL_KEYFILE",
)


@pytest.fixture(autouse=True)
def no_local_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Neither a developer's .env nor a sourced credentials file reaches these settings."""
    monkeypatch.chdir(tmp_path)
    for variable in SECURITY_VARIABLES:
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate and its key (PEM): a CA to trust, or a client's identity."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    files = ["-keyout", str(key), "-out", str(cert)]
    subprocess.run(
        ["openssl", "req", "-x509", *new_key, "-days", "1", "-subj", "/CN=unit-test-ca", *files],
        check=True,
        capture_output=True,
    )
    return cert, key


def scram(**overrides: object) -> KafkaSettings:
    values: dict[str, object] = {
        "security_protocol": "SASL_SSL",
        "sasl_username": "orders-api",
        "sasl_password": "s3cret-value",
    }
    return KafkaSettings(**(values | overrides))  # type: ignore[arg-type]


# --- the options ---


def test_plaintext_gives_only_the_protocol() -> None:
    assert kafka_client_security(KafkaSettings()) == {"security_protocol": "PLAINTEXT"}


def test_sasl_ssl_authenticates_with_scram_and_verifies_the_broker(
    certificate: tuple[Path, Path],
) -> None:
    options = kafka_client_security(scram(ssl_cafile=certificate[0]))
    context = options.pop("ssl_context")
    assert options == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "orders-api",
        "sasl_plain_password": "s3cret-value",
    }
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    # The configured CA, and only it, is trusted.
    [ca] = context.get_ca_certs()
    assert ca["subject"] == ((("commonName", "unit-test-ca"),),)


def test_sasl_plaintext_has_no_tls_context() -> None:
    options = kafka_client_security(scram(security_protocol="SASL_PLAINTEXT"))
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert "ssl_context" not in options


def test_mutual_tls_loads_the_client_certificate(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    options = kafka_client_security(
        KafkaSettings(security_protocol="SSL", ssl_cafile=cert, ssl_certfile=cert, ssl_keyfile=key)
    )
    assert set(options) == {"security_protocol", "ssl_context"}


def test_a_missing_ca_file_names_its_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"KAFKA_SSL_CAFILE=.*nowhere\.pem"):
        kafka_client_security(scram(ssl_cafile=tmp_path / "nowhere.pem"))


def test_a_key_that_does_not_fit_names_the_variables(
    certificate: tuple[Path, Path], tmp_path: Path
) -> None:
    cert, _ = certificate
    with pytest.raises(ConfigurationError, match=r"KAFKA_SSL_CERTFILE=.*KAFKA_SSL_KEYFILE="):
        kafka_client_security(
            scram(ssl_cafile=cert, ssl_certfile=cert, ssl_keyfile=tmp_path / "nokey.pem")
        )


# Functions whose result carries kafka_client_security(...) (checked below) and may be spread
# into a client instead.
SECURED_OPTIONS = {"lab_client_options", "group_member_options"}


def test_every_kafka_client_of_the_app_takes_the_security_options() -> None:
    """No AIOKafkaProducer/Consumer/AdminClient is built in app/ without
    `**kafka_client_security(...)` (or `**lab_client_options(...)`, which holds it): a client
    that skipped it would connect in PLAINTEXT."""
    built, unsecured = 0, []
    for path in sorted((ROOT / "app").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and ast.unparse(node.func) in CLIENTS):
                continue
            built += 1
            spread = [
                k.value
                for k in node.keywords
                if k.arg is None and isinstance(k.value, ast.Call)
                if ast.unparse(k.value.func) in {"kafka_client_security", *SECURED_OPTIONS}
            ]
            if not spread:
                unsecured.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert built >= 5  # producer, worker consumer, migrate's admin, operator admin + consumer
    assert not unsecured, f"Kafka clients without kafka_client_security: {unsecured}"


# --- the settings ---


def test_the_default_is_plaintext_for_the_local_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    kafka = load_settings().kafka
    assert kafka.security_protocol == "PLAINTEXT"
    assert kafka.sasl_mechanism == "SCRAM-SHA-512"


def test_a_credentials_file_configures_a_secured_client(
    monkeypatch: pytest.MonkeyPatch, certificate: tuple[Path, Path]
) -> None:
    """The variables `KAFKA_SECURITY=sasl_ssl make up` writes per principal."""
    for variable, value in {
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": "orders-operator",
        "KAFKA_SASL_PASSWORD": "s3cret-value",
        "KAFKA_SSL_CAFILE": str(certificate[0]),
    }.items():
        monkeypatch.setenv(variable, value)
    kafka = load_settings().kafka
    assert kafka.sasl_username == "orders-operator"
    assert kafka.ssl_cafile == certificate[0]
    assert kafka_client_security(kafka)["sasl_plain_password"] == "s3cret-value"


def test_empty_variables_mean_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """As in .env.example: `KAFKA_SSL_CAFILE=` is no CA file, not the current directory."""
    for variable in SECURITY_VARIABLES[2:]:
        monkeypatch.setenv(variable, "")
    kafka = load_settings().kafka
    assert (kafka.sasl_username, kafka.sasl_password, kafka.ssl_cafile) == (None, None, None)


def test_the_password_is_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = scram()
    assert "s3cret-value" not in repr(settings)
    assert "s3cret-value" not in str(settings)
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "s3cret-value")
    with pytest.raises(ConfigurationError) as refused:  # the username is missing
        load_settings()
    assert "s3cret-value" not in str(refused.value)


@pytest.mark.parametrize("protocol", ["SASL_SSL", "SASL_PLAINTEXT"])
@pytest.mark.parametrize("missing", ["KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"])
def test_sasl_needs_a_username_and_a_password(
    monkeypatch: pytest.MonkeyPatch, protocol: str, missing: str
) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", protocol)
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "orders-api")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "s3cret-value")
    monkeypatch.delenv(missing)
    with pytest.raises(ConfigurationError, match="KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"):
        load_settings()


def test_plain_over_plaintext_is_refused_because_it_sends_the_password() -> None:
    with pytest.raises(ValueError, match=r"KAFKA_SASL_MECHANISM=PLAIN.*clear text"):
        scram(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN")


@pytest.mark.parametrize(
    ("protocol", "mechanism"),
    [("SASL_SSL", "PLAIN"), ("SASL_SSL", "SCRAM-SHA-256"), ("SASL_PLAINTEXT", "SCRAM-SHA-512")],
)
def test_other_mechanisms_are_allowed_where_the_password_stays_secret(
    protocol: str, mechanism: str
) -> None:
    assert (
        kafka_client_security(scram(security_protocol=protocol, sasl_mechanism=mechanism))[
            "sasl_mechanism"
        ]
        == mechanism
    )


def test_an_unknown_protocol_or_mechanism_names_its_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "GSSAPI")
    with pytest.raises(ConfigurationError, match="KAFKA_SASL_MECHANISM"):
        load_settings()
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "TLS")
    with pytest.raises(ConfigurationError, match="KAFKA_SECURITY_PROTOCOL"):
        load_settings()


@pytest.mark.parametrize(
    "misleading",
    [
        {"sasl_username": "orders-api", "sasl_password": "s3cret-value"},
        {"ssl_cafile": "/etc/ssl/ca.pem"},
    ],
    ids=["credentials", "ca-file"],
)
def test_security_options_without_the_protocol_that_uses_them_are_refused(
    misleading: dict[str, str],
) -> None:
    """Someone who set them believes the client authenticates or encrypts: it would not."""
    with pytest.raises(ValueError, match="KAFKA_SECURITY_PROTOCOL=PLAINTEXT"):
        KafkaSettings(**misleading)  # type: ignore[arg-type]


def test_a_client_key_needs_its_certificate() -> None:
    with pytest.raises(ValueError, match="KAFKA_SSL_KEYFILE needs KAFKA_SSL_CERTFILE"):
        KafkaSettings(security_protocol="SSL", ssl_keyfile=Path("/etc/key.pem"))


def test_the_lab_client_options_hold_the_security_options(certificate: tuple[Path, Path]) -> None:
    from app.lab.clients import lab_client_options

    cert, _ = certificate
    settings = scram(ssl_cafile=cert)
    options = lab_client_options(settings, "x")
    assert {**options, **kafka_client_security(settings)}.keys() == options.keys()
    assert options["security_protocol"] == "SASL_SSL"
