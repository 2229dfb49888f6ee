"""A Mosquitto restart mid-push (issue 16): every task still reaches a final status, with
no device ever pulling (firmware/get). The worker, ingress and egress use a Mosquitto of
the test's own, which the test stops and starts again; the shared one is not touched."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from otaflow.dev import devstack
from tests.integration.conftest import Otaflow
from tests.integration.connector_support import PrivateMosquitto, wait_for
from tests.integration.rollout_support import create_package

pytestmark = pytest.mark.integration

DEVICES = 150
RATE = 600  # 10 a second: the push takes 15 s, the broker goes away in the middle


def now_ms() -> int:
    return int(time.time() * 1000)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[PrivateMosquitto]:
    workdir = tmp_path / "mqtt"
    workdir.mkdir()
    mosquitto = PrivateMosquitto(workdir)
    mosquitto.start()
    try:
        yield mosquitto
    finally:
        mosquitto.stop()


class Fleet:
    """All the product's devices on one MQTT connection (the private broker has no
    per-device login): a clean session, as the device SDK connects. An offer makes its
    device update and report the destination version; on every connection each device
    reports its version once (the SDK does on connect): the old one until it got an
    offer. Nobody ever publishes firmware/get."""

    def __init__(self, pk: str, address: Any, upgraded: set[str] | None = None) -> None:
        self.pk = pk
        self.offered: set[str] = set(upgraded or ())
        self.informs = 0
        self._lock = threading.Lock()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"fleet-{pk}", clean_session=True
        )
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect(address.host, address.port, keepalive=10)
        self.client.loop_start()

    def report_versions(self) -> None:
        with self._lock:
            upgraded = set(self.offered)
        for dn in (f"dev{i:04d}" for i in range(DEVICES)):
            self._inform(dn, "2.0" if dn in upgraded else "1.0")

    def _inform(self, dn: str, version: str) -> None:
        self.informs += 1
        body = {"id": str(now_ms()), "params": {"version": version}}
        self.client.publish(f"/ota/device/inform/{self.pk}/{dn}", json.dumps(body), qos=1)

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        client.subscribe(f"/ota/device/upgrade/{self.pk}/+", qos=1)
        threading.Thread(target=self.report_versions, daemon=True).start()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        dn = msg.topic.rsplit("/", 1)[1]
        with self._lock:
            self.offered.add(dn)
        self._inform(dn, "2.0")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_a_broker_restart_mid_push_leaves_no_task_unfinished(
    stack: devstack.DevStack, tmp_path: Path, broker: PrivateMosquitto
) -> None:
    otaflow = Otaflow(stack, tmp_path, tick_interval_s=0.5)
    otaflow.settings = replace(otaflow.settings, mqtt=broker.address)
    otaflow.env["OTAFLOW_MQTT_URL"] = f"mqtt://127.0.0.1:{broker.port}"
    otaflow.start_all()
    fleet: Fleet | None = None
    try:
        pk = f"pkRestart{now_ms() % 100000}"
        firmware_id = create_package(otaflow, pk, at=now_ms())
        otaflow.call(
            "CreateOTADynamicUpgradeJob",
            now_ms(),
            FirmwareId=firmware_id,
            ProductKey=pk,
            **{"SrcVersion.1": "1.0"},
            MaximumPerMinute=RATE,
        )
        fleet = Fleet(pk, broker.address)
        events = otaflow.task_events()
        events.wait_for(
            lambda v: sum(e["status"] == "NOTIFIED" for e in v) >= DEVICES // 3,
            timeout=90,
            what="a third pushed",
        )
        broker.stop()  # mid-push; the devices' connections drop with it
        fleet.close()
        broker.start()
        # The egress is back before the devices: what it sends now goes to no one.
        pushed = len(otaflow.notifications().values())
        otaflow.notifications().wait_for(
            lambda v: len(v) >= pushed + 20, timeout=60, what="offers sent to no one"
        )
        # Reports sent before the ingress is back were seen lost on this Mosquitto (2.0.11)
        # despite its persistent session: the devices come back after it (reported).
        ingress_log = otaflow.tmp / "ingress.log"
        wait_for(
            lambda: ingress_log.read_text().count("connected (session present") >= 2,
            30,
            "the ingress to reconnect",
        )
        fleet = Fleet(pk, broker.address, fleet.offered)  # back: each reports its version
        deadline = time.monotonic() + 90

        def finished() -> bool:
            final = {e["task_id"] for e in events.values() if e["status"] == "SUCCEEDED"}
            return len(final) >= DEVICES

        try:
            wait_for(finished, deadline - time.monotonic(), "every task SUCCEEDED")
        except AssertionError:
            last: dict[str, str] = {e["task_id"]: e["status"] for e in events.values()}
            pushes = [n for n in otaflow.notifications().values() if n["kind"] == "PUSH"]
            raise AssertionError(
                f"statuses {Counter(last.values())}, {len(pushes)} pushes, "
                f"{len(fleet.offered)} devices offered, {fleet.informs} informs"
            ) from None
        statuses: dict[str, str] = {}
        for e in events.values():
            statuses[e["task_id"]] = e["status"]
        assert len(statuses) == DEVICES
        assert set(statuses.values()) == {"SUCCEEDED"}
        offers = otaflow.notifications().values()
        assert {n["kind"] for n in offers} == {"PUSH"}  # no pull was answered: none was made
        print(f"\n{len(offers)} offers for {DEVICES} tasks across the broker restart")
        assert len(offers) >= DEVICES + 20  # the lost ones were offered again
    finally:
        if fleet is not None:
            fleet.close()
        otaflow.close()
