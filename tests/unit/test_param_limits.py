"""Issue 16, item 1: what a parameter and a device name may hold (pure checks)."""

from __future__ import annotations

import pytest

from connectors.device_json import MalformedPayload
from connectors.ota_messages import parse_report
from otaflow.api.limits import MAX_VALUE_CHARS, check_params
from otaflow.api.params import ParamError
from otaflow.control.errors import ApiError

VERSION = b'{"id": "1", "params": {"version": "1.0"}}'


def test_integers_the_records_cannot_hold_are_refused() -> None:
    for size in (str(2**63), str(-1), str(1000 * 1024 * 1024 + 1), "1e3", " "):
        with pytest.raises(ApiError) as raised:
            check_params("CreateOTAFirmware", {"FirmwareSize": size})
        assert "FirmwareSize" in raised.value.message
    check_params("CreateOTAFirmware", {"FirmwareSize": str(1000 * 1024 * 1024)})
    with pytest.raises(ApiError):
        check_params("CreateOTAStaticUpgradeJob", {"ScheduleTime": str(2**63)})
    check_params("CreateOTAStaticUpgradeJob", {"ScheduleTime": str(2**63 - 1)})
    with pytest.raises(ApiError):
        check_params("QueryDeviceGroupList", {"PageSize": str(2**31)})


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"ProductName": "a\ud800b"}, "InvalidProductName"),
        ({"ProductName": "a\x00b"}, "InvalidProductName"),
        ({"Udi": "u" * (MAX_VALUE_CHARS + 1)}, "InvalidUdi"),
        ({"Bad Name": "x"}, "InvalidParameterName"),
        ({"A.1.B.C.D": "x"}, "InvalidA"),
        ({f"Tag.{i}.Value": "v" * 4000 for i in range(300)}, "InvalidParameter.Size"),
    ],
)
def test_values_a_command_cannot_carry_are_refused(params: dict[str, str], code: str) -> None:
    with pytest.raises(ParamError) as raised:
        check_params("CreateProduct", params)
    assert raised.value.code == code
    assert raised.value.http_status == 400


def test_ordinary_values_pass() -> None:
    check_params(
        "CreateOTAFirmware",
        {"FirmwareName": "固件 (v2)", "FirmwareDesc": "line one\nline two\t!", "Type": "1"},
    )


@pytest.mark.parametrize(
    "name",
    ["abc", "x" * 33, "x" * 60_000, "dévice-01", "dev ice", "设备名称设备"],
)
def test_device_names_outside_the_platform_rule_are_malformed(name: str) -> None:
    for topic in (
        f"/ota/device/inform/pk1/{name}",
        f"/ota/device/progress/pk1/{name}",
        f"/sys/pk1/{name}/thing/ota/firmware/get",
    ):
        with pytest.raises(MalformedPayload) as raised:
            parse_report(topic, VERSION, 0)
        assert "4-32 characters" in raised.value.reason
        assert len(raised.value.reason) < 400


def test_a_slash_in_a_device_name_is_malformed_not_ignored() -> None:
    for topic in (
        "/ota/device/inform/pk1/dev/ice",
        "/ota/device/progress/pk1/a/b/c",
        "/sys/pk1/dev/ice/thing/ota/firmware/get",
    ):
        with pytest.raises(MalformedPayload) as raised:
            parse_report(topic, VERSION, 0)
        assert "'/'" in raised.value.reason


def test_names_of_the_platform_set_pass() -> None:
    for name in ("dev1", "a" * 32, "dev_1-2@x.y:z"):
        assert parse_report(f"/ota/device/inform/pk1/{name}", VERSION, 0)["device_name"] == name
