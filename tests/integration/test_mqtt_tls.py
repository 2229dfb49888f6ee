"""otaflow's MQTT clients over TLS with a login, against a real Mosquitto (issue 11).

A Mosquitto of its own with a TLS listener (a certificate made here for 127.0.0.1) and
otaflow's auth plugin: the egress's own publisher (``QoS1Publisher``) and a paho client
set up like the ingress and file-download connectors (``configure_paho``) log in as the
service user from an ``mqtts://user:password@...`` URL, trusting the CA file given.
"""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from connectors.mqtt_login import configure_paho, tls_context
from connectors.mqtt_publisher import QoS1Publisher, check_topic
from otaflow.config import MqttAddress
from otaflow.edge.broker import AuthSettings, build_plugin, dev_listener_conf, wait_for_listener
from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration

USER, PASSWORD = "otaflow-service", "tls-test-password"


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "broker.pem", directory / "broker.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    cert, key = self_signed(tmp_path)
    port = free_port()
    auth = AuthSettings("k", USER, PASSWORD, None)
    conf = tmp_path / "mosquitto.conf"
    listener = dev_listener_conf("127.0.0.1", port, auth, build_plugin()).replace(
        "plugin_opt_devices_file None\n", ""
    )
    conf.write_text(
        "user root\nper_listener_settings true\npersistence false\n"
        f"{listener}certfile {cert}\nkeyfile {key}\n"
    )
    log = (tmp_path / "mosquitto.log").open("wb")
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=log, stderr=log)
    try:
        wait_for_listener("127.0.0.1", port, proc, 10)
        yield port, cert
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def test_publisher_and_paho_log_in_over_tls(tls_broker: tuple[int, Path]) -> None:
    port, ca = tls_broker
    address = MqttAddress.parse(f"mqtts://{USER}:{PASSWORD}@127.0.0.1:{port}", str(ca))
    received: list[str] = []
    subscribed = threading.Event()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="tls-sub")
    configure_paho(sub, address)
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe("/ota/device/upgrade/pk/+", 1)
    sub.on_subscribe = lambda c, u, mid, rcs, p: subscribed.set()
    sub.on_message = lambda c, u, m: received.append(m.topic)
    sub.connect(address.host, address.port)
    sub.loop_start()
    try:
        assert subscribed.wait(10), "the paho client did not get in over TLS"
        acked: list[int] = []
        publisher = QoS1Publisher(
            "tls-pub",
            address.host,
            address.port,
            username=address.username,
            password=address.password,
            ssl_context=tls_context(address),
        )
        publisher.on_ack = acked.append
        publisher.connect()
        for i in range(200):
            publisher.publish(check_topic(f"/ota/device/upgrade/pk/d{i}"), b"x" * 2000)
        deadline = time.monotonic() + 20
        while len(acked) < 200 or len(received) < 200:
            assert time.monotonic() < deadline, (len(acked), len(received))
            publisher.service(0.05)
        assert publisher.connected and len(set(received)) == 200
        publisher.disconnect()
    finally:
        sub.disconnect()
        sub.loop_stop()


def test_an_untrusted_broker_or_a_wrong_password_is_refused(tls_broker: tuple[int, Path]) -> None:
    port, ca = tls_broker
    untrusted = MqttAddress.parse(f"mqtts://{USER}:{PASSWORD}@127.0.0.1:{port}")  # system CAs
    publisher = QoS1Publisher("tls-pub-2", "127.0.0.1", port, ssl_context=tls_context(untrusted))
    with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):
        publisher.connect()
    wrong = MqttAddress.parse(f"mqtts://{USER}:nope@127.0.0.1:{port}", str(ca))
    reasons: list[str] = []
    publisher = QoS1Publisher(
        "tls-pub-3",
        "127.0.0.1",
        port,
        username=wrong.username,
        password=wrong.password,
        ssl_context=tls_context(wrong),
    )
    publisher.on_disconnect = reasons.append
    publisher.connect()
    deadline = time.monotonic() + 10
    while not reasons:
        assert time.monotonic() < deadline
        publisher.service(0.05)
    assert "refused" in reasons[0] and not publisher.connected
