"""Devices at the edge, on real Kafka and a real authenticating Mosquitto (issue 11).

Each test runs its own Mosquitto with otaflow's auth plugin on a free port (the
shared dev broker stays anonymous), every otaflow process logged in as the service
user, presence on, and the registry sync keeping the broker's device list. Devices
are the official SDK (``aliyun-iot-linkkit``, unchanged) or paho clients that log in
the same way (``otaflow.edge.credentials.device_login``).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.reasoncodes import ReasonCode

from otaflow import topics
from otaflow.dev import devstack
from otaflow.edge.broker import AuthSettings, start_broker
from otaflow.edge.credentials import device_login, device_secret
from tests.integration.conftest import Otaflow, free_port
from tests.integration.rollout_support import create_package
from tests.sdkdevice import SdkDevice

pytestmark = pytest.mark.integration

SERVICE_USER = "otaflow-service"
SERVICE_PASSWORD = f"svc-{uuid.uuid4().hex}"
DEVICE_KEY = f"test-device-key-{uuid.uuid4().hex}"
HOST = "127.0.0.1"


@dataclass
class Edge:
    otaflow: Otaflow
    port: int
    devices_file: Path
    broker_log: Path
    product_key: str = ""
    made: list[str] = field(default_factory=list)

    def register(self, name: str) -> str:
        """RegisterDevice; returns its DeviceSecret once the broker knows the device."""
        if not self.product_key:
            product = self.otaflow.call(
                "CreateProduct", now_ms(), ProductName=f"edge_{uuid.uuid4().hex[:8]}", NodeType=0
            )
            self.product_key = product["ProductKey"]
        secret: str = self.otaflow.call(
            "RegisterDevice", now_ms(), ProductKey=self.product_key, DeviceName=name
        )["DeviceSecret"]
        self.wait_listed(name, listed=True)
        return secret

    def wait_listed(self, name: str, *, listed: bool, timeout: float = 30.0) -> None:
        entry = f"{self.product_key}&{name}"
        deadline = time.monotonic() + timeout
        while True:
            text = self.devices_file.read_text() if self.devices_file.exists() else ""
            if (entry in text.splitlines()) == listed:
                return
            assert time.monotonic() < deadline, f"{entry} listed={listed} never came"
            time.sleep(0.05)

    def reports(self) -> Any:
        return self.otaflow.reader(topics.DEVICE_REPORTS)


def now_ms() -> int:
    return int(time.time() * 1000)


@pytest.fixture
def edge(stack: devstack.DevStack, tmp_path: Path) -> Iterator[Edge]:
    port = free_port()
    devices_file = tmp_path / "registered-devices"
    auth = AuthSettings(DEVICE_KEY, SERVICE_USER, SERVICE_PASSWORD, devices_file)
    broker = start_broker(tmp_path / "mosquitto", HOST, port, auth)
    url = f"mqtt://{SERVICE_USER}:{SERVICE_PASSWORD}@{HOST}:{port}"
    deployment = Otaflow(
        devstack.DevStack(stack.kafka_bootstrap, url), tmp_path, tick_interval_s=0.5
    )
    deployment.settings = replace(deployment.settings, presence=True, device_key=DEVICE_KEY)
    deployment.env.update({"OTAFLOW_PRESENCE": "1", "OTAFLOW_DEVICE_KEY": DEVICE_KEY})
    try:
        deployment.start_all()
        deployment.start(
            "registry-sync", "-m", "otaflow.edge.registry_sync", "--file", str(devices_file)
        )
        yield Edge(deployment, port, devices_file, tmp_path / "mosquitto" / "mosquitto.log")
    finally:
        deployment.close()
        broker.terminate()
        try:
            broker.wait(10)
        except subprocess.TimeoutExpired:
            broker.kill()
            broker.wait()


class PahoDevice:
    """A device logging in the platform's way with paho (MQTT 5, to see reason codes)."""

    def __init__(
        self, port: int, pk: str, dn: str, secret: str, timestamp: int | None = None
    ) -> None:
        login = device_login(pk, dn, secret, timestamp=timestamp)
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=login.client_id, protocol=mqtt.MQTTv5
        )
        self.client.username_pw_set(login.username, login.password)
        self.connack: ReasonCode | None = None
        self.granted: dict[int, list[ReasonCode]] = {}
        self.messages: list[tuple[str, bytes]] = []
        self._event = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.disconnects = 0
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, bytes(m.payload)))
        self.client.connect(HOST, port)
        self.client.loop_start()
        self._wait(lambda: self.connack is not None, "CONNACK")

    def _on_connect(self, c: Any, u: Any, f: Any, rc: ReasonCode, p: Any) -> None:
        with self._event:
            self.connack = rc
            self._event.notify_all()
        if rc.is_failure:
            c.disconnect()  # no retrying with the same refused credentials

    def _on_disconnect(self, c: Any, u: Any, f: Any, rc: ReasonCode, p: Any) -> None:
        with self._event:
            self.disconnects += 1
            self._event.notify_all()

    def wait_kicked(self) -> None:
        """Until the broker closed this connection; then no reconnecting."""
        self._wait(lambda: self.disconnects > 0, "disconnect")
        self.client.loop_stop()

    def _on_subscribe(self, c: Any, u: Any, mid: int, rcs: list[ReasonCode], p: Any) -> None:
        with self._event:
            self.granted[mid] = rcs
            self._event.notify_all()

    def _wait(self, done: Any, what: str, timeout: float = 10.0) -> None:
        with self._event:
            assert self._event.wait_for(done, timeout), f"no {what}"

    def subscribe(self, topic: str) -> ReasonCode:
        _, sent_mid = self.client.subscribe(topic, 1)
        assert sent_mid is not None
        mid: int = sent_mid
        self._wait(lambda: mid in self.granted, f"SUBACK for {topic}")
        return self.granted[mid][0]

    def publish(self, topic: str, body: dict[str, Any]) -> None:
        self.client.publish(topic, json.dumps(body), qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def firmware_and_batch(edge: Edge, **batch: Any) -> tuple[dict[str, Any], bytes]:
    otaflow = edge.otaflow
    pk = edge.product_key
    payload = b"otaflow firmware 2.0\n" * 500
    firmware_id = create_package(otaflow, pk, at=now_ms(), payload=payload)
    job = otaflow.call(
        "CreateOTADynamicUpgradeJob",
        now_ms(),
        FirmwareId=firmware_id,
        ProductKey=pk,
        **{"SrcVersion.1": "1.0"},
        MaximumPerMinute=100,
        **batch,
    )
    return job, payload


def presence_of(edge: Edge, dn: str) -> list[str]:
    return [
        r["kind"]
        for r in edge.reports().values()
        if r["device_name"] == dn and r["kind"] in ("ONLINE", "OFFLINE")
    ]


def wait_presence(edge: Edge, dn: str, kinds: list[str], timeout: float = 30.0) -> None:
    edge.reports().wait_for(
        lambda _: presence_of(edge, dn)[: len(kinds)] == kinds,
        timeout=timeout,
        what=f"presence {kinds} of {dn}",
    )


# -- identity ---------------------------------------------------------------------------


def test_sdk_device_with_its_device_secret_updates_and_a_wrong_secret_is_refused(
    edge: Edge, tmp_path: Path
) -> None:
    dn = "sdk-auth-1"
    secret = edge.register(dn)
    assert secret == device_secret(DEVICE_KEY, edge.product_key, dn)
    job, _ = firmware_and_batch(edge)

    with (
        SdkDevice(edge.product_key, dn, "0" * 32, HOST, edge.port) as impostor,
        pytest.raises(TimeoutError),
    ):
        impostor.wait_connected(5)
    assert f"otaflow_auth: refused {dn}&{edge.product_key}" in edge.broker_log.read_text()

    with SdkDevice(edge.product_key, dn, secret, HOST, edge.port) as device:
        device.wait_connected(30)
        device.report_version("1.0", module="default")
        push = device.wait_ota_message(60)
        assert push["type"] == 1 and push["version"] == "2.0"
        result = device.download_firmware(
            push["url"], push["sign_method"], push["sign"], int(push["size"]), tmp_path / "fw"
        )
        assert result.ok, result
        device.report_progress(100, "done")
        device.report_version("2.0", module="default")
        events = edge.otaflow.task_events().wait_for(
            lambda v: any(e["status"] == "SUCCEEDED" for e in v), timeout=60, what="success"
        )
    assert [e["status"] for e in events if e["device_name"] == dn][-1] == "SUCCEEDED"
    assert {e["batch_id"] for e in events} == {job["JobId"]}
    wait_presence(edge, dn, ["ONLINE", "OFFLINE"])


def test_unknown_and_deleted_devices_are_refused(edge: Edge) -> None:
    dn = "paho-deleted"
    secret = edge.register(dn)
    device = PahoDevice(edge.port, edge.product_key, dn, secret)
    assert not device.connack.is_failure  # type: ignore[union-attr]
    device.close()
    # Never registered, though its secret is derived the same way: refused.
    ghost = PahoDevice(
        edge.port,
        edge.product_key,
        "never-made",
        device_secret(DEVICE_KEY, edge.product_key, "never-made"),
    )
    assert str(ghost.connack) == "Not authorized"
    ghost.close()
    edge.otaflow.call("DeleteDevice", now_ms(), ProductKey=edge.product_key, DeviceName=dn)
    edge.wait_listed(dn, listed=False)
    again = PahoDevice(edge.port, edge.product_key, dn, secret)
    assert str(again.connack) == "Not authorized"
    again.close()


def test_device_b_cannot_change_a_or_read_its_offers(edge: Edge) -> None:
    secret_a, secret_b = edge.register("device-a"), edge.register("device-b")
    pk = edge.product_key
    firmware_and_batch(edge)
    a = PahoDevice(edge.port, pk, "device-a", secret_a)
    b = PahoDevice(edge.port, pk, "device-b", secret_b)
    try:
        for stolen in (f"/ota/device/upgrade/{pk}/device-a", "#", f"/ota/device/+/{pk}/+"):
            assert str(b.subscribe(stolen)) == "Not authorized", stolen
        assert not a.subscribe(f"/ota/device/upgrade/{pk}/device-a").is_failure
        # B reports a version, progress and presence for A: dropped by the broker.
        b.publish(f"/ota/device/inform/{pk}/device-a", {"id": "1", "params": {"version": "1.0"}})
        b.publish(f"/ota/device/progress/{pk}/device-a", {"id": "2", "params": {"step": "100"}})
        b.publish(f"/as/mqtt/status/{pk}/device-a", {"status": "offline"})  # forged presence
        b.publish(f"/ota/device/inform/{pk}/device-b", {"id": "3", "params": {"version": "0.9"}})
        reports = edge.reports().wait_for(
            lambda v: any(r["device_name"] == "device-b" and r["kind"] == "VERSION" for r in v),
            timeout=30,
            what="B's own report",
        )
        assert not [r for r in reports if r["device_name"] == "device-a" and r["kind"] != "ONLINE"]
        # A's own report gets A its offer; B, subscribed to all it may, sees none of it.
        a.publish(f"/ota/device/inform/{pk}/device-a", {"id": "4", "params": {"version": "1.0"}})
        deadline = time.monotonic() + 60
        while not a.messages:
            assert time.monotonic() < deadline, "A got no offer"
            time.sleep(0.05)
        assert a.messages[0][0] == f"/ota/device/upgrade/{pk}/device-a"
        assert not [t for t, _ in b.messages if "device-a" in t]
    finally:
        a.close()
        b.close()


# -- presence ---------------------------------------------------------------------------


def test_an_offline_device_gets_its_offer_on_reconnect_without_reporting(edge: Edge) -> None:
    dn = "sdk-offline"
    secret = edge.register(dn)
    pk = edge.product_key
    with SdkDevice(pk, dn, secret, HOST, edge.port) as device:
        device.wait_connected(30)
        device.report_version("1.0", module="default")
        edge.reports().wait_for(
            lambda v: any(r["device_name"] == dn and r["kind"] == "VERSION" for r in v),
            what="the version report",
        )
    wait_presence(edge, dn, ["ONLINE", "OFFLINE"])
    # The batch matches the device while it is away: QUEUED, and nothing is published.
    firmware_and_batch(edge)
    edge.otaflow.task_events().wait_for(
        lambda v: any(e["device_name"] == dn and e["status"] == "QUEUED" for e in v),
        what="the queued task",
    )
    with SdkDevice(pk, dn, secret, HOST, edge.port) as device:
        device.wait_connected(30)
        connected = time.monotonic()
        push = device.wait_ota_message(30)
        offer_s = time.monotonic() - connected
        assert push["type"] == 1 and push["version"] == "2.0"
    statuses = [e["status"] for e in edge.otaflow.task_events().values() if e["device_name"] == dn]
    assert statuses == ["QUEUED", "NOTIFIED"]
    pushes = [n for n in edge.otaflow.notifications().values() if n["device_name"] == dn]
    assert len(pushes) == 1, "no offer was published while the device was offline"
    print(f"offer {offer_s:.2f} s after reconnecting")  # a figure, not an assert


def test_a_device_that_drops_while_notified_gets_the_offer_again(edge: Edge) -> None:
    dn = "sdk-dropped"
    secret = edge.register(dn)
    pk = edge.product_key
    firmware_and_batch(edge)
    with SdkDevice(pk, dn, secret, HOST, edge.port) as device:
        device.wait_connected(30)
        device.report_version("1.0", module="default")
        first = device.wait_ota_message(60)
    wait_presence(edge, dn, ["ONLINE", "OFFLINE"])
    with SdkDevice(pk, dn, secret, HOST, edge.port) as device:
        device.wait_connected(30)
        again = device.wait_ota_message(30)  # no version report: the connect is enough
    assert again["version"] == first["version"] == "2.0"
    statuses = [e["status"] for e in edge.otaflow.task_events().values() if e["device_name"] == dn]
    assert statuses == ["QUEUED", "NOTIFIED"], "the re-offer is not a new task or status"


def test_a_connection_taken_over_by_the_same_device_does_not_make_it_offline(
    edge: Edge,
) -> None:
    dn = "paho-takeover"
    secret = edge.register(dn)
    pk = edge.product_key
    stamp = int(time.time())
    first = PahoDevice(edge.port, pk, dn, secret, timestamp=stamp)
    assert not first.subscribe(f"/ota/device/upgrade/{pk}/{dn}").is_failure
    wait_presence(edge, dn, ["ONLINE"])
    # The same client id again (a device back before the broker saw it go): the broker
    # kicks the old connection, whose end must not count as the device going offline.
    second = PahoDevice(edge.port, pk, dn, secret, timestamp=stamp)
    first.wait_kicked()
    assert not second.subscribe(f"/ota/device/upgrade/{pk}/{dn}").is_failure
    wait_presence(edge, dn, ["ONLINE", "ONLINE"])
    second.close()
    wait_presence(edge, dn, ["ONLINE", "ONLINE", "OFFLINE"])
    assert presence_of(edge, dn) == ["ONLINE", "ONLINE", "OFFLINE"]
