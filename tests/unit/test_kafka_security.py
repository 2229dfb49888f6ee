"""Kafka SASL/TLS settings from the environment (otaflow.kafka_security)."""

from __future__ import annotations

import pytest
from faust.auth import SASLCredentials

from otaflow.kafka_security import KafkaSecurity, KafkaSecurityError, kafka_client_config


def test_plaintext_by_default_adds_nothing() -> None:
    security = KafkaSecurity.from_env({})
    assert security.librdkafka() == {} and security.faust_credentials() is None


def test_sasl_ssl_reaches_librdkafka_and_faust() -> None:
    security = KafkaSecurity.from_env(
        {
            "OTAFLOW_KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
            "OTAFLOW_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "OTAFLOW_KAFKA_SASL_USERNAME": "otaflow",
            "OTAFLOW_KAFKA_SASL_PASSWORD": "pw",
        }
    )
    assert security.librdkafka() == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": "SCRAM-SHA-512",
        "sasl.username": "otaflow",
        "sasl.password": "pw",
    }
    credentials = security.faust_credentials()
    assert isinstance(credentials, SASLCredentials)
    assert (credentials.username, credentials.password) == ("otaflow", "pw")
    assert credentials.ssl_context is not None
    assert "pw" not in repr(security)


def test_tls_with_a_ca_and_a_client_certificate() -> None:
    security = KafkaSecurity.from_env(
        {
            "OTAFLOW_KAFKA_SECURITY_PROTOCOL": "SSL",
            "OTAFLOW_KAFKA_SSL_CA_FILE": "/etc/ca.pem",
            "OTAFLOW_KAFKA_SSL_CERT_FILE": "/etc/client.pem",
            "OTAFLOW_KAFKA_SSL_KEY_FILE": "/etc/client.key",
        }
    )
    assert security.librdkafka() == {
        "security.protocol": "SSL",
        "ssl.ca.location": "/etc/ca.pem",
        "ssl.certificate.location": "/etc/client.pem",
        "ssl.key.location": "/etc/client.key",
    }


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"OTAFLOW_KAFKA_SECURITY_PROTOCOL": "KERBEROS"}, "must be one of"),
        ({"OTAFLOW_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "needs OTAFLOW_KAFKA_SASL_USERNAME"),
        ({"OTAFLOW_KAFKA_SASL_USERNAME": "u"}, "does not use SASL"),
        ({"OTAFLOW_KAFKA_SSL_CA_FILE": "/ca"}, "does not use TLS"),
        (
            {
                "OTAFLOW_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "OTAFLOW_KAFKA_SASL_MECHANISM": "GSSAPI",
                "OTAFLOW_KAFKA_SASL_USERNAME": "u",
                "OTAFLOW_KAFKA_SASL_PASSWORD": "p",
            },
            "must be one of",
        ),
        (
            {"OTAFLOW_KAFKA_SECURITY_PROTOCOL": "SSL", "OTAFLOW_KAFKA_SSL_CERT_FILE": "/c"},
            "go together",
        ),
    ],
)
def test_settings_that_do_not_fit_are_refused(env: dict[str, str], reason: str) -> None:
    with pytest.raises(KafkaSecurityError, match=reason):
        KafkaSecurity.from_env(env)


def test_client_config_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTAFLOW_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("OTAFLOW_KAFKA_SASL_USERNAME", "u")
    monkeypatch.setenv("OTAFLOW_KAFKA_SASL_PASSWORD", "p")
    config = kafka_client_config("k1:9092")
    assert config["bootstrap.servers"] == "k1:9092"
    assert (config["security.protocol"], config["sasl.mechanisms"]) == ("SASL_PLAINTEXT", "PLAIN")
