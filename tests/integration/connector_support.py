"""What the connector tests share: scratch settings on the dev stack, a connector run in a
thread, a topic read from its start, MQTT clients (the service login) and a private
Mosquitto a test can stop and restart."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from otaflow.config import MqttAddress, Settings
from otaflow.dev import devstack
from otaflow.topics import DEAD_LETTERS, DEVICE_REPORTS, NOTIFICATIONS, TopicSpec, ensure_topics
from tests.integration.conftest import free_port, scratch
from tests.mqtt_logins import service_client


def make_settings(stack: devstack.DevStack, mqtt_address: MqttAddress | None = None) -> Settings:
    settings = scratch(
        Settings(
            kafka_bootstrap=stack.kafka_bootstrap,
            mqtt=mqtt_address or MqttAddress.parse(stack.mqtt_url),
        )
    )
    ensure_topics(settings.kafka_bootstrap, settings, [DEVICE_REPORTS, DEAD_LETTERS, NOTIFICATIONS])
    return settings


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


@contextlib.contextmanager
def running(target: Callable[[threading.Event], None]) -> Iterator[threading.Thread]:
    """Run a connector's ``run(stop)`` in a thread; stop it and check it ended cleanly."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def body() -> None:
        try:
            target(stop)
        except BaseException as exc:
            errors.append(exc)
            raise

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive(), "the connector did not stop"
    assert not errors, f"the connector failed: {errors!r}"


class TopicReader:
    """Reads a whole topic from the beginning, incrementally."""

    def __init__(self, settings: Settings, spec: TopicSpec) -> None:
        self.topic = spec.full_name(settings)
        self.consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "group.id": f"reader-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
            }
        )
        self.consumer.assign(
            [
                TopicPartition(self.topic, p, OFFSET_BEGINNING)
                for p in range(spec.partition_count(settings))
            ]
        )
        self.messages: list[Message] = []

    def read(
        self, condition: Callable[[list[Message]], bool], timeout: float, what: str
    ) -> list[Message]:
        deadline = time.monotonic() + timeout
        while not condition(self.messages):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout:.0f}s waiting for {what} "
                    f"({len(self.messages)} records read)"
                )
            for msg in self.consumer.consume(num_messages=1000, timeout=0.2):
                if msg.error() is None:
                    self.messages.append(msg)
        return self.messages

    def read_to_end(self, timeout: float = 30) -> list[Message]:
        """Everything written so far (up to the current high watermarks)."""
        ends = {}
        for tp in self.consumer.assignment():
            ends[tp.partition] = self.consumer.get_watermark_offsets(tp, timeout=10)[1]

        def caught_up(messages: list[Message]) -> bool:
            seen: dict[int, int] = {}
            for m in messages:
                partition, offset = m.partition(), m.offset()
                assert partition is not None and offset is not None
                seen[partition] = max(seen.get(partition, -1), offset)
            return all(seen.get(p, -1) + 1 >= end for p, end in ends.items())

        return self.read(caught_up, timeout, "the end of the topic")

    def close(self) -> None:
        self.consumer.close()


@contextlib.contextmanager
def connected(
    client: mqtt.Client, address: MqttAddress, who: str = "the test client"
) -> Iterator[mqtt.Client]:
    """``client`` connected to ``address`` (its CONNACK received), its network loop
    running; disconnected when the block ends."""
    accepted = threading.Event()
    client.on_connect = lambda *_: accepted.set()
    client.connect(address.host, address.port, keepalive=30)
    client.loop_start()
    try:
        assert accepted.wait(10), f"{who} could not connect"
        yield client
    finally:
        client.disconnect()
        client.loop_stop()


def mqtt_client(
    address: MqttAddress, client_id: str | None = None, clean_session: bool = True
) -> contextlib.AbstractContextManager[mqtt.Client]:
    # The harness publishes for many devices and watches every offer: the service login.
    client = service_client(address, client_id, clean_session=clean_session)
    client.max_inflight_messages_set(200)
    client.reconnect_delay_set(min_delay=1, max_delay=2)
    return connected(client, address)


def publish_all(address: MqttAddress, messages: list[tuple[str, bytes]]) -> None:
    with mqtt_client(address) as client:
        infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(timeout=60)
            assert info.is_published()


class UpgradeSubscriber:
    """Collects the task ids of the upgrade offers a product's devices receive."""

    def __init__(self, product_key: str) -> None:
        self.filter = f"/ota/device/upgrade/{product_key}/+"
        self.task_ids: set[str] = set()
        self.received = 0
        self.messages: dict[str, tuple[str, dict[str, Any]]] = {}
        self.subscribed = threading.Event()
        self._lock = threading.Lock()

    def attach(self, client: mqtt.Client) -> None:
        def on_connect(c: mqtt.Client, *_: Any) -> None:
            c.subscribe(self.filter, qos=1)  # again after each reconnect: harmless

        client.on_connect = on_connect
        client.on_subscribe = lambda *_: self.subscribed.set()
        client.on_message = self.on_message
        client.subscribe(self.filter, qos=1)
        assert self.subscribed.wait(10), "no SUBACK"

    def on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        message = json.loads(msg.payload)
        task_id = message["data"]["taskId"]
        with self._lock:
            self.received += 1
            self.task_ids.add(task_id)
            self.messages[task_id] = (msg.topic, message)

    def count(self) -> int:
        with self._lock:
            return len(self.task_ids)


def signer(file_path: str) -> str:
    return f"https://packages.test/packages/{file_path}?Signature=x"


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class PrivateMosquitto:
    """A Mosquitto of the test's own, with persistence, that the test can stop and restart."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("mosquitto") or next(
            (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.path.exists(p)),
            None,
        )
        if binary is None:
            pytest.skip("mosquitto is not installed")
        self.binary = binary
        self.port = free_port()
        self.workdir = workdir
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {workdir}/\n"
            "max_queued_messages 100000\n"
            "max_inflight_messages 1000\n"
            # Running as root, mosquitto would switch to its own user, which cannot
            # write the persistence file into the test's private directory.
            "user root\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> MqttAddress:
        return MqttAddress("127.0.0.1", self.port)

    def start(self) -> None:
        log = open(self.workdir / "mosquitto.log", "ab")  # noqa: SIM115 - lives with the process
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT
        )
        wait_for(lambda: port_open(self.port), 15, "the private mosquitto to listen")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: mosquitto writes its persistence file and exits
            self.proc.wait(15)
        self.proc = None
