"""The OTA OpenAPI driven by the official SDK, unchanged, against a running otaflow.

One deployment for the module (real Kafka, the worker as a real process, the API and
package servers in this process on free ports); each test uses its own product, so
tests stay independent while sharing the worker.

Task reads come from the API's task view and are eventually consistent: tests that
read tasks right after a write poll (``eventually``).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests
from aiohttp import web
from alibabacloud_iot20180120 import models as m
from alibabacloud_iot20180120.client import Client
from alibabacloud_tea_openapi import models as open_api_models
from alibabacloud_tea_openapi.models import Config
from alibabacloud_tea_util import models as util_models
from Tea.exceptions import TeaException

from otaflow import topics
from otaflow.api.server import create_app
from otaflow.api.signature import sign_request
from otaflow.api.views import TaskViewConsumer
from otaflow.cli.ops import add_parsers
from otaflow.codec import codec
from otaflow.control.client import ControlClient
from otaflow.dev import devstack
from otaflow.package_server import make_app
from otaflow.packages import PackageStore, file_path_of_url
from otaflow.partitioning import device_key, partition_for
from tests.integration.conftest import Otaflow
from tests.integration.uploads import post_object

pytestmark = pytest.mark.integration

CODEC = codec()
AK, SK = "testAccessKey", "testAccessKeySecret"
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Deployment:
    """otaflow with its API: the worker process, and the API + package servers here."""

    def __init__(self, stack: devstack.DevStack, tmp: Path) -> None:
        self.otaflow = Otaflow(stack, tmp)
        api_port, package_port = free_port(), free_port()
        self.settings = replace(
            self.otaflow.settings,
            api_port=api_port,
            package_port=package_port,
            package_base_url=f"http://127.0.0.1:{package_port}",
            access_keys={AK: SK},
        )
        self.otaflow.env["OTAFLOW_PACKAGE_BASE_URL"] = self.settings.package_base_url
        self.otaflow.start_worker()
        self.packages = PackageStore(self.settings, root=tmp / "packages")
        self.control = ControlClient(self.settings)
        self.feed = TaskViewConsumer(self.settings)
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        assert self._ready.wait(20)
        self.client = self.sdk(SK)

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.runners = []
        for app, port in (
            (
                create_app(self.settings, self.control, self.feed.view, packages=self.packages),
                self.settings.api_port,
            ),
            (make_app(self.packages), self.settings.package_port),
        ):
            runner = web.AppRunner(app, access_log=None)
            self.loop.run_until_complete(runner.setup())
            self.loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
            self.runners.append(runner)
        self._ready.set()
        self.loop.run_forever()

    def sdk(self, secret: str) -> Client:
        return Client(
            Config(
                access_key_id=AK,
                access_key_secret=secret,
                endpoint=f"127.0.0.1:{self.settings.api_port}",
                protocol="http",
                read_timeout=70_000,
            )
        )

    def call_raw(self, action: str, params: dict[str, Any]) -> dict[str, Any]:
        """An operation (or extra parameters) the SDK has no model for, through its
        generic ``call_api``: still the SDK's own signing and wire format."""
        query = {k: str(v) for k, v in params.items()}
        api_params = open_api_models.Params(
            action=action,
            version="2018-01-20",
            protocol="HTTP",
            pathname="/",
            method="POST",
            auth_type="AK",
            style="RPC",
            req_body_type="formData",
            body_type="json",
        )
        request = open_api_models.OpenApiRequest(query=query)
        response = self.client.call_api(api_params, request, util_models.RuntimeOptions())
        body: dict[str, Any] = response["body"]
        return body

    def close(self) -> None:
        async def stop() -> None:
            for runner in self.runners:
                await runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.feed.close()
        self.control.close()
        self.otaflow.close()


@pytest.fixture(scope="module")
def api(stack: devstack.DevStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    deployment = Deployment(stack, tmp_path_factory.mktemp("api"))
    try:
        yield deployment
    finally:
        deployment.close()


def eventually(fetch: Callable[[], T], ok: Callable[[T], bool], timeout: float = 30) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if ok(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout}s; last: {value!r}")
        time.sleep(0.1)


def ok(body: Any) -> Any:
    assert body.success, f"{body.code}: {body.error_message}"
    return body


def refused(body: Any, code: str, *words: str) -> None:
    assert body.success is False, body
    assert body.code == code, f"{body.code}: {body.error_message}"
    for word in words:
        assert word in body.error_message, body.error_message


# -- helpers that build a world ------------------------------------------------------------


def new_product(api: Deployment) -> str:
    name = "p_" + uuid.uuid4().hex[:12]
    body = ok(
        api.client.create_product(m.CreateProductRequest(product_name=name, node_type=0)).body
    )
    assert body.data.product_name == name
    return str(body.product_key)


def register(api: Deployment, pk: str, *names: str, province: str | None = None) -> None:
    for name in names:
        if province is None:
            ok(
                api.client.register_device(
                    m.RegisterDeviceRequest(product_key=pk, device_name=name)
                ).body
            )
        else:
            body = api.call_raw(
                "RegisterDevice",
                {"ProductKey": pk, "DeviceName": name, "Province": province, "City": "Hangzhou"},
            )
            assert body["Success"], body


def upload_firmware(api: Deployment, pk: str, version: str = "2.0", **extra: Any) -> str:
    url = ok(
        api.client.generate_otaupload_url(m.GenerateOTAUploadURLRequest(file_suffix="bin")).body
    ).data
    payload = f"firmware {pk} {version}".encode() * 50
    # Only the SDK's fields, as the object store's PostObject form.
    put = post_object(url, payload)
    assert put.status_code == 200, put.text
    extra.setdefault("need_to_verify", False)
    request = m.CreateOTAFirmwareRequest(
        product_key=pk,
        firmware_name=f"fw_{uuid.uuid4().hex[:10]}",
        dest_version=version,
        firmware_url=url.firmware_url,
        firmware_sign=hashlib.md5(payload).hexdigest(),
        sign_method="MD5",
        firmware_size=len(payload),
        **extra,
    )
    return str(ok(api.client.create_otafirmware(request).body).data.firmware_id)


def report_versions(api: Deployment, pk: str, version: str, *names: str) -> None:
    for name in names:
        api.otaflow.report(pk, name, "VERSION", int(time.time() * 1000), version=version)
    api.otaflow.flush()


def job_ids(api: Deployment, firmware_id: str) -> list[str]:
    body = ok(
        api.client.list_otajob_by_firmware(
            m.ListOTAJobByFirmwareRequest(firmware_id=firmware_id, current_page=1, page_size=50)
        ).body
    )
    return [j.job_id for j in body.data.simple_otajob_info]


def device_items(api: Deployment, schema: str) -> list[tuple[int, dict[str, Any]]]:
    """(partition, record) of every ``schema`` item sent to the device partitions so far."""
    reader = api.otaflow.reader(topics.DEVICE_EVENTS)
    reader.poll(0.5)
    out = []
    for partition, envelope in reader.records:
        for item in envelope["items"]:
            name, record = CODEC.decode(item)
            if name == schema:
                out.append((partition, record))
    return out


def wait_items(
    api: Deployment, schema: str, ok: Callable[[list[dict[str, Any]]], bool]
) -> list[tuple[int, dict[str, Any]]]:
    return eventually(lambda: device_items(api, schema), lambda v: ok([r for _, r in v]))


def tasks_of(api: Deployment, job_id: str, status: str | None = None) -> Any:
    return api.client.list_otatask_by_job(
        m.ListOTATaskByJobRequest(job_id=job_id, current_page=1, page_size=100, task_status=status)
    ).body


def dynamic_job(api: Deployment, pk: str, firmware_id: str, **extra: Any) -> Any:
    params: dict[str, Any] = {"src_version": ["1.0"], "maximum_per_minute": 100}
    params.update(extra)
    return api.client.create_otadynamic_upgrade_job(
        m.CreateOTADynamicUpgradeJobRequest(product_key=pk, firmware_id=firmware_id, **params)
    ).body


def static_job(api: Deployment, pk: str, firmware_id: str, **extra: Any) -> Any:
    params: dict[str, Any] = {"target_selection": "ALL", "maximum_per_minute": 100}
    params.update(extra)
    return api.client.create_otastatic_upgrade_job(
        m.CreateOTAStaticUpgradeJobRequest(product_key=pk, firmware_id=firmware_id, **params)
    ).body


def now_ms() -> int:
    return int(time.time() * 1000)


# -- firmware and modules --------------------------------------------------------------------


def test_firmware_and_modules(api: Deployment) -> None:
    c = api.client
    pk = new_product(api)
    url = ok(c.generate_otaupload_url(m.GenerateOTAUploadURLRequest(file_suffix="zip")).body).data
    assert url.key.endswith(".zip") and url.firmware_url.endswith(url.key)
    assert url.object_storage == "OTAFLOW" and url.utc_create.endswith("Z")
    refused(
        c.generate_otaupload_url(m.GenerateOTAUploadURLRequest(file_suffix="exe")).body,
        "iot.common.InvalidFormattedParameter",
        "FileSuffix",
    )
    # A forged upload signature is refused.
    bad = post_object(dict(url.to_map(), Signature="A" * 44), b"x")
    assert bad.status_code == 403

    ok(
        c.create_otamodule(
            m.CreateOTAModuleRequest(
                product_key=pk, module_name="mcu", alias_name="m1", desc="the MCU"
            )
        ).body
    )
    refused(
        c.create_otamodule(m.CreateOTAModuleRequest(product_key=pk, module_name="MCU")).body,
        "iot.ota.ModuleAlreadyExist",
    )
    ok(
        c.update_otamodule(
            m.UpdateOTAModuleRequest(product_key=pk, module_name="mcu", alias_name="m2")
        ).body
    )
    modules = ok(
        c.list_otamodule_by_product(m.ListOTAModuleByProductRequest(product_key=pk)).body
    ).data
    assert {(x.module_name, x.alias_name) for x in modules} == {
        ("default", "default"),
        ("mcu", "m2"),
    }

    firmware_id = upload_firmware(api, pk, "3.1", module_name="mcu", firmware_desc="first")
    info = ok(
        c.query_otafirmware(m.QueryOTAFirmwareRequest(firmware_id=firmware_id)).body
    ).firmware_info
    assert (info.module_name, info.dest_version, info.firmware_desc, info.product_key) == (
        "mcu",
        "3.1",
        "first",
        pk,
    )
    assert info.sign_method == "MD5" and info.firmware_size > 0 and info.type == 0
    refused(
        c.create_otafirmware(
            m.CreateOTAFirmwareRequest(
                product_key=pk,
                firmware_name=info.firmware_name,
                dest_version="3.2",
                firmware_url=info.firmware_url,
                firmware_sign="x",
                firmware_size=1,
            )
        ).body,
        "iot.ota.FirmwareNameAlreadyExist",
    )
    refused(
        c.create_otafirmware(
            m.CreateOTAFirmwareRequest(
                product_key=pk,
                firmware_name="fw_nomodule",
                dest_version="3.2",
                firmware_url=info.firmware_url,
                firmware_sign="x",
                module_name="nope",
            )
        ).body,
        "iot.ota.ModuleNotExist",
    )
    ok(
        c.modify_otafirmware(
            m.ModifyOTAFirmwareRequest(
                product_key=pk,
                firmware_id=firmware_id,
                firmware_name="renamed_" + firmware_id[:8],
                firmware_desc="second",
            )
        ).body
    )
    listed = ok(
        c.list_otafirmware(
            m.ListOTAFirmwareRequest(product_key=pk, current_page=1, page_size=10)
        ).body
    )
    assert listed.total == 1
    row = listed.firmware_info.simple_firmware_info[0]
    assert (row.firmware_id, row.firmware_name, row.firmware_desc) == (
        firmware_id,
        "renamed_" + firmware_id[:8],
        "second",
    )
    refused(
        c.delete_otamodule(m.DeleteOTAModuleRequest(product_key=pk, module_name="mcu")).body,
        "iot.ota.ModuleHasFirmware",
    )
    ok(c.delete_otafirmware(m.DeleteOTAFirmwareRequest(firmware_id=firmware_id)).body)
    refused(
        c.query_otafirmware(m.QueryOTAFirmwareRequest(firmware_id=firmware_id)).body,
        "iot.ota.FirmwareNotFound",
    )
    ok(c.delete_otamodule(m.DeleteOTAModuleRequest(product_key=pk, module_name="mcu")).body)
    modules = ok(
        c.list_otamodule_by_product(m.ListOTAModuleByProductRequest(product_key=pk)).body
    ).data
    assert [x.module_name for x in modules] == ["default"]


# -- registry ------------------------------------------------------------------------------


def test_registry_products_devices_and_groups(api: Deployment) -> None:
    c = api.client
    pk = new_product(api)
    product = ok(c.query_product(m.QueryProductRequest(product_key=pk)).body).data
    assert product.product_key == pk and product.device_count == 0 and product.node_type == 0
    refused(
        c.create_product(
            m.CreateProductRequest(product_name=product.product_name, node_type=0)
        ).body,
        "iot.prod.AlreadyExistedProductName",
    )
    register(api, pk, "north01", province="Zhejiang")
    refused(
        c.register_device(m.RegisterDeviceRequest(product_key=pk, device_name="north01")).body,
        "iot.device.DeviceNameAlreadyExist",
    )
    refused(
        c.register_device(m.RegisterDeviceRequest(product_key=pk, device_name="no")).body,
        "iot.device.InvalidFormattedDeviceName",
    )
    detail = ok(
        c.query_device_detail(
            m.QueryDeviceDetailRequest(product_key=pk, device_name="north01")
        ).body
    ).data
    raw = api.call_raw("QueryDeviceDetail", {"IotId": detail.iot_id})
    assert raw["Data"]["Province"] == "Zhejiang" and raw["Data"]["City"] == "Hangzhou"
    regs = wait_items(
        api, "DeviceRegistration", lambda v: any(r["device_name"] == "north01" for r in v)
    )
    partition, reg = next((p, r) for p, r in regs if r["device_name"] == "north01")
    assert reg["province"] == "Zhejiang" and reg["action"] == "REGISTER"
    assert partition == partition_for(device_key(pk, "north01").encode(), api.settings.partitions)

    report_versions(api, pk, "1.7", "north01")
    detail = eventually(
        lambda: c.query_device_detail(m.QueryDeviceDetailRequest(iot_id=detail.iot_id)).body.data,
        lambda d: d.firmware_version == "1.7",
    )
    versions = ok(
        c.list_otamodule_versions_by_device(
            m.ListOTAModuleVersionsByDeviceRequest(
                product_key=pk, device_name="north01", current_page=1, page_size=10
            )
        ).body
    )
    assert [(v.module_name, v.module_version) for v in versions.data.simple_otamodule_info] == [
        ("default", "1.7")
    ]

    # Bulk import: check the names, then register them under the application id.
    check = ok(
        c.batch_check_device_names(
            m.BatchCheckDeviceNamesRequest(
                product_key=pk,
                device_name_list=[
                    m.BatchCheckDeviceNamesRequestDeviceNameList(
                        device_name=n, device_nickname=f"nick_{n}"
                    )
                    for n in ("bulk0001", "bulk0002", "north01", "x", "bulk0001")
                ],
            )
        ).body
    ).data
    assert sorted(check.invalid_device_name_list.invalid_device_name) == ["north01", "x"]
    assert check.repeated_device_name_list.repeat_devie_name_list == ["bulk0001"]
    ok(
        c.batch_register_device_with_apply_id(
            m.BatchRegisterDeviceWithApplyIdRequest(product_key=pk, apply_id=check.apply_id)
        ).body
    )
    status = ok(
        c.query_batch_register_device_status(
            m.QueryBatchRegisterDeviceStatusRequest(product_key=pk, apply_id=check.apply_id)
        ).body
    ).data
    assert status.status == "CREATE_SUCCESS" and sorted(status.valid_list.name) == [
        "bulk0001",
        "bulk0002",
    ]
    page1 = ok(
        c.query_page_by_apply_id(
            m.QueryPageByApplyIdRequest(apply_id=check.apply_id, current_page=1, page_size=10)
        ).body
    )
    assert page1.total == 2 and {
        d.device_name for d in page1.apply_device_list.apply_device_info
    } == {"bulk0001", "bulk0002"}
    assert ok(c.query_product(m.QueryProductRequest(product_key=pk)).body).data.device_count == 3

    # Static groups with a subgroup, relations, and a dynamic group.
    parent = ok(
        c.create_device_group(
            m.CreateDeviceGroupRequest(group_name="grp_" + pk[-8:], group_desc="parent")
        ).body
    ).data
    child = ok(
        c.create_device_group(
            m.CreateDeviceGroupRequest(group_name="sub_" + pk[-8:], super_group_id=parent.group_id)
        ).body
    ).data
    added = ok(
        c.batch_add_device_group_relations(
            m.BatchAddDeviceGroupRelationsRequest(
                group_id=child.group_id,
                device=[
                    m.BatchAddDeviceGroupRelationsRequestDevice(product_key=pk, device_name=n)
                    for n in ("bulk0001", "bulk0002", "ghost001")
                ],
            )
        ).body
    )
    assert (added.valid_device_count, added.success_added_device_count) == (2, 2)
    again = ok(
        c.batch_add_device_group_relations(
            m.BatchAddDeviceGroupRelationsRequest(
                group_id=child.group_id,
                device=[
                    m.BatchAddDeviceGroupRelationsRequestDevice(
                        product_key=pk, device_name="bulk0001"
                    )
                ],
            )
        ).body
    )
    assert again.already_related_group_device_count == 1 and again.success_added_device_count == 0
    removed = ok(
        c.batch_delete_device_group_relations(
            m.BatchDeleteDeviceGroupRelationsRequest(
                group_id=child.group_id,
                device=[
                    m.BatchDeleteDeviceGroupRelationsRequestDevice(
                        product_key=pk, device_name="bulk0002"
                    )
                ],
            )
        ).body
    )
    assert removed.success_device_count == 1
    subs = ok(
        c.query_device_group_list(
            m.QueryDeviceGroupListRequest(
                super_group_id=parent.group_id, current_page=1, page_size=10
            )
        ).body
    )
    assert subs.total == 1 and subs.data.group_info[0].group_id == child.group_id
    groups_of = wait_items(
        api,
        "DeviceRegistration",
        lambda v: (
            [r["groups"] for r in v if r["device_name"] == "bulk0002"][-1:] == [[]]
            and any(r["groups"] == [child.group_id] for r in v if r["device_name"] == "bulk0001")
        ),
    )
    assert groups_of
    controls = wait_items(
        api, "GroupControl", lambda v: any(r["group_id"] == child.group_id for r in v)
    )
    sub_controls = [r for _, r in controls if r["group_id"] == child.group_id]
    assert len(sub_controls) == api.settings.partitions  # broadcast to every partition
    assert (
        sub_controls[0]["parent_id"] == parent.group_id
        and sub_controls[0]["group_type"] == "STATIC"
    )

    dyn = ok(
        c.create_device_dynamic_group(
            m.CreateDeviceDynamicGroupRequest(
                group_name="dyn_" + pk[-8:], dynamic_group_expression=f'product_key = "{pk}"'
            )
        ).body
    ).data
    assert dyn.dynamic_group_expression == f'product_key = "{pk}"'
    dyns = ok(
        c.query_device_group_list(
            m.QueryDeviceGroupListRequest(
                group_types=["LINK_PLATFORM_DYNAMIC"],
                group_name=pk[-8:],
                current_page=1,
                page_size=10,
            )
        ).body
    )
    assert [(g.group_id, g.group_type) for g in dyns.data.group_info] == [
        (dyn.group_id, "LINK_PLATFORM_DYNAMIC")
    ]


# -- batches and tasks ---------------------------------------------------------------------


def test_dynamic_batch_tasks_statistics_edits_and_cancels(api: Deployment) -> None:
    c = api.client
    pk = new_product(api)
    devices = [f"dyn{i:04d}" for i in range(4)]
    firmware_id = upload_firmware(api, pk)
    job = ok(
        dynamic_job(
            api,
            pk,
            firmware_id,
            need_confirm=True,
            retry_interval=10,
            retry_count=2,
            timeout_in_minutes=60,
        )
    ).data
    report_versions(api, pk, "1.0", *devices)
    report_versions(api, pk, "0.5", "other001")
    tasks = eventually(lambda: tasks_of(api, job.job_id), lambda b: b.total == 4)
    infos = tasks.data.simple_otatask_info
    assert {t.device_name for t in infos} == set(devices)
    assert {(t.task_status, t.src_version, t.dest_version, t.timeout) for t in infos} == {
        ("CONFIRM", "1.0", "2.0", "60")
    }
    stats = api.call_raw("QueryOTAJob", {"JobId": job.job_id})["Data"]["Statistics"]
    assert stats["Total"] == 4 and stats["Confirm"] == 4
    assert stats["SrcVersions"] == [
        {"SrcVersion": "1.0", **{k: stats[k] for k in stats if k != "SrcVersions"}}
    ]
    unfinished = ok(
        c.list_otaunfinished_task_by_device(
            m.ListOTAUnfinishedTaskByDeviceRequest(product_key=pk, device_name="dyn0000")
        ).body
    )
    assert [
        (t.job_id, t.task_status, t.module_name) for t in unfinished.data.simple_otatask_info
    ] == [(job.job_id, "CONFIRM", "default")]
    by_device = ok(
        c.list_otajob_by_device(
            m.ListOTAJobByDeviceRequest(
                product_key=pk,
                device_name="dyn0000",
                firmware_id=firmware_id,
                current_page=1,
                page_size=10,
            )
        ).body
    )
    assert [(j.job_id, j.selection_type) for j in by_device.data.simple_otajob_info] == [
        (job.job_id, "DYNAMIC")
    ]

    # Task actions become TaskCommand records on the device's partition.
    first = infos[0]
    ok(c.confirm_otatask(m.ConfirmOTATaskRequest(task_id=[first.task_id])).body)
    ok(
        c.reupgrade_otatask(
            m.ReupgradeOTATaskRequest(job_id=job.job_id, task_id=[first.task_id])
        ).body
    )
    ok(
        c.cancel_otatask_by_device(
            m.CancelOTATaskByDeviceRequest(
                product_key=pk,
                firmware_id=firmware_id,
                device_name=[infos[1].device_name],
                job_id=job.job_id,
            )
        ).body
    )
    commands = wait_items(
        api, "TaskCommand", lambda v: len([r for r in v if r["product_key"] == pk]) == 3
    )
    mine = [(p, r) for p, r in commands if r["product_key"] == pk]
    # Partitions are read in no particular order; one device's records keep theirs.
    by_action = {r["action"]: r for _, r in mine}
    assert [r["action"] for _, r in mine if r["device_name"] == first.device_name] == [
        "CONFIRM",
        "REUPGRADE",
    ]
    assert by_action["CONFIRM"]["task_ids"] == [first.task_id]
    assert by_action["REUPGRADE"]["batch_id"] == job.job_id
    assert (by_action["CANCEL"]["device_name"], by_action["CANCEL"]["firmware_id"]) == (
        infos[1].device_name,
        firmware_id,
    )
    assert all(
        p == partition_for(device_key(pk, r["device_name"]).encode(), api.settings.partitions)
        for p, r in mine
    )
    refused(
        c.confirm_otatask(m.ConfirmOTATaskRequest(task_id=["nosuchtask"])).body,
        "iot.ota.TaskNotExist",
    )
    refused(
        c.confirm_otatask(m.ConfirmOTATaskRequest(task_id=[f"t{i}" for i in range(11)])).body,
        "iot.ota.TaskIdExceedLimit",
    )

    # What may change while the batch is updating: rate, tags, source versions, timeout.
    ok(
        c.update_otajob(
            m.UpdateOTAJobRequest(
                job_id=job.job_id,
                upgrade_type="DYNAMIC",
                target_selection="ALL",
                maximum_per_minute=500,
                src_version_list=["1.0", "1.1"],
                timeout_in_minutes=120,
                tags=[m.UpdateOTAJobRequestTags(key="wave", value="2")],
            )
        ).body
    )
    data = ok(c.query_otajob(m.QueryOTAJobRequest(job_id=job.job_id)).body).data
    assert (data.maximum_per_minute, data.timeout_in_minutes, data.src_versions.src_version) == (
        500,
        120,
        ["1.0", "1.1"],
    )
    assert [(t.key, t.value) for t in data.tags.ota_tag_dto] == [("wave", "2")]
    assert (data.retry_interval, data.retry_count, data.need_confirm) == (10, 2, True)
    updates = wait_items(
        api,
        "BatchControl",
        lambda v: any(r["action"] == "UPDATE" and r["batch"]["batch_id"] == job.job_id for r in v),
    )
    assert any(r["batch"]["rate"]["max_rate"] == 500 for _, r in updates if r["action"] == "UPDATE")

    ok(
        c.cancel_otatask_by_job(
            m.CancelOTATaskByJobRequest(
                job_id=job.job_id,
                cancel_unconfirmed_task=True,
                cancel_queued_task=True,
                cancel_notified_task=True,
                cancel_in_progress_task=True,
            )
        ).body
    )
    # Whatever the task commands above did, every unfinished task is now canceled.
    eventually(lambda: tasks_of(api, job.job_id, "CANCELED"), lambda b: b.total == 4)
    stats = api.call_raw("QueryOTAJob", {"JobId": job.job_id})["Data"]["Statistics"]
    assert (stats["Canceled"], stats["Confirm"]) == (4, 0)

    refused(dynamic_job(api, pk, firmware_id), "iot.ota.DynamicJobAlreadyExist")
    ok(c.cancel_otastrategy_by_job(m.CancelOTAStrategyByJobRequest(job_id=job.job_id)).body)
    assert (
        ok(c.query_otajob(m.QueryOTAJobRequest(job_id=job.job_id)).body).data.job_status
        == "CANCELED"
    )
    refused(
        c.update_otajob(
            m.UpdateOTAJobRequest(
                job_id=job.job_id,
                upgrade_type="DYNAMIC",
                target_selection="ALL",
                maximum_per_minute=100,
            )
        ).body,
        "iot.ota.JobNotInProgress",
    )
    # A canceled dynamic batch frees its package.
    second = ok(dynamic_job(api, pk, firmware_id)).data
    assert sorted(job_ids(api, firmware_id)) == sorted([job.job_id, second.job_id])


def test_static_scopes_targets_and_verification(api: Deployment) -> None:
    c = api.client
    pk = new_product(api)
    names = [f"st{i:04d}" for i in range(6)]
    register(api, *[pk], *names[:4])
    register(api, pk, *names[4:], province="Zhejiang")
    verified_id = upload_firmware(api, pk, need_to_verify=True)
    assert (
        ok(
            c.query_otafirmware(m.QueryOTAFirmwareRequest(firmware_id=verified_id)).body
        ).firmware_info.status
        == 0
    )
    refused(static_job(api, pk, verified_id), "iot.ota.FirmwareNotVerified")
    verify = ok(
        c.create_otaverify_job(
            m.CreateOTAVerifyJobRequest(
                product_key=pk,
                firmware_id=verified_id,
                target_device_name=[names[0]],
                timeout_in_minutes=30,
            )
        ).body
    ).data
    # Verifying (2) until the device's outcome decides; not usable for batches meanwhile.
    assert (
        ok(
            c.query_otafirmware(m.QueryOTAFirmwareRequest(firmware_id=verified_id)).body
        ).firmware_info.status
        == 2
    )
    refused(static_job(api, pk, verified_id), "iot.ota.FirmwareNotVerified")
    assert (
        ok(c.query_otajob(m.QueryOTAJobRequest(job_id=verify.job_id)).body).data.job_type
        == "VERFIY_FIRMWARE"
    )
    refused(
        c.create_otaverify_job(
            m.CreateOTAVerifyJobRequest(
                product_key=pk,
                firmware_id=verified_id,
                target_device_name=[names[0]],
                timeout_in_minutes=30,
            )
        ).body,
        "iot.ota.FirmwareVerifying",
    )
    firmware_id = upload_firmware(api, pk)

    specific = ok(
        static_job(api, pk, firmware_id, target_selection="SPECIFIC", target_device_name=names[1:3])
    ).data
    # A device-name list file: three good names, one unknown, one malformed.
    upload = ok(c.generate_device_name_list_url(m.GenerateDeviceNameListURLRequest()).body).data
    csv = "deviceName\n" + "\n".join([names[3], names[4], names[5], "ghost0001", "b@d name"]) + "\n"
    put = post_object(upload, csv.encode())
    assert put.status_code == 200
    # Invalid names refuse the batch; the invalid list of the file stays readable.
    refused(
        static_job(
            api, pk, firmware_id, target_selection="SPECIFIC", dn_list_file_url=upload.file_url
        ),
        "iot.ota.InvalidTargetDeviceName",
        "ghost0001",
    )
    bad = api.call_raw(
        "ListOTAJobInvalidDeviceNames",
        {"DnListFileUrl": upload.file_url, "ProductKey": pk, "CurrentPage": 1, "PageSize": 10},
    )
    assert bad["Data"]["DeviceNames"] == ["ghost0001", "b@d name"] and bad["Total"] == 2
    upload = ok(c.generate_device_name_list_url(m.GenerateDeviceNameListURLRequest()).body).data
    put = post_object(upload, ("deviceName\n" + "\n".join(names[3:6]) + "\n").encode())
    assert put.status_code == 200
    from_file = ok(
        static_job(
            api, pk, firmware_id, target_selection="SPECIFIC", dn_list_file_url=upload.file_url
        )
    ).data
    raw = api.call_raw("QueryOTAJob", {"JobId": from_file.job_id})["Data"]
    assert (raw["TargetDeviceCount"], raw["InvalidDeviceNameCount"]) == (3, 0)

    gray = ok(static_job(api, pk, firmware_id, target_selection="GRAY", gray_percent="50.5")).data
    gray_detail = ok(c.query_otajob(m.QueryOTAJobRequest(job_id=gray.job_id)).body).data
    assert (gray_detail.target_selection, gray_detail.gray_percent) == ("GRAY", "50.5")
    group = ok(
        c.create_device_group(m.CreateDeviceGroupRequest(group_name="st_" + pk[-8:])).body
    ).data
    grouped = ok(
        static_job(
            api,
            pk,
            firmware_id,
            target_selection="GROUP",
            group_id=group.group_id,
            group_type="LINK_PLATFORM",
        )
    ).data
    assert (
        ok(c.query_otajob(m.QueryOTAJobRequest(job_id=grouped.job_id)).body).data.group_name
        == "st_" + pk[-8:]
    )
    regional = api.call_raw(
        "CreateOTAStaticUpgradeJob",
        {
            "ProductKey": pk,
            "FirmwareId": firmware_id,
            "TargetSelection": "REGION",
            "Province": "Zhejiang",
            "City": "Hangzhou",
        },
    )
    assert regional["Success"], regional
    start = now_ms() + 3_600_000
    planned = ok(
        static_job(
            api, pk, firmware_id, schedule_time=start, schedule_finish_time=start + 7_200_000
        )
    ).data
    detail = ok(c.query_otajob(m.QueryOTAJobRequest(job_id=planned.job_id)).body).data
    assert detail.job_status == "PLANNED" and detail.utc_schedule_time is not None

    targets = wait_items(
        api, "BatchTarget", lambda v: len({r["batch_id"] for r in v if r["product_key"] == pk}) == 3
    )
    by_job: dict[str, list[str]] = {}
    for partition, r in targets:
        if r["product_key"] == pk:
            assert partition == partition_for(
                device_key(pk, r["device_name"]).encode(), api.settings.partitions
            )
            by_job.setdefault(r["batch_id"], []).append(r["device_name"])
    assert by_job[verify.job_id] == [names[0]]
    assert sorted(by_job[specific.job_id]) == names[1:3]
    assert sorted(by_job[from_file.job_id]) == names[3:6]
    # A phased batch names no devices: the partitions take their shares of the devices
    # it could update (tests/integration/test_console_rules.py).
    assert gray.job_id not in by_job
    starts = [r["batch"] for _, r in device_items(api, "BatchControl") if r["action"] == "START"]
    region_start = next(b for b in starts if b["batch_id"] == regional["Data"]["JobId"])
    assert (region_start["scope"], region_start["region"], region_start["city"]) == (
        "REGIONAL",
        "Zhejiang",
        "Hangzhou",
    )
    group_start = next(b for b in starts if b["batch_id"] == grouped.job_id)
    assert (group_start["scope"], group_start["group_id"], group_start["group_type"]) == (
        "GROUP",
        group.group_id,
        "STATIC",
    )
    planned_start = next(b for b in starts if b["batch_id"] == planned.job_id)
    assert (planned_start["status"], planned_start["schedule_start"]) == ("PLANNED", start)

    ok(
        c.cancel_otatask_by_job(
            m.CancelOTATaskByJobRequest(job_id=planned.job_id, cancel_scheduled_task=True)
        ).body
    )
    assert (
        ok(c.query_otajob(m.QueryOTAJobRequest(job_id=planned.job_id)).body).data.job_status
        == "CANCELED"
    )
    refused(
        c.cancel_otatask_by_job(m.CancelOTATaskByJobRequest(job_id=specific.job_id)).body,
        "iot.ota.NoCancelTaskStatusSpecified",
    )


# -- rules ---------------------------------------------------------------------------------

MIN = 60_000
DAY = 24 * 60 * MIN

# (rule broken, static or dynamic, parameters, expected code, a word of the message)
BROKEN: list[tuple[str, str, dict[str, Any], str, str]] = [
    ("rate below 10", "static", {"MaximumPerMinute": 9}, "iot.ota.InvalidConstantRate", "10"),
    (
        "rate above 10,000",
        "dynamic",
        {"MaximumPerMinute": 10001},
        "iot.ota.InvalidConstantRate",
        "10,000",
    ),
    (
        "variable base above max",
        "static",
        {
            "RateType": "variable",
            "BaseRatePerMinute": 500,
            "MaximumPerMinute": 100,
            "IncrementalFactor": "2",
            "RateIncreaseThreshold": 10,
        },
        "iot.ota.BaseRateExceedsMaxRate",
        "base",
    ),
    (
        "variable factor 3 decimals",
        "static",
        {
            "RateType": "variable",
            "BaseRatePerMinute": 5,
            "MaximumPerMinute": 100,
            "IncrementalFactor": "1.255",
            "RateIncreaseThreshold": 10,
        },
        "iot.ota.InvalidIncrementalFactor",
        "two decimal",
    ),
    (
        "variable factor below 1.2",
        "dynamic",
        {
            "RateType": "variable",
            "BaseRatePerMinute": 5,
            "MaximumPerMinute": 100,
            "IncrementalFactor": "1.1",
            "RateIncreaseThreshold": 10,
        },
        "iot.ota.InvalidIncrementalFactor",
        "1.20",
    ),
    (
        "variable base 0",
        "static",
        {
            "RateType": "variable",
            "BaseRatePerMinute": 0,
            "MaximumPerMinute": 100,
            "IncrementalFactor": "2",
            "RateIncreaseThreshold": 10,
        },
        "iot.ota.InvalidBaseRate",
        "base",
    ),
    (
        "variable max 5",
        "static",
        {
            "RateType": "variable",
            "BaseRatePerMinute": 1,
            "MaximumPerMinute": 5,
            "IncrementalFactor": "2",
            "RateIncreaseThreshold": 10,
        },
        "iot.ota.InvalidMaxRate",
        "maximum",
    ),
    (
        "variable threshold 100,001",
        "static",
        {
            "RateType": "variable",
            "BaseRatePerMinute": 5,
            "MaximumPerMinute": 100,
            "IncrementalFactor": "2",
            "RateIncreaseThreshold": 100001,
        },
        "iot.ota.InvalidRateThreshold",
        "threshold",
    ),
    (
        "variable condition",
        "static",
        {
            "RateType": "variable",
            "BaseRatePerMinute": 5,
            "MaximumPerMinute": 100,
            "IncrementalFactor": "2",
            "RateIncreaseThreshold": 10,
            "RateIncreaseCondition": "online",
        },
        "iot.ota.InvalidRateCondition",
        "pushed",
    ),
    ("rate type", "static", {"RateType": "random"}, "iot.ota.InvalidRateType", "random"),
    (
        "retry interval 15",
        "static",
        {"RetryInterval": 15, "RetryCount": 1},
        "iot.ota.InvalidRetryInterval",
        "1440",
    ),
    (
        "retry interval not below timeout",
        "dynamic",
        {"RetryInterval": 60, "RetryCount": 1, "TimeoutInMinutes": 60},
        "iot.ota.RetryIntervalNotLessThanTimeout",
        "less than",
    ),
    (
        "retry count 3",
        "static",
        {"RetryInterval": 10, "RetryCount": 3},
        "iot.ota.InvalidRetryCount",
        "1, 2 or 5",
    ),
    (
        "retry count missing",
        "static",
        {"RetryInterval": 10},
        "iot.ota.InvalidRetryCount",
        "RetryCount",
    ),
    ("timeout 0", "static", {"TimeoutInMinutes": 0}, "iot.ota.InvalidTimeoutInMinutes", "1440"),
    (
        "timeout 1441",
        "dynamic",
        {"TimeoutInMinutes": 1441},
        "iot.ota.InvalidTimeoutInMinutes",
        "1440",
    ),
    (
        "schedule 4 minutes ahead",
        "static",
        {"ScheduleTime": 4 * MIN},
        "iot.ota.InvalidScheduleTime",
        "5 minutes",
    ),
    (
        "schedule 8 days ahead",
        "static",
        {"ScheduleTime": 8 * DAY},
        "iot.ota.InvalidScheduleTime",
        "7 days",
    ),
    (
        "end 30 minutes after start",
        "static",
        {"ScheduleTime": 10 * MIN, "ScheduleFinishTime": 40 * MIN},
        "iot.ota.InvalidScheduleFinishTime",
        "1 hour",
    ),
    (
        "end 31 days after start",
        "static",
        {"ScheduleTime": 10 * MIN, "ScheduleFinishTime": 10 * MIN + 31 * DAY},
        "iot.ota.InvalidScheduleFinishTime",
        "30 days",
    ),
    (
        "schedule on a dynamic batch",
        "dynamic",
        {"ScheduleTime": 10 * MIN},
        "iot.ota.ScheduleNotSupportedForDynamicJob",
        "static",
    ),
    (
        "phased dynamic batch",
        "dynamic",
        {"TargetSelection": "GRAY", "GrayPercent": "10"},
        "iot.ota.GrayNotSupportedForDynamicJob",
        "static",
    ),
    (
        "phased 4 decimals",
        "static",
        {"TargetSelection": "GRAY", "GrayPercent": "12.3456"},
        "iot.ota.InvalidGrayPercent",
        "three decimals",
    ),
    (
        "phased 0%",
        "static",
        {"TargetSelection": "GRAY", "GrayPercent": "0"},
        "iot.ota.InvalidGrayPercent",
        "above 0",
    ),
    (
        "11 source versions",
        "dynamic",
        {f"SrcVersion.{i}": f"0.{i}" for i in range(1, 12)},
        "iot.ota.SrcVersionExceedLimit",
        "10",
    ),
    (
        "201 names",
        "static",
        {
            "TargetSelection": "SPECIFIC",
            **{f"TargetDeviceName.{i}": f"dev{i:05d}" for i in range(1, 202)},
        },
        "iot.ota.TargetDeviceNameExceedLimit",
        "200",
    ),
    (
        "unknown names",
        "static",
        {"TargetSelection": "SPECIFIC", "TargetDeviceName.1": "ghost0001"},
        "iot.ota.InvalidTargetDeviceName",
        "ghost0001",
    ),
    (
        "multi-module with overwrite 2",
        "dynamic",
        {"MultiModuleMode": "true", "OverwriteMode": 2},
        "iot.ota.MultiModuleModeConflictWithOverwriteMode",
        "OverwriteMode",
    ),
    (
        "too many tags",
        "static",
        {
            **{f"Tag.{i}.Key": f"k{i}" for i in range(1, 12)},
            **{f"Tag.{i}.Value": "v" for i in range(1, 12)},
        },
        "iot.ota.InvalidTag",
        "10",
    ),
]


def test_every_rule_refused_and_nothing_created(api: Deployment) -> None:
    pk = new_product(api)
    register(api, pk, "rule0001")
    firmware_id = upload_firmware(api, pk)
    now = now_ms()
    for what, kind, extra, code, word in BROKEN:
        params: dict[str, Any] = {"ProductKey": pk, "FirmwareId": firmware_id}
        if kind == "static":
            params["TargetSelection"] = "ALL"
        elif not any(k.startswith("SrcVersion") for k in extra):
            params["SrcVersion.1"] = "1.0"
        for key, value in extra.items():
            params[key] = now + value if key.startswith("Schedule") else value
        action = "CreateOTAStaticUpgradeJob" if kind == "static" else "CreateOTADynamicUpgradeJob"
        body = api.call_raw(action, params)
        assert body["Success"] is False, what
        assert body["Code"] == code, (what, body)
        assert word in body["ErrorMessage"], (what, body["ErrorMessage"])
    # The same rules through the SDK's own models, for one of each kind.
    refused(
        static_job(
            api, pk, firmware_id, retry_interval=1440, retry_count=1, timeout_in_minutes=1440
        ),
        "iot.ota.RetryIntervalNotLessThanTimeout",
    )
    refused(dynamic_job(api, pk, firmware_id, maximum_per_minute=5), "iot.ota.InvalidConstantRate")
    # Nothing was created by any refused call.
    assert job_ids(api, firmware_id) == []
    assert device_items(api, "BatchTarget") == [] or all(
        r["product_key"] != pk for _, r in device_items(api, "BatchTarget")
    )

    # A list file over 1,000,000 names is refused whole.
    upload = ok(
        api.client.generate_device_name_list_url(m.GenerateDeviceNameListURLRequest()).body
    ).data
    big = "\n".join(f"d{i:07d}" for i in range(1_000_001)).encode()
    assert post_object(upload, big).status_code == 200
    refused(
        static_job(
            api, pk, firmware_id, target_selection="SPECIFIC", dn_list_file_url=upload.file_url
        ),
        "iot.ota.DeviceNameListExceedLimit",
        "1,000,000",
    )
    assert job_ids(api, firmware_id) == []


def test_dynamic_group_rules_and_edit_rules(api: Deployment) -> None:
    c = api.client
    pk = new_product(api)
    group = ok(
        c.create_device_dynamic_group(
            m.CreateDeviceDynamicGroupRequest(
                group_name="rules_" + pk[-8:], dynamic_group_expression=f'product_key = "{pk}"'
            )
        ).body
    ).data
    packages = [upload_firmware(api, pk, f"5.{i}") for i in range(6)]

    def by_group(firmware_id: str, **extra: Any) -> Any:
        return dynamic_job(
            api,
            pk,
            firmware_id,
            src_version=None,
            group_id=group.group_id,
            group_type="LINK_PLATFORM_DYNAMIC",
            **extra,
        )

    first = ok(by_group(packages[0], multi_module_mode=True)).data
    refused(by_group(packages[1]), "iot.ota.DynamicGroupJobModeMismatch", "MultiModuleMode")
    assert job_ids(api, packages[1]) == []
    for firmware_id in packages[1:5]:
        ok(by_group(firmware_id, multi_module_mode=True))
    refused(
        by_group(packages[5], multi_module_mode=True), "iot.ota.DynamicGroupPackageExceedLimit", "5"
    )
    assert job_ids(api, packages[5]) == []
    refused(
        c.update_otajob(
            m.UpdateOTAJobRequest(
                job_id=first.job_id,
                upgrade_type="DYNAMIC",
                target_selection="GROUP",
                maximum_per_minute=100,
                src_version_list=["1.0"],
            )
        ).body,
        "iot.ota.SrcVersionNotEditable",
    )
    # Canceling one group batch frees a package slot.
    ok(c.cancel_otastrategy_by_job(m.CancelOTAStrategyByJobRequest(job_id=first.job_id)).body)
    ok(by_group(packages[5], multi_module_mode=True))

    static_fw = upload_firmware(api, pk, "6.0")
    job = ok(static_job(api, pk, static_fw)).data
    refused(
        c.update_otajob(
            m.UpdateOTAJobRequest(
                job_id=job.job_id,
                upgrade_type="STATIC",
                target_selection="ALL",
                maximum_per_minute=100,
                timeout_in_minutes=30,
            )
        ).body,
        "iot.ota.TimeoutNotEditable",
    )
    refused(
        c.update_otajob(
            m.UpdateOTAJobRequest(
                job_id=job.job_id,
                upgrade_type="DYNAMIC",
                target_selection="ALL",
                maximum_per_minute=100,
            )
        ).body,
        "iot.ota.JobTypeMismatch",
    )
    variable = api.call_raw(
        "CreateOTAStaticUpgradeJob",
        {
            "ProductKey": pk,
            "FirmwareId": static_fw,
            "TargetSelection": "ALL",
            "RateType": "variable",
            "BaseRatePerMinute": 5,
            "MaximumPerMinute": 100,
            "IncrementalFactor": "1.50",
            "RateIncreaseCondition": "succeeded",
            "RateIncreaseThreshold": 50,
        },
    )
    assert variable["Success"], variable
    vid = variable["Data"]["JobId"]
    changed = api.call_raw(
        "UpdateOTAJob",
        {
            "JobId": vid,
            "UpgradeType": "STATIC",
            "TargetSelection": "ALL",
            "RateType": "constant",
            "MaximumPerMinute": 100,
        },
    )
    assert (changed["Success"], changed["Code"]) == (False, "iot.ota.RateTypeChangeNotAllowed")
    # Without RateType the batch keeps its variable rate; the new maximum applies.
    ok(
        c.update_otajob(
            m.UpdateOTAJobRequest(
                job_id=vid, upgrade_type="STATIC", target_selection="ALL", maximum_per_minute=200
            )
        ).body
    )
    detail = api.call_raw("QueryOTAJob", {"JobId": vid})["Data"]
    assert (
        detail["RateType"],
        detail["MaximumPerMinute"],
        detail["BaseRatePerMinute"],
        detail["IncrementalFactor"],
        detail["RateIncreaseCondition"],
    ) == ("variable", 200, 5, "1.50", "succeeded")


def test_two_concurrent_dynamic_batches_for_one_package_one_wins(api: Deployment) -> None:
    pk = new_product(api)
    firmware_id = upload_firmware(api, pk)
    clients = [api.sdk(SK) for _ in range(2)]
    barrier = threading.Barrier(2)
    bodies: list[Any] = [None, None]

    def create(i: int) -> None:
        barrier.wait()
        bodies[i] = (
            clients[i]
            .create_otadynamic_upgrade_job(
                m.CreateOTADynamicUpgradeJobRequest(
                    product_key=pk, firmware_id=firmware_id, src_version=["1.0"]
                )
            )
            .body
        )

    threads = [threading.Thread(target=create, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert sorted(bool(b.success) for b in bodies) == [False, True]
    loser = next(b for b in bodies if not b.success)
    winner = next(b for b in bodies if b.success)
    assert loser.code == "iot.ota.DynamicJobAlreadyExist"
    assert job_ids(api, firmware_id) == [winner.data.job_id]


# -- authentication ------------------------------------------------------------------------


def _signed_post(api: Deployment, date: float, nonce: str, secret: str = SK) -> requests.Response:
    host = f"127.0.0.1:{api.settings.api_port}"
    query = {"ProductKey": "nothing"}
    headers = sign_request(
        access_key_id=AK,
        access_key_secret=secret,
        method="POST",
        host=host,
        query=query,
        action="QueryProduct",
        version="2018-01-20",
        date=date,
        nonce=nonce,
        headers={"accept": "application/json"},
    )
    return requests.post(f"http://{host}/", params=query, headers=headers, timeout=30)


def test_wrong_signature_stale_date_replayed_nonce_and_unsigned_are_refused(
    api: Deployment,
) -> None:
    with pytest.raises(TeaException) as wrong:
        api.sdk("not-the-secret").query_product(m.QueryProductRequest(product_key="x"))
    assert wrong.value.code == "SignatureDoesNotMatch"

    stale = _signed_post(api, time.time() - 20 * 60, uuid.uuid4().hex)
    assert (stale.status_code, stale.json()["Code"]) == (400, "InvalidTimeStamp.Expired")

    nonce = uuid.uuid4().hex
    first = _signed_post(api, time.time(), nonce)
    assert first.status_code == 200 and first.json()["Code"] == "iot.prod.NotExistedProduct"
    replay = _signed_post(api, time.time(), nonce)
    assert (replay.status_code, replay.json()["Code"]) == (400, "SignatureNonceUsed")

    unsigned = requests.post(
        f"http://127.0.0.1:{api.settings.api_port}/",
        headers={"x-acs-action": "QueryProduct", "x-acs-version": "2018-01-20"},
        timeout=10,
    )
    assert (unsigned.status_code, unsigned.json()["Code"]) == (400, "MissingAuthorization")

    with pytest.raises(TeaException) as missing_api:
        api.call_raw("NoSuchAction", {})
    assert missing_api.value.code == "InvalidApi.NotFound"


# -- the CLI -------------------------------------------------------------------------------


def test_cli_drives_the_api(
    api: Deployment, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = [
        "--endpoint",
        f"http://127.0.0.1:{api.settings.api_port}",
        "--access-key-id",
        AK,
        "--access-key-secret",
        SK,
    ]

    def cli(*argv: str) -> tuple[int, str]:
        parser = argparse.ArgumentParser(prog="otaflow")
        add_parsers(parser.add_subparsers(dest="command", required=True))
        group, command, *rest = argv
        args = parser.parse_args([group, command, *rest, *base])
        status = args.func(args)
        return status, capsys.readouterr().out

    pk = new_product(api)
    assert cli("device", "register", pk, "cli00001", "--province", "Zhejiang")[0] == 0
    csv = tmp_path / "devices.csv"
    csv.write_text("deviceName,nickname,province,city\ncli00002,,Zhejiang,Hangzhou\ncli00003\nx\n")
    status, text = cli("device", "import", pk, str(csv))
    assert status == 0 and "registered 2 device(s) of 3" in text
    detail = api.call_raw("QueryDeviceDetail", {"ProductKey": pk, "DeviceName": "cli00002"})["Data"]
    assert (detail["Province"], detail["City"]) == ("Zhejiang", "Hangzhou")

    status, text = cli("group", "create", "cli_" + pk[-8:], "--json")
    group_id = json.loads(text)["Data"]["GroupId"]
    status, text = cli("group", "add", group_id, f"{pk}/cli00001", f"{pk}/cli00003")
    assert status == 0 and "added 2 of 2" in text

    package = tmp_path / "fw.bin"
    package.write_bytes(b"cli firmware" * 100)
    status, text = cli(
        "firmware", "upload", str(package), "--product", pk, "--version", "9.0", "--json"
    )
    firmware_id = json.loads(text)["Data"]["FirmwareId"]
    info = ok(
        api.client.query_otafirmware(m.QueryOTAFirmwareRequest(firmware_id=firmware_id)).body
    ).firmware_info
    assert info.firmware_sign == hashlib.md5(package.read_bytes()).hexdigest()
    assert api.packages.describe(file_path_of_url(info.firmware_url)).size == 1200

    status, text = cli(
        "batch",
        "create",
        firmware_id,
        "--product",
        pk,
        "--scope",
        "SPECIFIC",
        "--devices",
        "cli00001,cli00002",
        "--rate",
        "50",
        "--tag",
        "wave=1",
        "--json",
    )
    job_id = json.loads(text)["Data"]["JobId"]
    status, text = cli("batch", "edit", job_id, "--rate", "70")
    assert status == 0
    data = ok(api.client.query_otajob(m.QueryOTAJobRequest(job_id=job_id)).body).data
    assert data.maximum_per_minute == 70 and [(t.key, t.value) for t in data.tags.ota_tag_dto] == [
        ("wave", "1")
    ]
    status, text = cli("batch", "list", firmware_id, "--json")
    rows = json.loads(text)["Data"]["SimpleOTAJobInfo"]
    assert status == 0 and [(r["JobId"], r["TargetSelection"]) for r in rows] == [
        (job_id, "SPECIFIC")
    ]
    status, text = cli("batch", "list", firmware_id)
    assert status == 0 and "SPECIFIC" in text and "batches of" in text
    status, text = cli("batch", "show", job_id)
    assert status == 0 and "IN_PROGRESS" in text

    # A refused call prints the platform's code and exits 1; nothing is created.
    status, _ = cli("batch", "create", firmware_id, "--product", pk, "--rate", "5")
    assert status == 1
    assert job_ids(api, firmware_id) == [job_id]
    status, text = cli("batch", "cancel", job_id, "--queued", "--json")
    assert status == 0 and json.loads(text)["Success"] is True
    status, text = cli("task", "list", job_id)
    assert status == 0 and f"tasks of {job_id}" in text
