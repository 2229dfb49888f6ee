"""The OpenAPI's batches (jobs) and their tasks through the official SDK: dynamic and
static batches, statistics, edits, cancels, scopes, targets and verification.

Shared deployment (``conftest.py``, one for the package) and helpers:
``tests/integration/api_support.py``.
"""

from __future__ import annotations

import pytest
from alibabacloud_iot20180120 import models as m

from otaflow.device_keys import device_key
from otaflow.kafka_partitions import partition_for
from tests.integration.api_support import (
    Deployment,
    device_items,
    dynamic_job,
    eventually,
    job_ids,
    jobs_of_device,
    new_product,
    now_ms,
    ok,
    refused,
    register,
    report_versions,
    static_job,
    tasks_of,
    upload_firmware,
    wait_items,
)
from tests.integration.uploads import post_object

pytestmark = pytest.mark.integration


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
    by_device = jobs_of_device(api, pk, "dyn0000", firmware_id)
    assert [(j.job_id, j.selection_type) for j in by_device] == [(job.job_id, "DYNAMIC")]

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
