"""The console's rules through the official SDK: every refused create leaves nothing
behind, group rules and edits, two concurrent dynamic batches for one package.

Shared deployment (``conftest.py``, one for the package) and helpers:
``tests/integration/api_support.py``.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from alibabacloud_iot20180120 import models as m

from tests.integration.api_support import (
    SK,
    Deployment,
    device_items,
    dynamic_job,
    job_ids,
    new_product,
    now_ms,
    ok,
    refused,
    register,
    static_job,
    upload_firmware,
)
from tests.integration.uploads import post_object

pytestmark = pytest.mark.integration


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
