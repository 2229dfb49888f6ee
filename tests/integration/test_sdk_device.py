"""The official device SDK (aliyun-iot-linkkit), unchanged, updated by otaflow end to end.

Real Kafka, real Mosquitto, every otaflow process; the device speaks the platform's
MQTT protocol through the SDK, and downloads and verifies the package over HTTP.
"""

from __future__ import annotations

import hashlib
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from otaflow.config import MqttAddress
from otaflow.dev import devstack
from otaflow.packages import PackageStore
from tests.integration.conftest import Otaflow
from tests.integration.rollout_support import create_package
from tests.sdkdevice import SdkDevice

pytestmark = pytest.mark.integration


@pytest.fixture
def live_otaflow(stack: devstack.DevStack, tmp_path: Path) -> Iterator[Otaflow]:
    # Wall-clock ticks: the SDK device's reports carry the ingress's wall-clock time.
    deployment = Otaflow(stack, tmp_path, tick_interval_s=0.5)
    deployment.start_all()
    try:
        yield deployment
    finally:
        deployment.close()


def now_ms() -> int:
    return int(time.time() * 1000)


def test_sdk_device_is_updated_from_1_0_to_2_0(live_otaflow: Otaflow, tmp_path: Path) -> None:
    otaflow = live_otaflow
    dn = "sdk-device-1"
    # The provisioned broker lets the device in with the DeviceSecret RegisterDevice
    # answers, the way the platform does (docs/edge.md); nothing else.
    product = otaflow.call("CreateProduct", now_ms(), ProductName="sdk_product", NodeType=0)
    pk = product["ProductKey"]
    secret = otaflow.call("RegisterDevice", now_ms(), ProductKey=pk, DeviceName=dn)["DeviceSecret"]
    payload = b"otaflow firmware 2.0\n" * 2000
    sign = hashlib.sha256(payload).hexdigest()
    firmware_id = create_package(otaflow, pk, at=now_ms(), payload=payload)
    job = otaflow.call(
        "CreateOTADynamicUpgradeJob",
        now_ms(),
        FirmwareId=firmware_id,
        ProductKey=pk,
        **{"SrcVersion.1": "1.0", "Tag.1.Key": "wave", "Tag.1.Value": "one"},
        MaximumPerMinute=100,
    )
    mqtt = MqttAddress.parse(otaflow.env["OTAFLOW_MQTT_URL"])
    with SdkDevice(pk, dn, secret, mqtt_host=mqtt.host, mqtt_port=mqtt.port) as device:
        device.wait_connected(30)
        device.report_version("1.0", module="default")
        push = device.wait_ota_message(60)
        assert push["type"] == 1
        assert push["version"] == "2.0"
        assert int(push["size"]) == len(payload)
        assert push["sign_method"] == "SHA256"
        assert push["sign"] == sign
        assert push["url"].startswith(f"{otaflow.settings.package_base_url}/packages/")
        assert "wave" in push["ext"]

        # The device downloads the package from the signed URL and the SDK checks its sign.
        result = device.download_firmware(
            push["url"], push["sign_method"], push["sign"], int(push["size"]), tmp_path / "fw.bin"
        )
        assert result.ok, result
        assert (tmp_path / "fw.bin").read_bytes() == payload

        device.report_progress(50, "flashing")
        device.report_progress(100, "done")
        device.report_version("2.0", module="default")

        events = otaflow.task_events().wait_for(
            lambda v: any(e["status"] == "SUCCEEDED" for e in v), timeout=60, what="success"
        )
    mine = [e for e in events if e["device_name"] == dn]
    assert [e["status"] for e in mine] == [
        "QUEUED",
        "NOTIFIED",
        "IN_PROGRESS",
        "IN_PROGRESS",
        "SUCCEEDED",
    ]
    assert {e["batch_id"] for e in mine} == {job["JobId"]}
    assert [e["progress"] for e in mine][2:] == [50, 100, 100]


def test_signed_url_is_refused_when_altered_or_expired(live_otaflow: Otaflow) -> None:
    store = PackageStore(live_otaflow.settings, root=live_otaflow.tmp / "packages")
    stored = store.add_bytes("p/fw.bin", b"x" * 1000)
    good = store.signed_url(stored.file_path)
    wait_until_serving(good)
    with urllib.request.urlopen(good) as resp:
        assert resp.read() == b"x" * 1000
    ranged = urllib.request.Request(good, headers={"Range": "bytes=10-19"})
    with urllib.request.urlopen(ranged) as resp:
        assert resp.status == 206 and resp.read() == b"x" * 10
    altered = good.replace("Expires=", "Expires=1")
    expired = store.signed_url(stored.file_path, now=time.time() - 25 * 3600)
    for url in (altered, expired, good.replace("fw.bin", "fw2.bin")):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url)
        assert refused.value.code == 403


def wait_until_serving(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
