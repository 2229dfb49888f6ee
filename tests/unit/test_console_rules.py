"""The console doc's rules (issue 12) on the pure control plane and the device engine."""

from __future__ import annotations

from typing import Any

import pytest

from otaflow.domain.batches import BatchScope
from otaflow.domain.groups import parse_expression, pinned_products
from otaflow.domain.phased import pick, quotas
from otaflow.domain.simulation import Partition, dynamic_batch, make_batch
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
        NeedToVerify=False,
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


# -- dynamic groups ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "where"),
    [
        ("province = 'Zhejiang' AND status = 'ONLINE'", "at 26"),
        ("province < 'Z'", "at 9"),
        ("province = 'Zhejiang' AND", "at 25"),
        ("ota_module.version = '1.0'", "ota_module.version at 0 needs ota_module.name"),
        ("city = 'x' or ota_module.name = 'mcu'", "ota_module.name at 14 needs"),
    ],
)
def test_a_dynamic_group_expression_is_checked_when_created(
    world: World, expression: str, where: str
) -> None:
    err = world.refused(
        "CreateDeviceDynamicGroup", GroupName="grp_bad", DynamicGroupExpression=expression
    )
    assert err.code == "iot.group.InvalidDynamicGroupExpression" and where in err.message


def test_a_dynamic_group_is_changed_counted_and_deleted(world: World) -> None:
    world.call("RegisterDevice", ProductKey=world.pk, DeviceName="north01", Province="Zhejiang")
    world.call("RegisterDevice", ProductKey=world.pk, DeviceName="north02", Province="Zhejiang")
    created = world.call(
        "CreateDeviceDynamicGroup",
        GroupName="grp_zj",
        DynamicGroupExpression="province = 'Zhejiang'",
    )
    gid = created.data["GroupId"]
    info = world.call("QueryDeviceGroupInfo", GroupId=gid, GroupType="LINK_PLATFORM_DYNAMIC")
    assert info.read_only and info.data["DeviceCount"] == 2
    assert info.data["DynamicGroupExpression"] == "province = 'Zhejiang'"
    # GroupId is unique: without GroupType the group is found; a wrong GroupType is refused.
    assert world.call("QueryDeviceGroupInfo", GroupId=gid).data["GroupType"] == (
        "LINK_PLATFORM_DYNAMIC"
    )
    wrong = world.refused("QueryDeviceGroupInfo", GroupId=gid, GroupType="LINK_PLATFORM")
    assert wrong.code == "iot.group.GroupTypeMismatch"
    # Changing the expression (otaflow's extra on UpdateDeviceGroup) is checked too.
    bad = world.refused(
        "UpdateDeviceGroup",
        GroupId=gid,
        GroupType="LINK_PLATFORM_DYNAMIC",
        DynamicGroupExpression="name ~ 'x'",
    )
    assert bad.code == "iot.group.InvalidDynamicGroupExpression" and "at 5" in bad.message
    changed = world.call(
        "UpdateDeviceGroup",
        GroupId=gid,
        GroupType="LINK_PLATFORM_DYNAMIC",
        GroupDesc="north",
        DynamicGroupExpression="name = 'north01'",
    )
    [(schema, control)] = changed.broadcasts
    assert (schema, control["expression"], control["deleted"]) == (
        "GroupControl",
        "name = 'north01'",
        False,
    )
    info = world.call("QueryDeviceGroupInfo", GroupId=gid, GroupType="LINK_PLATFORM_DYNAMIC")
    assert (info.data["DeviceCount"], info.data["GroupDesc"]) == (1, "north")
    batch = world.call(
        "CreateOTADynamicUpgradeJob",
        **static(world, GroupId=gid, GroupType="LINK_PLATFORM_DYNAMIC"),
    ).data["JobId"]
    # Deleting keeps the batch (and its tasks) and tells every partition: no new matches.
    deleted = world.call("DeleteDeviceDynamicGroup", GroupId=gid)
    assert [(s, c["deleted"]) for s, c in deleted.broadcasts] == [("GroupControl", True)]
    assert world.call("QueryOTAJob", JobId=batch).data["JobStatus"] == "IN_PROGRESS"
    assert world.refused("QueryDeviceGroupInfo", GroupId=gid).code == "iot.group.GroupNotExist"
    fw2 = package(world, "fw_rules_d", "5.0")
    err = world.refused(
        "CreateOTADynamicUpgradeJob",
        ProductKey=world.pk,
        FirmwareId=fw2,
        GroupId=gid,
        GroupType="LINK_PLATFORM_DYNAMIC",
    )
    assert err.code == "iot.group.GroupNotExist"


def test_a_static_group_is_counted_and_deleted_with_its_relations(world: World) -> None:
    parent = world.call("CreateDeviceGroup", GroupName="grp_parent").data["GroupId"]
    child = world.call("CreateDeviceGroup", GroupName="grp_child", SuperGroupId=parent).data[
        "GroupId"
    ]
    world.call(
        "BatchAddDeviceGroupRelations",
        GroupId=parent,
        Device__1__ProductKey=world.pk,
        Device__1__DeviceName="dev0001",
        Device__2__ProductKey=world.pk,
        Device__2__DeviceName="dev0002",
    )
    assert world.call("QueryDeviceGroupInfo", GroupId=parent).data["DeviceCount"] == 2
    err = world.refused("DeleteDeviceGroup", GroupId=parent)
    assert err.code == "iot.group.GroupHasSubGroup"
    world.call("DeleteDeviceGroup", GroupId=child)
    out = world.call("DeleteDeviceGroup", GroupId=parent)
    assert sorted(i.device_name for i in out.device_items) == ["dev0001", "dev0002"]
    assert all(i.record["groups"] == [] for i in out.device_items)
    assert world.store.get(f"device/{world.pk}/dev0001")["groups"] == []  # type: ignore[index]


# -- devices -----------------------------------------------------------------------------------


def test_batch_register_device_registers_count_random_names(world: World) -> None:
    out = world.call("BatchRegisterDevice", ProductKey=world.pk, Count=3)
    apply_id = out.data["ApplyId"]
    status = world.call("QueryBatchRegisterDeviceStatus", ProductKey=world.pk, ApplyId=apply_id)
    assert status.data["Status"] == "CREATE_SUCCESS"
    names = status.data["ValidList"]["Name"]
    assert len(set(names)) == 3
    assert [i.record["action"] for i in out.device_items] == ["REGISTER"] * 3
    page = world.call("QueryPageByApplyId", ApplyId=apply_id, PageSize=10)
    assert sorted(
        r["DeviceName"] for r in page.top["ApplyDeviceList"]["ApplyDeviceInfo"]
    ) == sorted(names)
    for bad in (0, 10_001):
        assert world.refused("BatchRegisterDevice", ProductKey=world.pk, Count=bad).code == (
            "iot.common.InvalidFormattedParameter"
        )


def test_delete_device_removes_it_from_registry_groups_and_matching(world: World) -> None:
    group = world.call("CreateDeviceGroup", GroupName="grp_del").data["GroupId"]
    world.call(
        "BatchAddDeviceGroupRelations",
        GroupId=group,
        Device__1__ProductKey=world.pk,
        Device__1__DeviceName="dev0003",
    )
    iot_id = world.call("QueryDeviceDetail", ProductKey=world.pk, DeviceName="dev0003").data[
        "IotId"
    ]
    out = world.call("DeleteDevice", IotId=iot_id)
    [item] = out.device_items
    assert (item.schema, item.record["action"]) == ("DeviceRegistration", "DELETE")
    err = world.refused("QueryDeviceDetail", ProductKey=world.pk, DeviceName="dev0003")
    assert err.code == "iot.device.DeviceNotExist"
    assert world.call("QueryDeviceGroupInfo", GroupId=group).data["DeviceCount"] == 0
    # A batch on named devices no longer accepts it.
    err = world.refused(
        "CreateOTAStaticUpgradeJob",
        **static(world, TargetSelection="SPECIFIC", TargetDeviceName__1="dev0003"),
    )
    assert err.code == "iot.ota.InvalidTargetDeviceName"
    # The device partition drops its state and cancels its unfinished task.
    t = 1_000_000
    p = Partition()
    p.register("dev0003", t)
    p.start(dynamic_batch("V", ["1.0"], at=t))
    p.version("dev0003", "1.0", t + 1)
    p.register("dev0003", t + 2, action="DELETE")
    assert not p.has_device("dev0003") and p.history("dev0003") == ["QUEUED", "CANCELED"]


def test_a_group_pinned_to_a_product_is_counted_over_that_product_only() -> None:
    assert pinned_products(parse_expression("product_key = 'a' and city = 'x'")) == {"a"}
    assert pinned_products(parse_expression("product_key in ('a', 'b')")) == {"a", "b"}
    assert pinned_products(parse_expression("product_key = 'a' or city = 'x'")) is None
    assert pinned_products(parse_expression("city = 'x'")) is None


# -- phased: a percentage of the devices the batch could update ------------------------------


def test_phased_quotas_add_up_and_never_exceed_a_partition() -> None:
    assert quotas(3, {0: 5, 1: 5}) == {0: 2, 1: 1}
    assert quotas(7, {0: 1, 1: 2, 2: 10}) == {0: 1, 1: 1, 2: 5}
    assert quotas(1, {0: 0, 1: 1}) == {0: 0, 1: 1}
    assert quotas(5, {0: 0, 1: 0}) == {0: 0, 1: 0}
    for total in range(0, 14):
        shares = quotas(total, {0: 1, 1: 2, 2: 10})
        assert sum(shares.values()) == min(total, 13)
        assert all(shares[p] <= n for p, n in {0: 1, 1: 2, 2: 10}.items())


def test_phased_count_waits_for_every_partition_then_sends_the_shares() -> None:
    w = World()
    w.plane.device_partitions = 3
    w.pk = w.call("CreateProduct", ProductName="prod_phase", NodeType=0).top["ProductKey"]
    w.fw = package(w, "fw_phase", "2.0")
    job = w.call(
        "CreateOTAStaticUpgradeJob",
        ProductKey=w.pk,
        FirmwareId=w.fw,
        TargetSelection="GRAY",
        GrayPercent="33.333",
    ).data["JobId"]

    def count(partition: int, eligible: int) -> Any:
        params = {"batch_id": job, "partition": str(partition), "eligible": str(eligible)}
        outcome = w.plane.handle("otaflow.PhasedCount", params, f"count-{partition}", NOW)
        w.store.apply(outcome.writes)
        return outcome

    assert count(0, 4).partition_items == []
    assert count(0, 4).read_only  # a partition's repeated count changes nothing
    assert count(1, 0).partition_items == []
    last = count(2, 5)
    # floor(9 x 33.333%) = 2 over the devices the batch could update, not the registry.
    quotas_sent = [(p, r["quota"]) for p, s, r in last.partition_items if s == "PhasedQuota"]
    assert quotas_sent == [(0, 1), (2, 1)]
    # Then every partition is asked for its open tasks (how the batch completes).
    assert [(p, s) for p, s, _ in last.partition_items[2:]] == [
        (0, "OpenTaskProbe"),
        (1, "OpenTaskProbe"),
        (2, "OpenTaskProbe"),
    ]
    assert w.call("QueryOTAJob", JobId=job).data["TargetDeviceCount"] == 2
    # The API cannot call it: it is no operation of the platform's.
    assert not w.plane.supports("otaflow.PhasedCount")


def test_a_partition_counts_its_updatable_devices_and_gives_its_share_tasks() -> None:
    t = 1_000_000
    p = Partition()
    for i in range(6):
        p.version(f"d{i}", "1.0", t)
    p.version("latest", "2.0", t)  # already on the destination: not updatable
    p.version("old", "0.5", t)  # not on a source version
    batch = make_batch(
        "G",
        at=t + 1,
        scope=BatchScope.PHASED,
        src_versions=("1.0",),
        phased_percent_thousandths=50_000,
    )
    fx = p.start(batch)
    assert fx.control_reports == [
        ("PhasedCount", {"batch_id": "G", "partition": 0, "eligible": 6, "event_time": t + 1})
    ]
    assert p.events == []  # no task before the control plane's share
    p.apply("PhasedQuota", {"batch_id": "G", "quota": 3, "event_time": t + 2})
    got = sorted(e["device_name"] for e in p.events)
    assert got == sorted(pick("G", [f"d{i}" for i in range(6)], 3))
    assert {e["status"] for e in p.events} == {"QUEUED"}
