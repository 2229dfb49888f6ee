"""CreateOTAFirmware against the stored file, NeedToVerify and real verification: the
pure control plane with an in-memory store and in-memory package facts."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from connectors.ota_messages import build_upgrade_message
from otaflow.control.common import DictStore, Outcome
from otaflow.control.errors import ApiError
from otaflow.control.firmware import (
    VERIFIED,
    VERIFY_FAILED,
    VERIFYING,
    verification_status,
)
from otaflow.control.plane import ControlPlane
from otaflow.packages import StoredPackage
from otaflow.verification_feed import VerificationFeed, outcome_command

NOW = 1_800_000_000_000
PAYLOAD = b"firmware 2.0 " * 1000
MD5 = hashlib.md5(PAYLOAD).hexdigest()
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
URL = "http://127.0.0.1:8081/packages/ota/abc.bin"


class World:
    def __init__(self) -> None:
        self.store = DictStore()
        self.files: dict[str, StoredPackage] = {
            "ota/abc.bin": StoredPackage("ota/abc.bin", len(PAYLOAD), SHA256, MD5),
            "ota/big.bin": StoredPackage("ota/big.bin", 17 * 1024 * 1024, "s" * 64, "m" * 32),
            "ota/second.bin": StoredPackage("ota/second.bin", 300, "2" * 64, "b" * 32),
        }
        self.plane = ControlPlane(
            self.store,
            lambda url: url.split("/packages/", 1)[-1],
            stored_file=self.files.get,
        )
        self.n = 0
        self.pk = self.call("CreateProduct", ProductName="verify_prod", NodeType=0).top[
            "ProductKey"
        ]
        for i in range(3):
            self.call("RegisterDevice", ProductKey=self.pk, DeviceName=f"dev{i}")

    def call(self, action: str, **params: Any) -> Outcome:
        self.n += 1
        flat = {k.replace("__", "."): str(v) for k, v in params.items()}
        outcome = self.plane.handle(action, flat, f"req-{self.n}", NOW + self.n)
        self.store.apply(outcome.writes)
        return outcome

    def refused(self, action: str, **params: Any) -> ApiError:
        before = dict(self.store.data)
        with pytest.raises(ApiError) as caught:
            self.call(action, **params)
        assert self.store.data == before
        return caught.value

    def firmware(self, **params: Any) -> str:
        base = {
            "ProductKey": self.pk,
            "FirmwareName": f"fw_{self.n}",
            "DestVersion": "2.0",
            "FirmwareUrl": URL,
        }
        return str(self.call("CreateOTAFirmware", **{**base, **params}).data["FirmwareId"])

    def info(self, firmware_id: str) -> dict[str, Any]:
        info: dict[str, Any] = self.call("QueryOTAFirmware", FirmwareId=firmware_id).top[
            "FirmwareInfo"
        ]
        return info


@pytest.fixture
def world() -> World:
    return World()


def test_sign_and_size_come_from_the_stored_file_when_left_out(world: World) -> None:
    info = world.info(world.firmware(NeedToVerify="false"))
    assert (info["FirmwareSize"], info["FirmwareSign"], info["SignMethod"]) == (
        len(PAYLOAD),
        MD5,
        "MD5",
    )
    sha = world.info(world.firmware(SignMethod="SHA256", NeedToVerify="false"))
    assert sha["FirmwareSign"] == SHA256
    # A declared sign (any case) and size that match the file are taken.
    matched = world.firmware(FirmwareSign=MD5.upper(), FirmwareSize=len(PAYLOAD))
    assert world.info(matched)["FirmwareSign"] == MD5
    # The offer devices get carries the real size (never 0).
    job = world.call(
        "CreateOTADynamicUpgradeJob",
        ProductKey=world.pk,
        FirmwareId=world.firmware(NeedToVerify="false", FirmwareName="offered"),
        SrcVersion__1="1.0",
    )
    assert job.batches[0]["firmware"]["size"] == len(PAYLOAD)
    assert job.batches[0]["firmware"]["md5"] == MD5


def test_a_declared_sign_or_size_that_differs_from_the_file_is_refused(world: World) -> None:
    assert world.refused(
        "CreateOTAFirmware",
        ProductKey=world.pk,
        FirmwareName="bad_sign",
        DestVersion="2.0",
        FirmwareUrl=URL,
        FirmwareSign="0" * 32,
    ).code == ("iot.ota.FirmwareSignMismatch")
    assert world.refused(
        "CreateOTAFirmware",
        ProductKey=world.pk,
        FirmwareName="bad_size",
        DestVersion="2.0",
        FirmwareUrl=URL,
        FirmwareSize=len(PAYLOAD) + 1,
    ).code == ("iot.ota.FirmwareSizeMismatch")
    assert world.refused(
        "CreateOTAFirmware",
        ProductKey=world.pk,
        FirmwareName="sha_as_md5",
        DestVersion="2.0",
        FirmwareUrl=URL,
        SignMethod="SHA256",
        FirmwareSign=MD5,
    ).code == ("iot.ota.FirmwareSignMismatch")
    assert world.refused(
        "CreateOTAFirmware",
        ProductKey=world.pk,
        FirmwareName="no_file",
        DestVersion="2.0",
        FirmwareUrl="http://127.0.0.1:8081/packages/ota/never-uploaded.bin",
    ).code == ("iot.ota.FirmwareFileNotExist")


def test_the_mqtt_limit_is_checked_against_the_stored_file(world: World) -> None:
    big = world.firmware(
        FirmwareUrl="http://127.0.0.1:8081/packages/ota/big.bin", NeedToVerify="false"
    )
    err = world.refused(
        "CreateOTAStaticUpgradeJob",
        ProductKey=world.pk,
        FirmwareId=big,
        TargetSelection="ALL",
        DownloadProtocol="MQTT",
    )
    assert "16 MB" in err.message


def test_need_to_verify_defaults_to_true_as_on_the_platform(world: World) -> None:
    firmware_id = world.firmware()
    assert world.info(firmware_id)["Status"] == 0  # unverified
    err = world.refused(
        "CreateOTAStaticUpgradeJob",
        ProductKey=world.pk,
        FirmwareId=firmware_id,
        TargetSelection="ALL",
    )
    assert err.code == "iot.ota.FirmwareNotVerified"
    assert world.info(world.firmware(NeedToVerify="false"))["Status"] == -1


def verify_job(world: World, firmware_id: str, *names: str) -> str:
    params = {f"TargetDeviceName__{i}": n for i, n in enumerate(names, start=1)}
    out = world.call(
        "CreateOTAVerifyJob",
        ProductKey=world.pk,
        FirmwareId=firmware_id,
        TimeoutInMinutes=30,
        **params,
    )
    assert out.batches[0]["job_type"] == "VERFIY_FIRMWARE"  # sic, the platform's JobType
    return str(out.data["JobId"])


def test_a_package_is_verified_only_once_every_verification_device_succeeded(
    world: World,
) -> None:
    firmware_id = world.firmware()
    job_id = verify_job(world, firmware_id, "dev0", "dev1")
    assert world.info(firmware_id)["Status"] == 2  # verifying
    assert (
        world.refused(
            "CreateOTAStaticUpgradeJob",
            ProductKey=world.pk,
            FirmwareId=firmware_id,
            TargetSelection="ALL",
        ).code
        == "iot.ota.FirmwareNotVerified"
    )
    assert (
        world.refused(
            "CreateOTAVerifyJob",
            ProductKey=world.pk,
            FirmwareId=firmware_id,
            TargetDeviceName__1="dev2",
        ).code
        == "iot.ota.FirmwareVerifying"
    )
    world.call("RecordVerifyOutcome", JobId=job_id, DeviceName="dev0", TaskStatus="SUCCEEDED")
    info = world.info(firmware_id)
    assert (info["Status"], info["VerifyProgress"]) == (2, 50)
    world.call("RecordVerifyOutcome", JobId=job_id, DeviceName="dev1", TaskStatus="SUCCEEDED")
    assert world.info(firmware_id)["Status"] == 1  # verified
    world.call(
        "CreateOTAStaticUpgradeJob",
        ProductKey=world.pk,
        FirmwareId=firmware_id,
        TargetSelection="ALL",
    )  # usable now


def test_a_failed_verification_device_fails_the_package_and_it_can_be_verified_again(
    world: World,
) -> None:
    firmware_id = world.firmware()
    job_id = verify_job(world, firmware_id, "dev0", "dev1")
    world.call("RecordVerifyOutcome", JobId=job_id, DeviceName="dev0", TaskStatus="SUCCEEDED")
    world.call("RecordVerifyOutcome", JobId=job_id, DeviceName="dev1", TaskStatus="FAILED")
    assert world.info(firmware_id)["Status"] == 3  # verification failed
    assert (
        world.refused(
            "CreateOTAStaticUpgradeJob",
            ProductKey=world.pk,
            FirmwareId=firmware_id,
            TargetSelection="ALL",
        ).code
        == "iot.ota.FirmwareNotVerified"
    )
    # A late event of the failed verification changes nothing.
    late = world.call(
        "RecordVerifyOutcome", JobId=job_id, DeviceName="dev1", TaskStatus="SUCCEEDED"
    )
    assert late.writes == {} and world.info(firmware_id)["Status"] == 3
    second = verify_job(world, firmware_id, "dev2")
    assert world.info(firmware_id)["Status"] == 2
    world.call("RecordVerifyOutcome", JobId=job_id, DeviceName="dev0", TaskStatus="SUCCEEDED")
    assert world.info(firmware_id)["Status"] == 2  # the old batch no longer counts
    world.call("RecordVerifyOutcome", JobId=second, DeviceName="dev2", TaskStatus="SUCCEEDED")
    assert world.info(firmware_id)["Status"] == 1


def test_the_verification_rule_table() -> None:
    assert verification_status(2, {}) == VERIFYING
    assert verification_status(2, {"a": "SUCCEEDED"}) == VERIFYING
    assert verification_status(2, {"a": "SUCCEEDED", "b": "SUCCEEDED"}) == VERIFIED
    assert verification_status(2, {"a": "SUCCEEDED", "b": "CANCELED"}) == VERIFY_FAILED
    assert verification_status(1, {"a": "FAILED"}) == VERIFY_FAILED
    assert verification_status(0, {}) == VERIFYING


def test_the_outcome_action_is_not_part_of_the_api() -> None:
    assert not ControlPlane.supports("RecordVerifyOutcome")
    assert ControlPlane.supports("CreateOTAVerifyJob")


def event(task: str, batch: str, status: str, device: str = "dev0") -> dict[str, Any]:
    return {
        "task_id": task,
        "batch_id": batch,
        "product_key": "pk",
        "device_name": device,
        "module": "default",
        "src_version": "1.0",
        "dest_version": "2.0",
        "status": status,
        "previous_status": None,
        "progress": 0,
        "desc": "",
        "event_time": NOW,
    }


def test_the_feed_reports_terminal_tasks_of_verification_batches_only() -> None:
    sent: list[tuple[str, dict[str, str], str, int]] = []
    feed = VerificationFeed(lambda a, p, r, t: sent.append((a, dict(p), r, t)))
    # An event read before its batch's definition is reported when the definition comes.
    feed.apply_task_event(event("t1", "vjob", "SUCCEEDED"))
    feed.apply_batch({"batch_id": "other", "job_type": "UPGRADE_FIRMWARE"})
    feed.apply_batch({"batch_id": "vjob", "job_type": "VERFIY_FIRMWARE"})
    feed.apply_task_event(event("t2", "vjob", "IN_PROGRESS", "dev1"))
    feed.apply_task_event(event("t2", "vjob", "FAILED", "dev1"))
    feed.apply_task_event(event("t3", "other", "SUCCEEDED"))
    assert [(p["DeviceName"], p["TaskStatus"], r) for _, p, r, _ in sent] == [
        ("dev0", "SUCCEEDED", "verify-outcome/t1/SUCCEEDED"),
        ("dev1", "FAILED", "verify-outcome/t2/FAILED"),
    ]
    assert {a for a, _, _, _ in sent} == {"RecordVerifyOutcome"}
    assert outcome_command(event("t9", "vjob", "NOTIFIED")) is None


def test_udi_reaches_the_device_as_package_udi(world: World) -> None:
    firmware_id = world.firmware(NeedToVerify="false", Udi='{"region":"north"}')
    out = world.call(
        "CreateOTADynamicUpgradeJob",
        ProductKey=world.pk,
        FirmwareId=firmware_id,
        SrcVersion__1="1.0",
        Tag__1__Key="wave",
        Tag__1__Value="one",
    )
    offer = out.batches[0]["firmware"]
    assert offer["udi"] == '{"region":"north"}'
    note = {
        "product_key": world.pk,
        "device_name": "dev0",
        "kind": "PUSH",
        "task_id": "t1",
        "batch_id": out.data["JobId"],
        "firmware": offer,
        "ext_data": {"wave": "one"},
        "event_time": NOW,
    }
    _, payload = build_upgrade_message(note, "https://example/packages/ota/abc.bin")
    data = json.loads(payload)["data"]
    assert data["extData"] == {"wave": "one", "_package_udi": '{"region":"north"}'}
    assert data["size"] == len(PAYLOAD)


SECOND = "http://127.0.0.1:8081/packages/ota/second.bin"


def test_a_package_of_several_files_reaches_the_device_as_files(world: World) -> None:
    base = {"NeedToVerify": "false", "FirmwareName": "multi"}
    firmware_id = world.firmware(
        FirmwareUrl="",
        MultiFiles__1__Name="app.bin",
        MultiFiles__1__Url=URL,
        MultiFiles__2__Name="res.pack",
        MultiFiles__2__Url=SECOND,
        MultiFiles__2__Size=300,
        MultiFiles__2__FileMd5="b" * 32,
        **base,
    )
    info = world.info(firmware_id)
    assert info["MultiFiles"] == [
        {"Name": "app.bin", "Url": URL, "Size": len(PAYLOAD), "SignValue": MD5, "FileMd5": MD5},
        {
            "Name": "res.pack",
            "Url": SECOND,
            "Size": 300,
            "SignValue": "b" * 32,
            "FileMd5": "b" * 32,
        },
    ]
    out = world.call(
        "CreateOTAStaticUpgradeJob",
        ProductKey=world.pk,
        FirmwareId=firmware_id,
        TargetSelection="ALL",
    )
    offer = out.batches[0]["firmware"]
    assert [f["name"] for f in offer["files"]] == ["app.bin", "res.pack"]
    note = {
        "product_key": world.pk,
        "device_name": "dev0",
        "kind": "PUSH",
        "task_id": "t1",
        "batch_id": out.data["JobId"],
        "firmware": offer,
        "ext_data": {},
        "event_time": NOW,
    }
    urls = {f["file_path"]: f"https://signed/{f['file_path']}" for f in offer["files"]}
    _, payload = build_upgrade_message(note, "https://signed/ota/abc.bin", urls)
    data = json.loads(payload)["data"]
    assert data["files"] == [
        {
            "fileName": "app.bin",
            "fileSize": len(PAYLOAD),
            "fileUrl": "https://signed/ota/abc.bin",
            "fileSign": MD5,
        },
        {
            "fileName": "res.pack",
            "fileSize": 300,
            "fileUrl": "https://signed/ota/second.bin",
            "fileSign": "b" * 32,
        },
    ]
    assert "url" not in data and "sign" not in data and data["signMethod"] == "Md5"
    assert data["size"] == len(PAYLOAD) + 300
    err = world.refused(
        "CreateOTAStaticUpgradeJob",
        ProductKey=world.pk,
        FirmwareId=firmware_id,
        TargetSelection="ALL",
        DownloadProtocol="MQTT",
    )
    assert "one file" in err.message


def test_the_rules_of_multifiles(world: World) -> None:
    def refused(**params: Any) -> ApiError:
        base = {
            "ProductKey": world.pk,
            "FirmwareName": "bad_multi",
            "DestVersion": "2.0",
            "MultiFiles__1__Name": "a.bin",
            "MultiFiles__1__Url": URL,
        }
        return world.refused("CreateOTAFirmware", **{**base, **params})

    assert "used twice" in refused(MultiFiles__2__Name="a.bin", MultiFiles__2__Url=SECOND).message
    assert "FirmwareUrl" in refused(FirmwareUrl=URL).message
    assert "MultiFiles.1.Name" in refused(MultiFiles__1__Name="n" * 33).message
    assert refused(MultiFiles__1__Size=1).code == "iot.ota.FirmwareSizeMismatch"
    assert refused(MultiFiles__1__FileMd5="0" * 32).code == "iot.ota.FirmwareSignMismatch"
    many = {}
    for n in range(1, 22):
        many[f"MultiFiles__{n}__Name"] = f"f{n}"
        many[f"MultiFiles__{n}__Url"] = URL
    assert "at most 20" in refused(**many).message
    # One file given as MultiFiles is offered as a single file (url, size, sign).
    single = world.firmware(
        NeedToVerify="false", FirmwareUrl="", MultiFiles__1__Name="only.bin", MultiFiles__1__Url=URL
    )
    offer = world.call(
        "CreateOTAStaticUpgradeJob", ProductKey=world.pk, FirmwareId=single, TargetSelection="ALL"
    ).batches[0]["firmware"]
    assert offer["files"] == [] and offer["size"] == len(PAYLOAD) and offer["sign"] == MD5
