"""The pure control plane: rules, outcomes and reads, on an in-memory store."""

from __future__ import annotations

from typing import Any

import pytest

from otaflow.api.views import TaskView
from otaflow.control import rules
from otaflow.control.common import DictStore, Outcome
from otaflow.control.errors import ApiError
from otaflow.control.jobs import parse_name_list, pick_phased
from otaflow.control.plane import ControlPlane

NOW = 1_800_000_000_000
MIN = 60_000


class World:
    def __init__(self, files: dict[str, str] | None = None) -> None:
        self.store = DictStore()
        self.files = files or {}
        self.plane = ControlPlane(self.store, lambda url: url.rsplit("/", 1)[-1], self.read)
        self.n = 0
        self.pk = ""
        self.fw = ""

    def read(self, url: str) -> str:
        if url not in self.files:
            raise FileNotFoundError(url)
        return self.files[url]

    def call(self, action: str, **params: Any) -> Outcome:
        self.n += 1
        flat = {k.replace("__", "."): str(v) for k, v in params.items()}
        outcome = self.plane.handle(action, flat, f"req-{self.n}", NOW)
        self.store.apply(outcome.writes)
        return outcome

    def refused(self, action: str, **params: Any) -> ApiError:
        before = dict(self.store.data)
        with pytest.raises(ApiError) as caught:
            self.call(action, **params)
        assert self.store.data == before  # nothing written
        return caught.value


@pytest.fixture
def world() -> World:
    w = World()
    pk = w.call("CreateProduct", ProductName="prod_one", NodeType=0).top["ProductKey"]
    w.pk = pk
    for i in range(10):
        w.call("RegisterDevice", ProductKey=pk, DeviceName=f"dev{i:04d}")
    fw = w.call(
        "CreateOTAFirmware",
        ProductKey=pk,
        FirmwareName="fw_one",
        DestVersion="2.0",
        FirmwareUrl="http://x/packages/fw.bin",
        FirmwareSign="abc",
        FirmwareSize=10,
        NeedToVerify="false",
    )
    w.fw = fw.data["FirmwareId"]
    return w


def test_gray_percent_is_exact_thousandths_and_rounds_down() -> None:
    assert rules.gray_percent("33.333") == 33333
    assert rules.gray_percent("100") == 100000
    assert rules.phased_count(10, 33333) == 3
    assert rules.phased_count(10, 1) == 1  # at least one device
    assert rules.phased_count(0, 50000) == 0
    for bad in ("12.3456", "0", "100.001", "-1", "abc", "1e2"):
        with pytest.raises(ApiError) as caught:
            rules.gray_percent(bad)
        assert caught.value.code == "iot.ota.InvalidGrayPercent"


def test_retry_and_schedule_windows() -> None:
    assert rules.retry_policy({"RetryInterval": "30", "RetryCount": "2"}, 60) == (30, 2)
    assert rules.retry_policy({}, None) == (None, 0)
    with pytest.raises(ApiError, match="less than"):
        rules.retry_policy({"RetryInterval": "60", "RetryCount": "1"}, 60)
    start = NOW + 5 * MIN
    assert rules.schedule({"ScheduleTime": str(start)}, NOW, True) == (start, None)
    with pytest.raises(ApiError) as caught:
        rules.schedule({"ScheduleTime": str(start - 1)}, NOW, True)
    assert caught.value.code == "iot.ota.InvalidScheduleTime"
    end_ok = start + 30 * 24 * 60 * MIN
    assert rules.schedule(
        {"ScheduleTime": str(start), "ScheduleFinishTime": str(end_ok)}, NOW, True
    )
    with pytest.raises(ApiError) as caught:
        rules.schedule(
            {"ScheduleTime": str(start), "ScheduleFinishTime": str(end_ok + 1)}, NOW, True
        )
    assert caught.value.code == "iot.ota.InvalidScheduleFinishTime"


def test_name_list_parsing_and_phased_pick_are_deterministic() -> None:
    assert parse_name_list('DeviceName\r\n"a1",x\n\n b2 \n') == ["a1", "b2"]
    names = [f"d{i}" for i in range(100)]
    picked = pick_phased("job", names, 7)
    assert len(picked) == 7 and picked == pick_phased("job", list(reversed(names)), 7)
    assert picked != pick_phased("other-job", names, 7)


def test_registration_goes_to_the_device_partition_record(world: World) -> None:
    out = world.call(
        "RegisterDevice", ProductKey=world.pk, DeviceName="north01", Province="Zhejiang"
    )
    [item] = out.device_items
    assert (item.schema, item.record["action"], item.record["province"]) == (
        "DeviceRegistration",
        "REGISTER",
        "Zhejiang",
    )
    err = world.refused("RegisterDevice", ProductKey=world.pk, DeviceName="north01")
    assert err.code == "iot.device.DeviceNameAlreadyExist"


def test_targeted_file_batch_targets_the_names_of_a_clean_file(world: World) -> None:
    world.files["http://x/packages/list.csv"] = "dev0001\ndev0002\ndev0001\n"
    out = world.call(
        "CreateOTAStaticUpgradeJob",
        ProductKey=world.pk,
        FirmwareId=world.fw,
        TargetSelection="SPECIFIC",
        DnListFileUrl="http://x/packages/list.csv",
    )
    [targets] = out.targets
    assert targets.device_names == ["dev0001", "dev0002"]
    job_id = out.data["JobId"]
    assert out.controls[0]["action"] == "START" and out.controls[0]["batch"]["scope"] == "TARGETED"
    assert world.call("QueryOTAJob", JobId=job_id).read_only


def test_phased_batch_starts_on_every_partition_without_naming_devices(world: World) -> None:
    out = world.call(
        "CreateOTAStaticUpgradeJob",
        ProductKey=world.pk,
        FirmwareId=world.fw,
        TargetSelection="GRAY",
        GrayPercent="25.5",
    )
    assert out.targets == []  # the partitions count and get their shares (test_console_rules)
    assert out.controls[0]["action"] == "START"
    assert out.batches[0]["phased_percent_thousandths"] == 25500


def test_one_dynamic_batch_per_package_until_canceled(world: World) -> None:
    params = {"ProductKey": world.pk, "FirmwareId": world.fw, "SrcVersion__1": "1.0"}
    first = world.call("CreateOTADynamicUpgradeJob", **params)
    assert world.refused("CreateOTADynamicUpgradeJob", **params).code == (
        "iot.ota.DynamicJobAlreadyExist"
    )
    cancel = world.call("CancelOTAStrategyByJob", JobId=first.data["JobId"])
    assert cancel.controls[0]["action"] == "CANCEL_STRATEGY"
    assert world.call("CreateOTADynamicUpgradeJob", **params).data["JobId"] != first.data["JobId"]


def test_update_keeps_the_rate_type_and_refuses_edits_that_are_not_allowed(world: World) -> None:
    job = world.call(
        "CreateOTAStaticUpgradeJob",
        ProductKey=world.pk,
        FirmwareId=world.fw,
        TargetSelection="ALL",
        MaximumPerMinute=100,
    ).data["JobId"]
    base = {"JobId": job, "UpgradeType": "STATIC", "TargetSelection": "ALL"}
    err = world.refused("UpdateOTAJob", **base, MaximumPerMinute=100, RateType="variable")
    assert err.code == "iot.ota.RateTypeChangeNotAllowed"
    assert world.refused("UpdateOTAJob", **base, MaximumPerMinute=5).code == (
        "iot.ota.InvalidConstantRate"
    )
    err = world.refused("UpdateOTAJob", **base, MaximumPerMinute=100, SrcVersionList__1="1.0")
    assert err.code == "iot.ota.SrcVersionNotEditable"
    out = world.call(
        "UpdateOTAJob", **base, MaximumPerMinute=300, Tags__1__Key="a", Tags__1__Value="b"
    )
    assert out.controls[0]["action"] == "UPDATE"
    assert out.controls[0]["batch"]["rate"]["max_rate"] == 300
    assert out.controls[0]["batch"]["tags"] == {"a": "b"}


def test_maximum_per_minute_takes_10_to_10000_even_without_push(world: World) -> None:
    """The SDK: MaximumPerMinute "Valid values: 10 to 10000", NeedPush or not."""
    for rate in (5, 0, 10001):
        for push in ("true", "false"):
            err = world.refused(
                "CreateOTAStaticUpgradeJob",
                ProductKey=world.pk,
                FirmwareId=world.fw,
                TargetSelection="ALL",
                NeedPush=push,
                MaximumPerMinute=rate,
            )
            assert err.code == "iot.ota.InvalidConstantRate", (rate, push)
    silent = world.call(
        "CreateOTAStaticUpgradeJob",
        ProductKey=world.pk,
        FirmwareId=world.fw,
        TargetSelection="ALL",
        NeedPush="false",
        MaximumPerMinute=10,
    ).data["JobId"]
    base = {"JobId": silent, "UpgradeType": "STATIC", "TargetSelection": "ALL"}
    err = world.refused("UpdateOTAJob", **base, MaximumPerMinute=5)
    assert err.code == "iot.ota.InvalidConstantRate"
    out = world.call("UpdateOTAJob", **base, MaximumPerMinute=20)
    assert out.controls[0]["batch"]["rate"] is None  # checked, and still no push


def test_cancel_by_job_maps_flags_to_statuses(world: World) -> None:
    job = world.call(
        "CreateOTAStaticUpgradeJob",
        ProductKey=world.pk,
        FirmwareId=world.fw,
        TargetSelection="ALL",
    ).data["JobId"]
    out = world.call("CancelOTATaskByJob", JobId=job, CancelQueuedTask="True")
    assert out.controls[0]["cancel_statuses"] == ["QUEUED", "CONFIRM"]
    out = world.call(
        "CancelOTATaskByJob", JobId=job, CancelQueuedTask="True", CancelUnconfirmedTask="False"
    )
    assert out.controls[0]["cancel_statuses"] == ["QUEUED"]
    assert world.refused("CancelOTATaskByJob", JobId=job).code == (
        "iot.ota.NoCancelTaskStatusSpecified"
    )


def test_task_view_counts_latest_status_per_batch_and_source_version() -> None:
    view = TaskView()

    def event(task: str, status: str, src: str, at: int) -> dict[str, Any]:
        return {
            "task_id": task,
            "batch_id": "b1",
            "product_key": "pk",
            "device_name": f"dev-{task}",
            "module": "default",
            "src_version": src,
            "dest_version": "2.0",
            "status": status,
            "previous_status": None,
            "progress": 0,
            "desc": "",
            "event_time": at,
        }

    view.apply_task_event(event("t1", "QUEUED", "1.0", 1))
    view.apply_task_event(event("t2", "QUEUED", "1.1", 2))
    view.apply_task_event(event("t1", "SUCCEEDED", "1.0", 3))
    stats = view.statistics("b1")
    assert (stats["Total"], stats["Queued"], stats["Succeeded"]) == (2, 1, 1)
    assert [(s["SrcVersion"], s["Succeeded"], s["Queued"]) for s in stats["SrcVersions"]] == [
        ("1.0", 1, 0),
        ("1.1", 0, 1),
    ]
    assert view.task_ref("t1") == "pk/dev-t1/b1" and view.task_ref("nope") == ""
    data, top = view.answer("ListOTATaskByJob", {"JobId": "b1", "TaskStatus": "SUCCEEDED"})
    assert top["Total"] == 1 and data["SimpleOTATaskInfo"][0]["TaskId"] == "t1"


def test_update_cancels_a_dynamic_batch_timeout_with_zero(world: World) -> None:
    """Console doc: on a dynamic batch "you can also cancel the timeout setting"."""
    job = world.call(
        "CreateOTADynamicUpgradeJob",
        ProductKey=world.pk,
        FirmwareId=world.fw,
        SrcVersion__1="1.0",
        TimeoutInMinutes=60,
        RetryInterval=30,
        RetryCount=1,
    ).data["JobId"]
    base = {"JobId": job, "UpgradeType": "DYNAMIC", "TargetSelection": "ALL"}
    out = world.call("UpdateOTAJob", **base, MaximumPerMinute=100, TimeoutInMinutes=0)
    assert out.controls[0]["action"] == "UPDATE"
    assert out.controls[0]["batch"]["timeout_minutes"] is None
    stored = world.store.get(f"batch/{job}")
    assert stored is not None and stored["timeout_minutes"] is None
    # Without TimeoutInMinutes the (now absent) timeout is left as it is.
    out = world.call("UpdateOTAJob", **base, MaximumPerMinute=100)
    assert out.controls[0]["batch"]["timeout_minutes"] is None
    # A timeout may be set again; the retry interval must stay below it.
    err = world.refused("UpdateOTAJob", **base, MaximumPerMinute=100, TimeoutInMinutes=30)
    assert err.code == "iot.ota.RetryIntervalNotLessThanTimeout"
    out = world.call("UpdateOTAJob", **base, MaximumPerMinute=100, TimeoutInMinutes=45)
    assert out.controls[0]["batch"]["timeout_minutes"] == 45
    err = world.refused("UpdateOTAJob", **base, MaximumPerMinute=100, TimeoutInMinutes=-1)
    assert err.code == "iot.ota.InvalidTimeoutInMinutes"
    static = world.call(
        "CreateOTAStaticUpgradeJob", ProductKey=world.pk, FirmwareId=world.fw, TargetSelection="ALL"
    ).data["JobId"]
    err = world.refused(
        "UpdateOTAJob",
        JobId=static,
        UpgradeType="STATIC",
        TargetSelection="ALL",
        MaximumPerMinute=100,
        TimeoutInMinutes=0,
    )
    assert err.code == "iot.ota.TimeoutNotEditable"
