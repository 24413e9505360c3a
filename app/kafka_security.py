"""How every Kafka client of the app authenticates and encrypts: one function, from the settings.

The producer (API and DLQ), the workers' consumer, the admin client of `orders migrate` and the
operator commands' clients all spread `**kafka_client_security(settings)` into their
constructor, so no client can be built that skips the configured security.

Secured brokers (compose, `KAFKA_SECURITY=sasl_ssl make up`) take SASL_SSL with SCRAM-SHA-512:
the password never crosses the wire (SCRAM proves it by challenge-response, so neither a broker
impersonator nor whatever terminates TLS learns it, which SASL/PLAIN would hand them); the
brokers keep a salted verifier in the cluster metadata rather than a password file each; users
are added and passwords rotated at runtime (`kafka-configs --alter --add-config
'SCRAM-SHA-512=[password=...]' --entity-type users --entity-name NAME`). TLS (verified against
KAFKA_SSL_CAFILE, hostname checked) keeps the orders themselves private.
"""

from __future__ import annotations

import ssl
from typing import TypedDict

from aiokafka.helpers import create_ssl_context

from app.errors import ConfigurationError
from app.settings import KafkaSettings


class KafkaClientSecurity(TypedDict, total=False):
    """The keyword arguments aiokafka's clients take for security (a subset, as it applies)."""

    security_protocol: str
    sasl_mechanism: str
    sasl_plain_username: str
    sasl_plain_password: str
    ssl_context: ssl.SSLContext


def kafka_client_security(settings: KafkaSettings) -> KafkaClientSecurity:
    """aiokafka client options for the configured protocol; raises ConfigurationError naming the
    variable when a certificate file cannot be used."""
    protocol = settings.security_protocol
    options: KafkaClientSecurity = {"security_protocol": protocol}
    if protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        # KafkaSettings refuses a SASL protocol without both; aiokafka names them "plain" for
        # every mechanism, SCRAM included.
        assert settings.sasl_username is not None
        assert settings.sasl_password is not None
        options["sasl_mechanism"] = settings.sasl_mechanism
        options["sasl_plain_username"] = settings.sasl_username
        options["sasl_plain_password"] = settings.sasl_password.get_secret_value()
    if protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = _ssl_context(settings)
    return options


def _ssl_context(settings: KafkaSettings) -> ssl.SSLContext:
    try:
        context: ssl.SSLContext = create_ssl_context(cafile=settings.ssl_cafile)
    except (OSError, ssl.SSLError) as exc:
        msg = f"KAFKA_SSL_CAFILE={settings.ssl_cafile}: not a readable CA certificate: {exc}"
        raise ConfigurationError(msg) from exc
    if settings.ssl_certfile is not None:
        try:
            context.load_cert_chain(settings.ssl_certfile, settings.ssl_keyfile)
        except (OSError, ssl.SSLError) as exc:
            msg = (
                f"KAFKA_SSL_CERTFILE={settings.ssl_certfile}, KAFKA_SSL_KEYFILE="
                f"{settings.ssl_keyfile}: not a readable certificate and key: {exc}"
            )
            raise ConfigurationError(msg) from exc
    return context
