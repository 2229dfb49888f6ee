"""Kafka SASL/TLS settings from the environment, for every Kafka client otaflow makes.

librdkafka (confluent-kafka: connectors, agents' producers, admin) and aiokafka
(Faust, the worker) take the same settings, read here once per client:

================================  ==================================================
OTAFLOW_KAFKA_SECURITY_PROTOCOL   PLAINTEXT (default), SSL, SASL_PLAINTEXT, SASL_SSL
OTAFLOW_KAFKA_SASL_MECHANISM      PLAIN (default with SASL), SCRAM-SHA-256, SCRAM-SHA-512
OTAFLOW_KAFKA_SASL_USERNAME       SASL user (required with SASL_*)
OTAFLOW_KAFKA_SASL_PASSWORD       SASL password (required with SASL_*)
OTAFLOW_KAFKA_SSL_CA_FILE         CA bundle to verify the brokers (SSL, SASL_SSL);
                                  unset: the system's CAs
OTAFLOW_KAFKA_SSL_CERT_FILE       client certificate for mutual TLS (with ..._KEY_FILE)
OTAFLOW_KAFKA_SSL_KEY_FILE        its private key
================================  ==================================================

A setting that does not fit the protocol (a SASL user with SSL, a CA file with
PLAINTEXT) is refused at start-up rather than ignored.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class KafkaSecurityError(ValueError):
    pass


@dataclass(frozen=True)
class KafkaSecurity:
    protocol: str = "PLAINTEXT"
    mechanism: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> KafkaSecurity:
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            return env.get(f"OTAFLOW_KAFKA_{name}") or None

        protocol = (get("SECURITY_PROTOCOL") or "PLAINTEXT").upper()
        if protocol not in PROTOCOLS:
            raise KafkaSecurityError(
                f"OTAFLOW_KAFKA_SECURITY_PROTOCOL={protocol}: must be one of {', '.join(PROTOCOLS)}"
            )
        mechanism, username, password = (
            get("SASL_MECHANISM"),
            get("SASL_USERNAME"),
            get("SASL_PASSWORD"),
        )
        ca_file, cert_file, key_file = get("SSL_CA_FILE"), get("SSL_CERT_FILE"), get("SSL_KEY_FILE")
        sasl = protocol.startswith("SASL_")
        tls = protocol in ("SSL", "SASL_SSL")
        if sasl:
            mechanism = (mechanism or "PLAIN").upper()
            if mechanism not in MECHANISMS:
                raise KafkaSecurityError(
                    f"OTAFLOW_KAFKA_SASL_MECHANISM={mechanism}: must be one of "
                    f"{', '.join(MECHANISMS)}"
                )
            if not username or not password:
                raise KafkaSecurityError(
                    f"{protocol} needs OTAFLOW_KAFKA_SASL_USERNAME and OTAFLOW_KAFKA_SASL_PASSWORD"
                )
        elif mechanism or username or password:
            raise KafkaSecurityError(
                f"OTAFLOW_KAFKA_SASL_* is set but OTAFLOW_KAFKA_SECURITY_PROTOCOL={protocol} "
                "does not use SASL (SASL_PLAINTEXT or SASL_SSL)"
            )
        if not tls and (ca_file or cert_file or key_file):
            raise KafkaSecurityError(
                f"OTAFLOW_KAFKA_SSL_* is set but OTAFLOW_KAFKA_SECURITY_PROTOCOL={protocol} "
                "does not use TLS (SSL or SASL_SSL)"
            )
        if bool(cert_file) != bool(key_file):
            raise KafkaSecurityError(
                "OTAFLOW_KAFKA_SSL_CERT_FILE and OTAFLOW_KAFKA_SSL_KEY_FILE go together"
            )
        return cls(protocol, mechanism, username, password, ca_file, cert_file, key_file)

    def librdkafka(self) -> dict[str, Any]:
        """The settings in librdkafka's names (confluent-kafka clients)."""
        out: dict[str, Any] = {}
        if self.protocol == "PLAINTEXT":
            return out
        out["security.protocol"] = self.protocol
        if self.sasl:
            out["sasl.mechanisms"] = self.mechanism
            out["sasl.username"] = self.username
            out["sasl.password"] = self.password
        if self.ca_file:
            out["ssl.ca.location"] = self.ca_file
        if self.cert_file:
            out["ssl.certificate.location"] = self.cert_file
            out["ssl.key.location"] = self.key_file
        return out

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def faust_credentials(self) -> Any:
        """Faust's ``broker_credentials`` (None for PLAINTEXT)."""
        from faust.auth import SASLCredentials, SSLCredentials

        if self.sasl:
            return SASLCredentials(
                username=self.username,
                password=self.password,
                mechanism=self.mechanism,
                ssl_context=self.ssl_context(),
            )
        context = self.ssl_context()
        return SSLCredentials(context) if context is not None else None


def kafka_client_config(bootstrap: str) -> dict[str, Any]:
    """``bootstrap.servers`` plus the security settings of the environment (librdkafka)."""
    return {"bootstrap.servers": bootstrap, **KafkaSecurity.from_env().librdkafka()}
