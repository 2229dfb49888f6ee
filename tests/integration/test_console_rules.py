"""The console doc's rules (issue 12) through the official API SDK, against a running otaflow.

Reuses the deployment of ``api_support`` (its own instance for this module): the
worker as a real process on the real Kafka, the API and package servers in process.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
from alibabacloud_iot20180120 import models as m

from otaflow.cli.ops import add_parsers
from otaflow.device_keys import device_key
from otaflow.kafka_partitions import partition_for
from tests.integration.api_support import (
    AK,
    SK,
    Deployment,
    api,
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
    task_statuses,
    tasks_of,
    upload_firmware,
)

pytestmark = pytest.mark.integration
__all__ = ["api"]  # the module-scoped deployment fixture


def pull_reply(api: Deployment, pk: str, name: str, message_id: str) -> dict[str, Any]:
    """Ask for the device's task (firmware/get) and wait for the engine's reply."""
    api.otaflow.report(pk, name, "FIRMWARE_GET", now_ms(), message_id=message_id)
    api.otaflow.flush()
    values = api.otaflow.notifications().wait_for(
        lambda v: any(
            n["kind"] == "PULL_REPLY" and n["device_name"] == name and n["reply_to"] == message_id
            for n in v
        ),
        what=f"the reply to {name}",
    )
    return next(
        n
        for n in values
        if n["kind"] == "PULL_REPLY" and n["device_name"] == name and n["reply_to"] == message_id
    )


# -- reads follow writes -------------------------------------------------------------------


def test_a_batch_is_readable_right_after_its_create(api: Deployment) -> None:
    c = api.client
    pk = new_product(api)
    register(api, pk, "rw000001", "rw000002")
    firmware_id = upload_firmware(api, pk)
    created = []
    for i in range(5):
        job = ok(
            static_job(
                api, pk, firmware_id, target_selection="SPECIFIC", target_device_name=["rw000001"]
            )
        ).data
        created.append(job.job_id)
        # No wait: every read sees the batch at once (zero tasks until the engine makes them).
        listed = ok(tasks_of(api, job.job_id))
        assert listed.total in (0, 1), i
        assert ok(c.query_otajob(m.QueryOTAJobRequest(job_id=job.job_id)).body).data.job_id == (
            job.job_id
        )
        assert job.job_id in job_ids(api, firmware_id)
    dynamic = ok(dynamic_job(api, pk, upload_firmware(api, pk, "3.0"))).data
    assert ok(tasks_of(api, dynamic.job_id)).total == 0
    refused(tasks_of(api, "nosuchjob"), "iot.ota.JobNotExist")


def test_list_jobs_by_device_shows_the_real_type_and_status(api: Deployment) -> None:
    c = api.client
    pk = new_product(api)
    register(api, pk, "jt000001")
    report_versions(api, pk, "1.0", "jt000001")
    firmware_id = upload_firmware(api, pk, need_to_verify=True)
    verify = ok(
        c.create_otaverify_job(
            m.CreateOTAVerifyJobRequest(
                product_key=pk,
                firmware_id=firmware_id,
                target_device_name=["jt000001"],
                timeout_in_minutes=30,
            )
        ).body
    ).data
    eventually(lambda: task_statuses(api, verify.job_id), lambda s: "jt000001" in s)
    rows = jobs_of_device(api, pk, "jt000001", firmware_id)
    assert [(r.job_id, r.job_type, r.job_status) for r in rows] == [
        (verify.job_id, "VERFIY_FIRMWARE", "IN_PROGRESS")
    ]


# -- scopes --------------------------------------------------------------------------------


def test_a_dynamic_batch_never_widens_its_scope(api: Deployment) -> None:
    pk = new_product(api)
    register(api, pk, "sc000001")
    firmware_id = upload_firmware(api, pk)
    base = {"ProductKey": pk, "FirmwareId": firmware_id, "SrcVersion.1": "1.0"}
    for scope in (
        {"TargetSelection": "SPECIFIC", "TargetDeviceName.1": "sc000001"},
        {"TargetSelection": "REGION", "Province": "Zhejiang"},
        {"TargetDeviceName.1": "sc000001"},
    ):
        body = api.call_raw("CreateOTADynamicUpgradeJob", {**base, **scope})
        assert (body["Success"], body["Code"]) == (
            False,
            "iot.ota.ScopeNotSupportedForDynamicJob",
        ), scope
    body = api.call_raw("CreateOTADynamicUpgradeJob", {**base, "TargetSelection": "GRAY"})
    assert body["Code"] == "iot.ota.GrayNotSupportedForDynamicJob"
    refused(
        static_job(
            api,
            pk,
            firmware_id,
            target_selection="SPECIFIC",
            target_device_name=["sc000001"],
            src_version=["1.0"],
        ),
        "iot.ota.SrcVersionNotSupportedForSpecificJob",
    )
    assert job_ids(api, firmware_id) == []


def test_the_cli_shows_the_invalid_names_of_a_refused_device_list(
    api: Deployment, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pk = new_product(api)
    register(api, pk, "cl000001", "cl000002")
    firmware_id = upload_firmware(api, pk)
    names = tmp_path / "devices.csv"
    names.write_text("deviceName\ncl000001\nghost0042\ncl000002\nno way\n")
    parser = argparse.ArgumentParser(prog="otaflow")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        [
            "batch",
            "create",
            firmware_id,
            "--product",
            pk,
            "--scope",
            "SPECIFIC",
            "--device-file",
            str(names),
            "--endpoint",
            f"http://127.0.0.1:{api.settings.api_port}",
            "--access-key-id",
            AK,
            "--access-key-secret",
            SK,
        ]
    )
    status = args.func(args)
    out = capsys.readouterr()
    assert status == 1 and "iot.ota.InvalidTargetDeviceName" in out.err
    assert "ghost0042" in out.out and "no way" in out.out and "(2)" in out.out
    assert "cl000001" not in out.out
    assert job_ids(api, firmware_id) == []


# -- rules across batches -----------------------------------------------------------------


def test_multi_module_override_and_dynamic_mix_rules_across_batches(api: Deployment) -> None:
    c = api.client
    pk = new_product(api)
    first = upload_firmware(api, pk, "2.0")
    ok(static_job(api, pk, first, multi_module_mode=True))
    second = upload_firmware(api, pk, "3.0")
    refused(
        static_job(api, pk, second, overwrite_mode=2),
        "iot.ota.MultiModuleModeConflictWithOverwriteMode",
        "OverwriteMode=2",
    )
    refused(
        dynamic_job(api, pk, second, overwrite_mode=2),
        "iot.ota.MultiModuleModeConflictWithOverwriteMode",
    )
    assert job_ids(api, second) == []
    group = ok(
        c.create_device_dynamic_group(
            m.CreateDeviceDynamicGroupRequest(
                group_name="mix_" + pk[-8:], dynamic_group_expression=f'product_key = "{pk}"'
            )
        ).body
    ).data
    ok(dynamic_job(api, pk, second, src_version=["1.0"], multi_module_mode=True))
    third = upload_firmware(api, pk, "4.0")
    refused(
        dynamic_job(
            api,
            pk,
            third,
            src_version=None,
            group_id=group.group_id,
            group_type="LINK_PLATFORM_DYNAMIC",
            multi_module_mode=True,
        ),
        "iot.ota.MultiModuleDynamicJobModeMix",
        "1.0",
    )
    assert job_ids(api, third) == []


# -- tasks ---------------------------------------------------------------------------------


def test_confirm_waits_for_the_schedule_and_reupgrade_asks_again(api: Deployment) -> None:
    c = api.client
    pk = new_product(api)
    register(api, pk, "cf000001", "cf000002")
    report_versions(api, pk, "1.0", "cf000001", "cf000002")
    firmware_id = upload_firmware(api, pk)
    planned = ok(
        static_job(
            api,
            pk,
            firmware_id,
            target_selection="SPECIFIC",
            target_device_name=["cf000001"],
            need_confirm=True,
            schedule_time=now_ms() + 10 * 60_000,
        )
    ).data
    held = eventually(lambda: ok(tasks_of(api, planned.job_id)), lambda b: b.total == 1)
    task_id = held.data.simple_otatask_info[0].task_id
    refused(
        c.confirm_otatask(m.ConfirmOTATaskRequest(task_id=[task_id])).body,
        "iot.ota.NotInScheduleTimeRange",
    )

    other = upload_firmware(api, pk, "3.0")
    job = ok(dynamic_job(api, pk, other, need_confirm=True)).data
    # cf000001 holds the planned batch's task: only cf000002 is taken.
    tasks = eventually(lambda: task_statuses(api, job.job_id), lambda s: "cf000002" in s)
    assert tasks == {"cf000002": "CONFIRM"}
    info = {t.device_name: t for t in ok(tasks_of(api, job.job_id)).data.simple_otatask_info}
    mine = info["cf000002"].task_id
    ok(c.confirm_otatask(m.ConfirmOTATaskRequest(task_id=[mine])).body)
    eventually(
        lambda: task_statuses(api, job.job_id)["cf000002"], lambda s: s in ("QUEUED", "NOTIFIED")
    )
    api.otaflow.report(pk, "cf000002", "PROGRESS", now_ms(), step=-1, desc="boom")
    api.otaflow.flush()
    eventually(lambda: task_statuses(api, job.job_id)["cf000002"], lambda s: s == "FAILED")
    ok(c.reupgrade_otatask(m.ReupgradeOTATaskRequest(job_id=job.job_id, task_id=[mine])).body)
    eventually(lambda: task_statuses(api, job.job_id)["cf000002"], lambda s: s == "CONFIRM")


# -- groups and devices ------------------------------------------------------------------------


def test_dynamic_groups_are_checked_counted_changed_and_deleted(api: Deployment) -> None:
    c = api.client
    pk = new_product(api)
    register(api, pk, "gr000001", "gr000002", province="Zhejiang")
    bad = c.create_device_dynamic_group(
        m.CreateDeviceDynamicGroupRequest(
            group_name="bad_" + pk[-8:], dynamic_group_expression="ota_module.version = '1.0'"
        )
    ).body
    refused(bad, "iot.group.InvalidDynamicGroupExpression", "at 0", "ota_module.name")
    refused(
        c.create_device_dynamic_group(
            m.CreateDeviceDynamicGroupRequest(
                group_name="bad_" + pk[-8:], dynamic_group_expression="status = 'ONLINE'"
            )
        ).body,
        "iot.group.InvalidDynamicGroupExpression",
        "at 0",
    )
    group = ok(
        c.create_device_dynamic_group(
            m.CreateDeviceDynamicGroupRequest(
                group_name="zj_" + pk[-8:],
                dynamic_group_expression=f"product_key = '{pk}' and province = 'Zhejiang'",
            )
        ).body
    ).data
    info = ok(
        c.query_device_group_info(
            m.QueryDeviceGroupInfoRequest(
                group_id=group.group_id, group_type="LINK_PLATFORM_DYNAMIC"
            )
        ).body
    ).data
    assert (info.device_count, info.group_name) == (2, "zj_" + pk[-8:])
    ok(
        c.update_device_group(
            m.UpdateDeviceGroupRequest(
                group_id=group.group_id, group_type="LINK_PLATFORM_DYNAMIC", group_desc="east"
            )
        ).body
    )
    changed = api.call_raw(
        "UpdateDeviceGroup",
        {
            "GroupId": group.group_id,
            "GroupType": "LINK_PLATFORM_DYNAMIC",
            "DynamicGroupExpression": f"product_key = '{pk}' and name = 'gr000001'",
        },
    )
    assert changed["Success"], changed
    info = ok(
        c.query_device_group_info(
            m.QueryDeviceGroupInfoRequest(
                group_id=group.group_id, group_type="LINK_PLATFORM_DYNAMIC"
            )
        ).body
    ).data
    assert (info.device_count, info.group_desc) == (1, "east")
    back = api.call_raw(
        "UpdateDeviceGroup",
        {
            "GroupId": group.group_id,
            "GroupType": "LINK_PLATFORM_DYNAMIC",
            "DynamicGroupExpression": f"product_key = '{pk}' and province = 'Zhejiang'",
        },
    )
    assert back["Success"], back

    # A group-based batch; then the group is deleted: the task stays, nobody new joins.
    report_versions(api, pk, "1.0", "gr000001")
    firmware_id = upload_firmware(api, pk)
    job = ok(
        dynamic_job(
            api,
            pk,
            firmware_id,
            src_version=None,
            group_id=group.group_id,
            group_type="LINK_PLATFORM_DYNAMIC",
        )
    ).data
    eventually(lambda: task_statuses(api, job.job_id), lambda s: set(s) == {"gr000001"})
    ok(
        c.delete_device_dynamic_group(
            m.DeleteDeviceDynamicGroupRequest(group_id=group.group_id)
        ).body
    )
    refused(
        c.query_device_group_info(m.QueryDeviceGroupInfoRequest(group_id=group.group_id)).body,
        "iot.group.GroupNotExist",
    )
    assert set(task_statuses(api, job.job_id)) == {"gr000001"}
    # gr000002 is in the province; had the group lived, its version would match it.
    report_versions(api, pk, "1.0", "gr000002")
    reply = pull_reply(api, pk, "gr000002", "g1")
    assert reply["task_id"] is None
    assert set(task_statuses(api, job.job_id)) == {"gr000001"}

    parent = ok(c.create_device_group(m.CreateDeviceGroupRequest(group_name="sp_" + pk[-8:])).body)
    child = ok(
        c.create_device_group(
            m.CreateDeviceGroupRequest(
                group_name="sc_" + pk[-8:], super_group_id=parent.data.group_id
            )
        ).body
    )
    refused(
        c.delete_device_group(m.DeleteDeviceGroupRequest(group_id=parent.data.group_id)).body,
        "iot.group.GroupHasSubGroup",
    )
    ok(c.delete_device_group(m.DeleteDeviceGroupRequest(group_id=child.data.group_id)).body)
    ok(c.delete_device_group(m.DeleteDeviceGroupRequest(group_id=parent.data.group_id)).body)


def _same_partition_names(api: Deployment, pk: str, prefix: str, n: int) -> list[str]:
    """``n`` device names whose devices live on one partition."""
    first = f"{prefix}000000"
    wanted = partition_for(device_key(pk, first).encode(), api.settings.partitions)
    names = [first]
    i = 1
    while len(names) < n:
        name = f"{prefix}{i:06d}"
        if partition_for(device_key(pk, name).encode(), api.settings.partitions) == wanted:
            names.append(name)
        i += 1
    return names


def test_batch_register_device_and_delete_device(api: Deployment) -> None:
    c = api.client
    pk = new_product(api)
    apply_id = ok(
        c.batch_register_device(m.BatchRegisterDeviceRequest(product_key=pk, count=3)).body
    ).data.apply_id
    status = ok(
        c.query_batch_register_device_status(
            m.QueryBatchRegisterDeviceStatusRequest(product_key=pk, apply_id=apply_id)
        ).body
    ).data
    assert status.status == "CREATE_SUCCESS" and len(status.valid_list.name) == 3
    page = ok(
        c.query_page_by_apply_id(
            m.QueryPageByApplyIdRequest(apply_id=apply_id, current_page=1, page_size=10)
        ).body
    )
    assert sorted(d.device_name for d in page.apply_device_list.apply_device_info) == sorted(
        status.valid_list.name
    )

    gone, kept = _same_partition_names(api, pk, "dd", 2)
    register(api, pk, gone, kept)
    report_versions(api, pk, "1.0", gone, kept)
    detail = ok(
        c.query_device_detail(m.QueryDeviceDetailRequest(product_key=pk, device_name=gone)).body
    ).data
    ok(c.delete_device(m.DeleteDeviceRequest(iot_id=detail.iot_id)).body)
    refused(
        c.query_device_detail(m.QueryDeviceDetailRequest(product_key=pk, device_name=gone)).body,
        "iot.device.DeviceNotExist",
    )
    firmware_id = upload_firmware(api, pk)
    job = ok(static_job(api, pk, firmware_id)).data
    # One partition applies a START whole: once `kept` has its task, `gone` had its chance.
    statuses = eventually(lambda: task_statuses(api, job.job_id), lambda s: kept in s)
    assert gone not in statuses


def test_phased_percentage_is_of_the_devices_the_batch_could_update(api: Deployment) -> None:
    pk = new_product(api)
    names = [f"ph{i:04d}" for i in range(10)]
    register(api, pk, *names)
    # Four devices on the source version, three already on the destination, three on
    # another version: 50% of the four the batch could update is two, not five.
    report_versions(api, pk, "1.0", *names[:4])
    report_versions(api, pk, "2.0", *names[4:7])
    report_versions(api, pk, "0.1", *names[7:])
    # Once the engine has applied every report (each device's firmware/get after its
    # version report is answered), the phased batch starts.
    for name in names:
        api.otaflow.report(pk, name, "FIRMWARE_GET", now_ms(), message_id=f"p-{name}")
    api.otaflow.flush()
    api.otaflow.notifications().wait_for(
        lambda v: (
            {n["reply_to"] for n in v if n["kind"] == "PULL_REPLY"}
            >= {f"p-{name}" for name in names}
        ),
        what="the replies",
    )
    firmware_id = upload_firmware(api, pk, "2.0")
    gray = ok(
        static_job(
            api, pk, firmware_id, target_selection="GRAY", gray_percent="50", src_version=["1.0"]
        )
    ).data
    tasks = eventually(lambda: task_statuses(api, gray.job_id), lambda s: len(s) >= 2)
    assert len(tasks) == 2 and set(tasks) <= set(names[:4])
    detail = api.call_raw("QueryOTAJob", {"JobId": gray.job_id})["Data"]
    assert (detail["TargetSelection"], detail["GrayPercent"], detail["TargetDeviceCount"]) == (
        "GRAY",
        "50",
        2,
    )
