"""The dev stack starts (or finds) a real Kafka and Mosquitto that clients can use.

These tests leave the stack running: it is shared by every integration test.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
from confluent_kafka.admin import AdminClient

from otaflow import topics
from otaflow.config import MqttAddress, Settings
from otaflow.dev import devstack
from tests.integration.conftest import scratch
from tests.mqtt_logins import service_client

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack() -> Iterator[devstack.DevStack]:
    yield devstack.up()


def test_status_reports_both_running_after_up(stack: devstack.DevStack) -> None:
    report = devstack.status()
    assert set(report) == {"kafka", "mqtt"}
    assert report["kafka"]["running"] is True
    assert report["mqtt"]["running"] is True
    assert report["kafka"]["address"] == stack.kafka_bootstrap
    assert report["mqtt"]["address"] == MqttAddress.parse(stack.mqtt_url).url


def test_second_up_is_idempotent(stack: devstack.DevStack) -> None:
    pids_before = {name: info["pid"] for name, info in devstack.status().items()}
    again = devstack.up()
    assert again == stack
    pids_after = {name: info["pid"] for name, info in devstack.status().items()}
    assert pids_after == pids_before  # nothing was started a second time


def test_kafka_admin_lists_topics(stack: devstack.DevStack) -> None:
    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
    metadata = admin.list_topics(timeout=10)
    assert metadata.brokers, "the broker reported no brokers"
    assert isinstance(metadata.topics, dict)


def test_mqtt_publish_and_receive_one_message(stack: devstack.DevStack) -> None:
    address = MqttAddress.parse(stack.mqtt_url)
    topic = f"otaflow-test/devstack/{uuid.uuid4().hex}"
    subscribed = threading.Event()
    received: list[bytes] = []
    got_message = threading.Event()

    def on_subscribe(client: mqtt.Client, userdata: object, mid: int, *rest: object) -> None:
        subscribed.set()

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        received.append(bytes(msg.payload))
        got_message.set()

    sub = service_client(address, f"sub-{uuid.uuid4().hex[:8]}")
    pub = service_client(address, f"pub-{uuid.uuid4().hex[:8]}")
    sub.on_subscribe = on_subscribe
    sub.on_message = on_message
    sub.connect(address.host, address.port)
    sub.loop_start()
    pub.connect(address.host, address.port)
    pub.loop_start()
    try:
        sub.subscribe(topic, qos=1)
        assert subscribed.wait(10), "no SUBACK from the broker"
        pub.publish(topic, b"hello-fleet", qos=1).wait_for_publish(timeout=10)
        assert got_message.wait(10), "the published message never arrived"
        assert received == [b"hello-fleet"]
    finally:
        for client in (pub, sub):
            client.disconnect()
            client.loop_stop()


def test_env_override_is_only_checked_not_provisioned(
    stack: devstack.DevStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    monkeypatch.setenv("OTAFLOW_KAFKA_BOOTSTRAP", stack.kafka_bootstrap)
    monkeypatch.setenv("OTAFLOW_MQTT_URL", f"mqtt://127.0.0.1:{dead_port}")
    with pytest.raises(devstack.DevstackError, match="OTAFLOW_MQTT_URL"):
        devstack.up()


def test_missing_java_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(devstack.DevstackError, match="java"):
        devstack._check_java()


def test_cli_status_exit_code(stack: devstack.DevStack, capsys: pytest.CaptureFixture[str]) -> None:
    assert devstack.main(["status"]) == 0
    out = capsys.readouterr().out
    assert "kafka" in out and "mqtt" in out


def test_a_deployment_deletes_its_topics_and_only_its_own(stack: devstack.DevStack) -> None:
    mine, other = scratch(Settings()), scratch(Settings())
    for settings in (mine, other):
        topics.ensure_topics(stack.kafka_bootstrap, settings, [topics.DEVICE_REPORTS])
    changelog = topics.TopicSpec(f"{mine.app_id}-devices-changelog", (), "", public=False)
    topics.ensure_topics(stack.kafka_bootstrap, Settings(topic_prefix=""), [changelog])
    # Metadata can trail a creation on a loaded broker: list what deletion will list.
    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
    wanted = {topics.DEVICE_REPORTS.full_name(mine), changelog.name}
    deadline = time.monotonic() + 30
    while not wanted <= set(admin.list_topics(timeout=10).topics):
        assert time.monotonic() < deadline, "the topics never showed in the metadata"
        time.sleep(0.1)

    deleted = topics.delete_deployment_topics(stack.kafka_bootstrap, mine)

    assert deleted == 2
    left = AdminClient({"bootstrap.servers": stack.kafka_bootstrap}).list_topics(timeout=10).topics
    assert topics.DEVICE_REPORTS.full_name(mine) not in left
    assert changelog.name not in left
    assert topics.DEVICE_REPORTS.full_name(other) in left
    assert topics.delete_deployment_topics(stack.kafka_bootstrap, mine) == 0  # idempotent
