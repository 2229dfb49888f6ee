"""Packages as platform tools handle them, against otaflow's real processes (the
worker and ``otaflow.api_main``) on the real Kafka: GenerateOTAUploadURL's fields drive
an object-store PostObject upload, CreateOTAFirmware (official SDK) takes the stored
file's size and MD5, grants are single-use, and verification follows the devices."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from alibabacloud_iot20180120 import models as m
from alibabacloud_iot20180120.client import Client
from alibabacloud_tea_openapi.models import Config

from otaflow.dev import devstack
from tests.integration.api_support import eventually, ok
from tests.integration.conftest import Otaflow
from tests.integration.uploads import post_object

pytestmark = pytest.mark.integration


class Deployment:
    def __init__(self, stack: devstack.DevStack, tmp: Path) -> None:
        self.otaflow = Otaflow(stack, tmp)
        self.otaflow.start_worker()
        self.otaflow.start("api", "-m", "otaflow.api_main")
        self.client = Client(
            Config(
                access_key_id="testAK",
                access_key_secret="testSecret",
                endpoint=f"127.0.0.1:{self.otaflow.settings.api_port}",
                protocol="http",
                read_timeout=70_000,
            )
        )
        eventually(self._answers, bool, timeout=60)

    def _answers(self) -> bool:
        proc = self.otaflow.procs["api"]
        assert proc.poll() is None, self.otaflow.log("api")
        try:
            requests.get(f"http://127.0.0.1:{self.otaflow.settings.api_port}/", timeout=2)
        except requests.ConnectionError:
            return False
        return True


@pytest.fixture(scope="module")
def api(stack: devstack.DevStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    deployment = Deployment(stack, tmp_path_factory.mktemp("packages"))
    try:
        yield deployment
    finally:
        deployment.otaflow.close()


def code_of(body: Any) -> str:
    assert body.success is False, body
    return str(body.code)


def new_product(api: Deployment, *devices: str) -> str:
    name = "p_" + uuid.uuid4().hex[:12]
    pk = str(
        ok(
            api.client.create_product(m.CreateProductRequest(product_name=name, node_type=0)).body
        ).product_key
    )
    for dn in devices:
        ok(api.client.register_device(m.RegisterDeviceRequest(product_key=pk, device_name=dn)).body)
    return pk


def uploaded(api: Deployment, payload: bytes, suffix: str = "bin") -> Any:
    fields = ok(
        api.client.generate_otaupload_url(m.GenerateOTAUploadURLRequest(file_suffix=suffix)).body
    ).data
    answer = post_object(fields, payload)
    assert answer.status_code == 200, answer.text
    return fields


def create_firmware(api: Deployment, pk: str, url: str | None, **extra: Any) -> Any:
    request = m.CreateOTAFirmwareRequest(
        product_key=pk,
        firmware_name=f"fw_{uuid.uuid4().hex[:10]}",
        dest_version=extra.pop("dest_version", "2.0"),
        firmware_url=url,
        **extra,
    )
    return api.client.create_otafirmware(request).body


def firmware_info(api: Deployment, firmware_id: str) -> Any:
    body = api.client.query_otafirmware(m.QueryOTAFirmwareRequest(firmware_id=firmware_id)).body
    return ok(body).firmware_info


def test_a_postobject_upload_then_create_without_sign_or_size(api: Deployment) -> None:
    pk = new_product(api, "dev-a")
    payload = b"otaflow package " * 4096
    fields = uploaded(api, payload, "tar.xz")
    firmware_id = ok(create_firmware(api, pk, fields.firmware_url, need_to_verify=False)).data
    info = firmware_info(api, firmware_id.firmware_id)
    assert (info.firmware_size, info.firmware_sign, info.sign_method) == (
        len(payload),
        hashlib.md5(payload).hexdigest(),
        "MD5",
    )
    # The same grant again, and a forged one: refused, and the package is unchanged.
    again = post_object(fields, b"replacement")
    assert again.status_code == 409 and "<Code>FileAlreadyExists</Code>" in again.text
    forged = post_object(dict(fields.to_map(), Signature="Zm9yZ2Vk"), b"replacement")
    assert forged.status_code == 403 and "SignatureDoesNotMatch" in forged.text
    for answer in (again, forged):
        assert "Traceback" not in answer.text and str(api.otaflow.tmp) not in answer.text
    # A declared sign or size must be the file's.
    assert (
        code_of(create_firmware(api, pk, fields.firmware_url, firmware_sign="0" * 32))
        == "iot.ota.FirmwareSignMismatch"
    )
    assert (
        code_of(create_firmware(api, pk, fields.firmware_url, firmware_size=len(payload) - 1))
        == "iot.ota.FirmwareSizeMismatch"
    )
    unsent = ok(
        api.client.generate_otaupload_url(m.GenerateOTAUploadURLRequest(file_suffix="pack")).body
    ).data
    assert code_of(create_firmware(api, pk, unsent.firmware_url)) == "iot.ota.FirmwareFileNotExist"

    # Devices are offered the stored file's real size.
    job = ok(
        api.client.create_otadynamic_upgrade_job(
            m.CreateOTADynamicUpgradeJobRequest(
                product_key=pk, firmware_id=firmware_id.firmware_id, src_version=["1.0"]
            )
        ).body
    ).data
    now = int(time.time() * 1000)
    api.otaflow.report(pk, "dev-a", "VERSION", now, version="1.0")
    api.otaflow.flush()
    api.otaflow.tick(now + 60_000)
    notes = api.otaflow.notifications().wait_for(
        lambda v: any(n["batch_id"] == job.job_id for n in v), what="the offer"
    )
    [offer] = [n for n in notes if n["batch_id"] == job.job_id]
    assert offer["firmware"]["size"] == len(payload)
    assert offer["firmware"]["md5"] == hashlib.md5(payload).hexdigest()


def run_verification(api: Deployment, pk: str, devices: list[str], firmware_id: str) -> str:
    now = int(time.time() * 1000)
    for dn in devices:
        api.otaflow.report(pk, dn, "VERSION", now, version="1.0")
    api.otaflow.flush()
    job = ok(
        api.client.create_otaverify_job(
            m.CreateOTAVerifyJobRequest(
                product_key=pk,
                firmware_id=firmware_id,
                target_device_name=devices,
                timeout_in_minutes=30,
            )
        ).body
    ).data
    api.otaflow.tick(now + 1000)
    events = api.otaflow.task_events()
    events.wait_for(
        lambda v: {e["device_name"] for e in v if e["batch_id"] == job.job_id} == set(devices),
        what="verification tasks",
    )
    return str(job.job_id)


def test_a_package_is_usable_only_once_its_verification_devices_succeeded(
    api: Deployment,
) -> None:
    devices = ["ver-1", "ver-2"]
    pk = new_product(api, *devices, "ver-3")
    fields = uploaded(api, b"needs verification " * 100)
    firmware_id = ok(create_firmware(api, pk, fields.firmware_url)).data.firmware_id
    assert firmware_info(api, firmware_id).status == 0  # NeedToVerify defaults to true

    def static_job() -> Any:
        return api.client.create_otastatic_upgrade_job(
            m.CreateOTAStaticUpgradeJobRequest(
                product_key=pk, firmware_id=firmware_id, target_selection="ALL"
            )
        ).body

    assert code_of(static_job()) == "iot.ota.FirmwareNotVerified"
    run_verification(api, pk, devices, firmware_id)
    assert firmware_info(api, firmware_id).status == 2  # verifying
    now = int(time.time() * 1000)
    api.otaflow.report(pk, devices[0], "VERSION", now + 2000, version="2.0")
    api.otaflow.flush()
    info = eventually(
        lambda: firmware_info(api, firmware_id), lambda i: i.verify_progress == 50, timeout=60
    )
    assert info.status == 2
    assert code_of(static_job()) == "iot.ota.FirmwareNotVerified"
    api.otaflow.report(pk, devices[1], "VERSION", now + 3000, version="2.0")
    api.otaflow.flush()
    eventually(lambda: firmware_info(api, firmware_id), lambda i: i.status == 1, timeout=60)
    ok(static_job())


def test_a_failed_verification_device_fails_the_package(api: Deployment) -> None:
    pk = new_product(api, "bad-1")
    fields = uploaded(api, b"fails verification " * 100)
    firmware_id = ok(create_firmware(api, pk, fields.firmware_url)).data.firmware_id
    run_verification(api, pk, ["bad-1"], firmware_id)
    now = int(time.time() * 1000)
    api.otaflow.report(pk, "bad-1", "PROGRESS", now + 2000, step=-1, desc="update failed")
    api.otaflow.flush()
    eventually(lambda: firmware_info(api, firmware_id), lambda i: i.status == 3, timeout=60)
    refused = api.client.create_otastatic_upgrade_job(
        m.CreateOTAStaticUpgradeJobRequest(
            product_key=pk, firmware_id=firmware_id, target_selection="ALL"
        )
    ).body
    assert code_of(refused) == "iot.ota.FirmwareNotVerified"


def test_a_package_of_several_files_through_the_sdk(api: Deployment) -> None:
    pk = new_product(api)
    app, res = b"application " * 500, b"resources " * 300
    first, second = uploaded(api, app), uploaded(api, res, "pack")
    body = create_firmware(
        api,
        pk,
        None,
        need_to_verify=False,
        multi_files=[
            m.CreateOTAFirmwareRequestMultiFiles(name="app.bin", url=first.firmware_url),
            m.CreateOTAFirmwareRequestMultiFiles(
                name="res.pack", url=second.firmware_url, size=len(res)
            ),
        ],
    )
    info = firmware_info(api, ok(body).data.firmware_id)
    assert [(f.name, f.size, f.file_md_5) for f in info.multi_files] == [
        ("app.bin", len(app), hashlib.md5(app).hexdigest()),
        ("res.pack", len(res), hashlib.md5(res).hexdigest()),
    ]


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket listening on ``port`` (Linux /proc/net/tcp*)."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def test_the_api_and_package_servers_listen_on_loopback_only(api: Deployment) -> None:
    settings = api.otaflow.settings
    for port in (settings.api_port, settings.package_port):
        assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1, and nothing else
