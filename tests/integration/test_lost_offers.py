"""Lost offers come back (issue 16 item 4), on real Kafka and the shared dev Mosquitto.

Without presence: a device whose offer was lost (it was not subscribed when it went
out, as after a broker restart) reports its version while its task is NOTIFIED and
gets the offer again, through the rate agent, with no new status.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from otaflow.dev import devstack
from tests.integration.conftest import Otaflow
from tests.integration.rollout_support import create_package
from tests.mqtt_logins import device_client

pytestmark = pytest.mark.integration


@pytest.fixture
def live(stack: devstack.DevStack, tmp_path: Path) -> Iterator[Otaflow]:
    deployment = Otaflow(stack, tmp_path, tick_interval_s=0.5)
    deployment.start_all()
    try:
        yield deployment
    finally:
        deployment.close()


def now_ms() -> int:
    return int(time.time() * 1000)


def test_a_version_report_while_notified_brings_a_lost_offer_again(live: Otaflow) -> None:
    pk, dn = f"pkLost{int(time.time()) % 100000}", "lost-offer-1"
    firmware_id = create_package(live, pk, at=now_ms())
    live.call(
        "CreateOTADynamicUpgradeJob",
        now_ms(),
        FirmwareId=firmware_id,
        ProductKey=pk,
        **{"SrcVersion.1": "1.0"},
        MaximumPerMinute=100,
    )
    host, port = live.settings.mqtt.host, live.settings.mqtt.port
    received: list[str] = []
    subscribed = threading.Event()
    device = device_client(pk, dn)
    device.on_message = lambda c, u, m: received.append(m.topic)
    device.on_subscribe = lambda c, u, mid, rcs, p: subscribed.set()
    device.connect(host, port)
    device.loop_start()
    inform = f"/ota/device/inform/{pk}/{dn}"
    try:
        # Reports its version before subscribing: the push goes out to no one.
        device.publish(inform, json.dumps({"id": "1", "params": {"version": "1.0"}}), qos=1)
        live.task_events().wait_for(
            lambda v: any(e["device_name"] == dn and e["status"] == "NOTIFIED" for e in v),
            what="the first push",
        )
        assert received == []
        device.subscribe(f"/ota/device/upgrade/{pk}/{dn}", qos=1)
        assert subscribed.wait(10)
        device.publish(inform, json.dumps({"id": "2", "params": {"version": "1.0"}}), qos=1)
        deadline = time.monotonic() + 60
        while not received:
            assert time.monotonic() < deadline, "the offer did not come again"
            time.sleep(0.05)
    finally:
        device.disconnect()
        device.loop_stop()
    pushes = [n for n in live.notifications().values() if n["device_name"] == dn]
    assert [n["kind"] for n in pushes] == ["PUSH", "PUSH"]
    assert pushes[0]["task_id"] == pushes[1]["task_id"]
    statuses = [e["status"] for e in live.task_events().values() if e["device_name"] == dn]
    assert statuses == ["QUEUED", "NOTIFIED"]
