"""Prove the SdkDevice harness against a private Mosquitto and a local HTTP server."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import queue
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from otaflow.config import DEV_DEVICE_KEY, DEV_SERVICE_PASSWORD, DEV_SERVICE_USER
from otaflow.edge.broker import AuthSettings, start_broker
from otaflow.edge.credentials import device_secret
from tests.sdkdevice import SdkDevice

pytestmark = pytest.mark.integration

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
PK = "a1TestPk"
DN = "sdk-dev-1"
FIRMWARE = bytes(range(256)) * 300 + b"otaflow"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def broker_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A Mosquitto of its own that authenticates like the one otaflow provisions: the
    SDK logs in with its DeviceSecret, the observer as otaflow's service user."""
    if not Path(MOSQUITTO).exists():
        pytest.skip("mosquitto is not installed")
    port = _free_port()
    auth = AuthSettings(DEV_DEVICE_KEY, DEV_SERVICE_USER, DEV_SERVICE_PASSWORD, None, False)
    proc = start_broker(tmp_path_factory.mktemp("mosquitto"), "127.0.0.1", port, auth)
    try:
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Observer:
    """A paho-mqtt 2 client playing the cloud side."""

    def __init__(self, port: int, topics: list[str]) -> None:
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._ready: queue.Queue[object] = queue.Queue()
        self._topics = topics
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="otaflow-observer")
        self.client.username_pw_set(DEV_SERVICE_USER, DEV_SERVICE_PASSWORD)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self._ready.get(timeout=10)

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        client.subscribe([(t, 1) for t in self._topics])

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, properties: Any
    ) -> None:
        self._ready.put(reasons)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.messages.put((msg.topic, bytes(msg.payload)))

    def expect(self, topic: str, timeout: float = 10.0) -> tuple[str, Any]:
        got_topic, payload = self.messages.get(timeout=timeout)
        assert got_topic == topic
        text = payload.decode()
        return text, json.loads(text)

    def publish(self, topic: str, payload: dict[str, Any]) -> None:
        self.client.publish(topic, json.dumps(payload), qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(scope="module")
def device(broker_port: int) -> Iterator[SdkDevice]:
    secret = device_secret(DEV_DEVICE_KEY, PK, DN)
    with SdkDevice(PK, DN, secret, mqtt_port=broker_port) as dev:
        info = dev.wait_connected(60)
        assert info["granted_qos"] == [1, 1]
        assert dev.driver_info["paho_mqtt"].startswith("1.")
        yield dev


@pytest.fixture()
def cloud(broker_port: int, device: SdkDevice) -> Iterator[Observer]:
    obs = Observer(
        broker_port,
        [
            "/ota/device/inform/+/+",
            "/ota/device/progress/+/+",
            "/sys/+/+/thing/ota/firmware/get",
        ],
    )
    yield obs
    obs.close()


@pytest.fixture(scope="module")
def firmware_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("www")
    (root / "fw.bin").write_bytes(FIRMWARE)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_report_version(device: SdkDevice, cloud: Observer) -> None:
    topic = f"/ota/device/inform/{PK}/{DN}"

    device.report_version("1.0.1", module="MCU")
    text, body = cloud.expect(topic)
    assert text == '{"id": 1,"params": {"version":"1.0.1","module": "MCU"}}'
    assert body == {"id": 1, "params": {"version": "1.0.1", "module": "MCU"}}

    device.report_version("1.0.0")
    _, body = cloud.expect(topic)
    assert body == {"id": 1, "params": {"version": "1.0.0", "module": "default"}}

    device.report_version("1.0.0", module=None)
    text, body = cloud.expect(topic)
    assert text == '{"id": 1, "params": {"version": "1.0.0"}}'


def test_report_progress_and_request_firmware(device: SdkDevice, cloud: Observer) -> None:
    sent = device.report_progress(42, "downloading")
    text, body = cloud.expect(f"/ota/device/progress/{PK}/{DN}")
    assert text == sent
    assert body["params"] == {"step": "42", "desc": "downloading", "module": "default"}
    assert isinstance(body["id"], str) and body["id"].isdigit()

    device.report_progress(-2, "download failed", module="MCU")
    _, body = cloud.expect(f"/ota/device/progress/{PK}/{DN}")
    assert body["params"] == {"step": "-2", "desc": "download failed", "module": "MCU"}

    device.request_firmware()
    text, body = cloud.expect(f"/sys/{PK}/{DN}/thing/ota/firmware/get")
    assert set(body) == {"id", "params"}
    assert isinstance(body["id"], int)
    assert body["params"] == {"module": "default"}
    assert text == f'{{"id": {body["id"]}, "params": {{"module": "default"}}}}'

    device.request_firmware(module=None)
    _, body = cloud.expect(f"/sys/{PK}/{DN}/thing/ota/firmware/get")
    assert body["params"] == {}


def _push_data(url: str, **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "size": len(FIRMWARE),
        "version": "2.0",
        "url": url,
        "signMethod": "SHA256",
        "sign": hashlib.sha256(FIRMWARE).hexdigest(),
        "md5": hashlib.md5(FIRMWARE).hexdigest(),
        "extData": {"batch": "b1", "_package_udi": "{}"},
    }
    data.update(extra)
    return data


def test_push_and_pull_reply_fire_callback(
    device: SdkDevice, cloud: Observer, firmware_server: str
) -> None:
    url = f"{firmware_server}/fw.bin"
    cloud.publish(
        device.upgrade_topic,
        {
            "code": "1000",
            "data": _push_data(url),
            "id": 123,
            "message": "success",
        },
    )
    msg = device.wait_ota_message(10)
    assert msg == {
        "type": 1,
        "version": "2.0",
        "size": len(FIRMWARE),
        "url": url,
        "sign_method": "SHA256",
        "sign": hashlib.sha256(FIRMWARE).hexdigest(),
        "module": "default",
        "ext": "{'batch': 'b1', '_package_udi': '{}'}",
    }

    cloud.publish(
        device.upgrade_topic,
        {
            "code": "1000",
            "data": _push_data(url, module="MCU"),
            "id": 124,
            "message": "success",
        },
    )
    assert device.wait_ota_message(10)["module"] == "MCU"

    # A pull reply with nothing pending is dropped by the SDK (no callback) ...
    cloud.publish(device.firmware_get_reply_topic, {"id": "7", "code": 200, "data": {}})
    # ... and one with a firmware fires the same callback with type 2.
    cloud.publish(
        device.firmware_get_reply_topic,
        {
            "id": "8",
            "code": 200,
            "data": _push_data(url),
        },
    )
    msg = device.wait_ota_message(10)
    assert msg["type"] == 2
    assert msg["version"] == "2.0"


def test_download_firmware(device: SdkDevice, firmware_server: str, tmp_path: Path) -> None:
    url = f"{firmware_server}/fw.bin"
    sha = hashlib.sha256(FIRMWARE).hexdigest()

    good = device.download_firmware(url, "SHA256", sha, len(FIRMWARE), tmp_path / "a.bin")
    assert good.ok, good
    assert good.code == "SUCCESS" and good.value == 0
    assert good.size_matches is True
    assert (tmp_path / "a.bin").read_bytes() == FIRMWARE

    md5 = device.download_firmware(
        url, "Md5", hashlib.md5(FIRMWARE).hexdigest(), len(FIRMWARE), tmp_path / "b.bin"
    )
    assert md5.ok, md5

    bad = device.download_firmware(url, "SHA256", "0" * 64, len(FIRMWARE), tmp_path / "c.bin")
    assert not bad.ok
    assert bad.code == "OTA_DIGEST_MISMATCH"
    assert bad.bytes_written == len(FIRMWARE)  # the SDK leaves the file behind

    upper = device.download_firmware(url, "SHA256", sha.upper(), None, tmp_path / "d.bin")
    assert upper.code == "OTA_DIGEST_MISMATCH"  # hex comparison is case-sensitive

    missing = device.download_firmware(
        f"{firmware_server}/nope.bin", "SHA256", sha, len(FIRMWARE), tmp_path / "e.bin"
    )
    assert missing.code == "OTA_INVALID_URL"

    # Any sign method but exactly "SHA256"/"Md5" makes the SDK raise (TypeError while
    # formatting its mismatch log line) instead of returning OTA_INVALID_SIGN_METHOD.
    odd = device.download_firmware(url, "sha256", sha, len(FIRMWARE), tmp_path / "f.bin")
    assert odd.code == "EXCEPTION"
    assert odd.error is not None and "TypeError" in odd.error
