"""The console doc's rules (issue 12) on the pure control plane and the device engine."""

from __future__ import annotations

from typing import Any

import pytest

from otaflow.domain.simulation import Partition, dynamic_batch
from tests.unit.test_control_plane import MIN, NOW, World

LIST_URL = "http://x/packages/list.csv"


@pytest.fixture
def world() -> World:
    w = World()
    w.pk = w.call("CreateProduct", ProductName="prod_rules", NodeType=0).top["ProductKey"]
    for i in range(10):
        w.call("RegisterDevice", ProductKey=w.pk, DeviceName=f"dev{i:04d}")
    w.fw = package(w, "fw_rules", "2.0")
    return w


def package(w: World, name: str, version: str, **extra: Any) -> str:
    out = w.call(
        "CreateOTAFirmware",
        ProductKey=w.pk,
        FirmwareName=name,
        DestVersion=version,
        FirmwareUrl=f"http://x/packages/{name}.bin",
        FirmwareSign="abc",
        FirmwareSize=10,
        **extra,
    )
    return str(out.data["FirmwareId"])


def static(w: World, **params: Any) -> dict[str, Any]:
    return {"ProductKey": w.pk, "FirmwareId": w.fw, **params}


# -- scopes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scope",
    [
        {"TargetSelection": "SPECIFIC", "TargetDeviceName__1": "dev0001"},
        {"TargetSelection": "REGION", "Province": "Zhejiang"},
        {"Province": "Zhejiang"},
        {"TargetDeviceName__1": "dev0001"},
        {"DnListFileUrl": LIST_URL},
    ],
)
def test_a_dynamic_batch_refuses_a_scope_it_cannot_keep(
    world: World, scope: dict[str, str]
) -> None:
    err = world.refused("CreateOTADynamicUpgradeJob", **static(world, SrcVersion__1="1.0", **scope))
    assert err.code == "iot.ota.ScopeNotSupportedForDynamicJob"


def test_a_dynamic_batch_refuses_phased(world: World) -> None:
    for scope in ({"TargetSelection": "GRAY"}, {"GrayPercent": "50"}):
        err = world.refused(
            "CreateOTADynamicUpgradeJob", **static(world, SrcVersion__1="1.0", **scope)
        )
        assert err.code == "iot.ota.GrayNotSupportedForDynamicJob"


def test_a_dynamic_batch_by_version_still_covers_the_product(world: World) -> None:
    out = world.call(
        "CreateOTADynamicUpgradeJob", **static(world, SrcVersion__1="1.0", TargetSelection="ALL")
    )
    assert out.batches[0]["scope"] == "ALL" and out.batches[0]["src_versions"] == ["1.0"]


def test_source_versions_are_refused_on_a_specific_batch(world: World) -> None:
    err = world.refused(
        "CreateOTAStaticUpgradeJob",
        **static(
            world, TargetSelection="SPECIFIC", TargetDeviceName__1="dev0001", SrcVersion__1="1.0"
        ),
    )
    assert err.code == "iot.ota.SrcVersionNotSupportedForSpecificJob"
    # ... while an ALL batch keeps its source-version filter.
    out = world.call(
        "CreateOTAStaticUpgradeJob", **static(world, TargetSelection="ALL", SrcVersion__1="1.0")
    )
    assert out.batches[0]["src_versions"] == ["1.0"]


def test_a_device_list_with_invalid_names_refuses_the_batch_and_lists_them(world: World) -> None:
    world.files[LIST_URL] = "deviceName\ndev0001\nghost01\ndev0002\nb@d name\n"
    err = world.refused(
        "CreateOTAStaticUpgradeJob",
        **static(world, TargetSelection="SPECIFIC", DnListFileUrl=LIST_URL),
    )
    assert err.code == "iot.ota.InvalidTargetDeviceName"
    assert "ghost01" in err.message and "b@d name" in err.message
    listed = world.call(
        "ListOTAJobInvalidDeviceNames", DnListFileUrl=LIST_URL, ProductKey=world.pk, PageSize=1
    )
    assert listed.read_only
    assert (listed.data["DeviceNames"], listed.top["Total"]) == (["ghost01"], 2)
    second = world.call(
        "ListOTAJobInvalidDeviceNames",
        DnListFileUrl=LIST_URL,
        ProductKey=world.pk,
        PageSize=1,
        CurrentPage=2,
    )
    assert second.data["DeviceNames"] == ["b@d name"]
    # Corrected, the same file starts a batch.
    world.files[LIST_URL] = "deviceName\ndev0001\ndev0002\n"
    out = world.call(
        "CreateOTAStaticUpgradeJob",
        **static(world, TargetSelection="SPECIFIC", DnListFileUrl=LIST_URL),
    )
    assert out.targets[0].device_names == ["dev0001", "dev0002"]


# -- rules across batches -----------------------------------------------------------------


def test_multi_module_and_override_cannot_run_side_by_side_for_one_product(world: World) -> None:
    first = world.call(
        "CreateOTAStaticUpgradeJob", **static(world, TargetSelection="ALL", MultiModuleMode="true")
    )
    err = world.refused(
        "CreateOTAStaticUpgradeJob", **static(world, TargetSelection="ALL", OverwriteMode=2)
    )
    assert err.code == "iot.ota.MultiModuleModeConflictWithOverwriteMode"
    assert first.data["JobId"] in err.message
    err = world.refused(
        "CreateOTADynamicUpgradeJob", **static(world, SrcVersion__1="1.0", OverwriteMode=2)
    )
    assert err.code == "iot.ota.MultiModuleModeConflictWithOverwriteMode"
    # The other way round too; and once the first batch is canceled, override is fine.
    world.call("CancelOTATaskByJob", JobId=first.data["JobId"], CancelQueuedTask="true")
    world.store.data[f"batch/{first.data['JobId']}"]["status"] = "CANCELED"
    over = world.call(
        "CreateOTAStaticUpgradeJob", **static(world, TargetSelection="ALL", OverwriteMode=2)
    )
    assert over.batches[0]["overwrite_mode"] == 2
    err = world.refused(
        "CreateOTAStaticUpgradeJob", **static(world, TargetSelection="ALL", MultiModuleMode="true")
    )
    assert err.code == "iot.ota.MultiModuleModeConflictWithOverwriteMode"


def test_multi_module_version_and_group_dynamic_batches_cannot_mix(world: World) -> None:
    group = world.call(
        "CreateDeviceDynamicGroup",
        GroupName="grp_all",
        DynamicGroupExpression=f"product_key = '{world.pk}'",
    ).data["GroupId"]
    by_group = {"GroupId": group, "GroupType": "LINK_PLATFORM_DYNAMIC"}
    # Without multi-module they may be mixed (the console doc's rule is for multi-module).
    world.call("CreateOTADynamicUpgradeJob", **static(world, SrcVersion__1="1.0"))
    fw_b = package(world, "fw_rules_b", "3.0")
    world.call("CreateOTADynamicUpgradeJob", ProductKey=world.pk, FirmwareId=fw_b, **by_group)
    # A multi-module one for a version the group-based batch covers (a full package
    # covers every version) is refused, and so is a multi-module group-based one.
    fw_c = package(world, "fw_rules_c", "4.0")
    other_group = world.call(
        "CreateDeviceDynamicGroup", GroupName="grp_two", DynamicGroupExpression="city = 'x'"
    ).data["GroupId"]
    for scope in (
        {"SrcVersion__1": "1.5"},
        {"GroupId": other_group, "GroupType": "LINK_PLATFORM_DYNAMIC"},
    ):
        err = world.refused(
            "CreateOTADynamicUpgradeJob",
            ProductKey=world.pk,
            FirmwareId=fw_c,
            MultiModuleMode="true",
            **scope,
        )
        assert err.code == "iot.ota.MultiModuleDynamicJobModeMix"


def test_version_based_multi_module_after_a_group_based_one_is_refused(world: World) -> None:
    group = world.call(
        "CreateDeviceDynamicGroup",
        GroupName="grp_all",
        DynamicGroupExpression=f"product_key = '{world.pk}'",
    ).data["GroupId"]
    world.call(
        "CreateOTADynamicUpgradeJob",
        **static(world, GroupId=group, GroupType="LINK_PLATFORM_DYNAMIC", MultiModuleMode="true"),
    )
    fw2 = package(world, "fw_rules_b", "3.0")
    err = world.refused(
        "CreateOTADynamicUpgradeJob",
        ProductKey=world.pk,
        FirmwareId=fw2,
        SrcVersion__1="1.0",
        MultiModuleMode="true",
    )
    assert err.code == "iot.ota.MultiModuleDynamicJobModeMix"


# -- tasks ---------------------------------------------------------------------------------


def test_confirm_is_refused_outside_a_scheduled_batchs_window(world: World) -> None:
    start, end = NOW + 10 * MIN, NOW + 10 * MIN + 60 * MIN
    job = world.call(
        "CreateOTAStaticUpgradeJob",
        **static(
            world,
            TargetSelection="ALL",
            NeedConfirm="true",
            ScheduleTime=start,
            ScheduleFinishTime=end,
        ),
    ).data["JobId"]
    params = {"TaskId.1": "t1", "_TaskDevice.1": f"{world.pk}/dev0001/{job}"}
    for at in (NOW, end, end + MIN):
        with pytest.raises(Exception) as caught:
            world.plane.handle("ConfirmOTATask", params, "req-c", at)
        assert getattr(caught.value, "code", None) == "iot.ota.NotInScheduleTimeRange"
    out = world.plane.handle("ConfirmOTATask", params, "req-c", start + MIN)
    assert [i.record["action"] for i in out.device_items] == ["CONFIRM"]


def test_reupgrade_of_a_batch_that_needs_confirmation_goes_back_to_confirm() -> None:
    t = 1_000_000
    p = Partition()
    p.start(dynamic_batch("V", ["1.0"], at=t, need_confirm=True))
    p.version("d1", "1.0", t + 1)
    task_id = p.state("d1").tasks[0].task_id
    p.command("CONFIRM", "d1", t + 2, task_ids=[task_id])
    p.release(t + 3)
    p.progress("d1", -1, t + 4)
    assert p.tasks("d1") == [("V", "FAILED")]
    p.command("REUPGRADE", "d1", t + 5, task_ids=[task_id])
    assert p.tasks("d1") == [("V", "CONFIRM")] and not p.push_queue
    p.ask("d1", t + 6)
    assert p.notifications[-1]["task_id"] is None  # not handed out before confirmation
    p.command("CONFIRM", "d1", t + 7, task_ids=[task_id])
    assert p.tasks("d1") == [("V", "QUEUED")] and len(p.push_queue) == 1
