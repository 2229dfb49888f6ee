"""`otaflow up`, as a user runs it, with the official device SDK (issue 11).

A second dev stack next to the shared one (its own cache, so its own Mosquitto with
otaflow's auth plugin on free ports; the shared Kafka), started by ``otaflow up``
itself, which provisions the broker with no anonymous listener and runs every process
on the registry's listener. A device registered with ``RegisterDevice`` (the official
API SDK) connects with the official device SDK, unchanged, and its ``DeviceSecret``,
and is updated 1.0 -> 2.0; a wrong secret is refused.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from alibabacloud_iot20180120 import models as m
from alibabacloud_iot20180120.client import Client
from alibabacloud_tea_openapi.models import Config

from otaflow import config
from otaflow.dev import devstack
from otaflow.packages import PackageStore
from tests.sdkdevice import SdkDevice
from tests.served_api import free_port

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
AK, SECRET = "upAK", "upSecret"


@dataclass
class Up:
    env: dict[str, str]
    api: Client
    store: PackageStore
    device_port: int
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        """The log's tail, for failure messages."""
        return self.whole_output()[-4000:]

    def whole_output(self) -> str:
        return self.log.read_text(errors="replace")


def wait_until(what: str, check: object, up: Up, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert up.proc.poll() is None, f"otaflow up exited:\n{up.output()}"
        assert time.monotonic() < deadline, f"{what} in {timeout:.0f}s:\n{up.output()}"
        time.sleep(0.2)


@pytest.fixture
def up(stack: devstack.DevStack, tmp_path: Path) -> Iterator[Up]:
    name = f"up{uuid.uuid4().hex[:10]}"
    api_port, package_port = free_port(), free_port()
    env = {
        **os.environ,
        "OTAFLOW_CACHE": str(tmp_path / "cache"),
        "OTAFLOW_KAFKA_BOOTSTRAP": stack.kafka_bootstrap,
        "OTAFLOW_MQTT_PORT": str(free_port()),
        "OTAFLOW_MQTT_AUTH_PORT": str(free_port()),
        "OTAFLOW_API_PORT": str(api_port),
        "OTAFLOW_PACKAGE_PORT": str(package_port),
        "OTAFLOW_CONSOLE_PORT": str(free_port()),
        "OTAFLOW_PACKAGE_DIR": str(tmp_path / "packages"),
        "OTAFLOW_DATA": str(tmp_path / "data"),
        "OTAFLOW_DEPLOYMENT": name,
        "OTAFLOW_ACCESS_KEYS": f"{AK}:{SECRET}",
        "OTAFLOW_TICK_INTERVAL": "0.5",
    }
    for inherited in ("OTAFLOW_MQTT_URL", "OTAFLOW_PRESENCE", "OTAFLOW_TOPIC_PREFIX"):
        env.pop(inherited, None)
    log = tmp_path / "otaflow-up.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "otaflow.cli", "up"], env=env, stdout=out, stderr=out
        )
    settings = replace(
        config.load(),
        package_port=package_port,
        package_base_url=f"http://{HOST}:{package_port}",
    )
    api = Client(
        Config(
            access_key_id=AK,
            access_key_secret=SECRET,
            endpoint=f"{HOST}:{api_port}",
            protocol="http",
            read_timeout=70_000,
        )
    )
    running = Up(
        env,
        api,
        PackageStore(settings, root=tmp_path / "packages"),
        int(env["OTAFLOW_MQTT_AUTH_PORT"]),
        proc,
        log,
    )
    try:
        yield running
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        # Its Mosquitto (not the shared Kafka) and its deployment's topics and groups.
        cli = [sys.executable, "-m", "otaflow.cli", "devstack"]
        subprocess.run([*cli, "down"], env=env, check=False, capture_output=True, timeout=60)
        subprocess.run(
            [*cli, "prune", "--deployment", name],
            env=env,
            check=False,
            capture_output=True,
            timeout=120,
        )


def test_otaflow_up_updates_the_official_sdk_device_with_its_device_secret(
    up: Up, tmp_path: Path
) -> None:
    products: list[str] = []

    def product_created() -> bool:
        # Refused or unanswered until the API and the control plane behind it are up.
        try:
            answer = up.api.create_product(
                m.CreateProductRequest(product_name=f"up_{uuid.uuid4().hex[:8]}", node_type=0)
            )
        except Exception:
            return False
        products.append(answer.body.data.product_key)
        return True

    wait_until("CreateProduct answered", product_created, up, timeout=180)
    # Its banner is the log's first line; by now the processes may have logged more
    # than the tail output() keeps (CI failed on exactly that, stop 12).
    assert "presence on" in up.whole_output()
    pk = products[0]
    dn = "up-sdk-device"
    registered = up.api.register_device(m.RegisterDeviceRequest(product_key=pk, device_name=dn))
    assert registered.body.success, registered.body
    secret = registered.body.data.device_secret
    assert secret

    payload = b"otaflow up firmware 2.0\n" * 1000
    stored = up.store.add_bytes(f"{pk}/fw-2.0.bin", payload)
    sign = hashlib.sha256(payload).hexdigest()
    firmware = up.api.create_otafirmware(
        m.CreateOTAFirmwareRequest(
            product_key=pk,
            firmware_name="fw-2_0",
            dest_version="2.0",
            firmware_url=up.store.url(stored.file_path),
            firmware_sign=sign,
            sign_method="SHA256",
            firmware_size=len(payload),
            need_to_verify=False,
        )
    )
    assert firmware.body.success, firmware.body
    job = up.api.create_otadynamic_upgrade_job(
        m.CreateOTADynamicUpgradeJobRequest(
            product_key=pk,
            firmware_id=firmware.body.data.firmware_id,
            src_version=["1.0"],
            maximum_per_minute=100,
        )
    )
    assert job.body.success, job.body
    job_id = job.body.data.job_id

    # The broker knows the device once the registry sync listed it; until then (and
    # always with a wrong secret) the SDK is refused and keeps retrying.
    with (
        SdkDevice(pk, dn, "0" * 32, HOST, up.device_port) as impostor,
        pytest.raises(TimeoutError),
    ):
        impostor.wait_connected(5)
    with SdkDevice(pk, dn, secret, HOST, up.device_port) as device:
        device.wait_connected(60)
        device.report_version("1.0", module="default")
        push = device.wait_ota_message(60)
        assert push["version"] == "2.0" and push["sign"] == sign
        result = device.download_firmware(
            push["url"], push["sign_method"], push["sign"], int(push["size"]), tmp_path / "fw.bin"
        )
        assert result.ok, result
        device.report_progress(100, "done")
        device.report_version("2.0", module="default")

        def succeeded() -> bool:
            tasks = up.api.list_otatask_by_job(
                m.ListOTATaskByJobRequest(job_id=job_id, current_page=1, page_size=10)
            ).body.data.simple_otatask_info
            return [(t.device_name, t.task_status) for t in tasks] == [(dn, "SUCCEEDED")]

        wait_until("the task SUCCEEDED", succeeded, up, timeout=60)
