"""The operations CLI's tables fit an 80-column terminal, keep every id whole on one line
(ids are copied into the next command) and show statuses by name."""

from __future__ import annotations

import argparse
import io
from collections.abc import Mapping
from typing import Any

import pytest
from rich.console import Console

from otaflow.cli import ops

JOB_ID = "Xq3vB9kLmN2pR7sT4uWy8z"  # 22 characters, as the control plane makes them
FIRMWARE_ID = "Fw7hJ2kL9mN4pQ6rS8tU1v"
TASK_ID = "0f3a9c2d4e5b6a7c8d9e"  # 20 hex characters
PRODUCT_KEY = "a1B2c3D4e5F"
LONG_NAME = "warehouse-north-sensor-00000042"  # 31 of the 32 characters a name may have
LONG_DESC = "download failed: the package server answered 404 for the signed URL " * 2


class FakeApi:
    """Answers each operation with one canned body of the platform's shape."""

    def __init__(self, answers: Mapping[str, dict[str, Any]]) -> None:
        self.answers = answers

    def call(self, action: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return self.answers[action]


ANSWERS: dict[str, dict[str, Any]] = {
    "ListOTATaskByJob": {
        "Success": True,
        "Total": 3,
        "Data": {
            "SimpleOTATaskInfo": [
                {
                    "TaskId": TASK_ID,
                    "DeviceName": LONG_NAME,
                    "SrcVersion": "1.0.0-rc.12",
                    "DestVersion": "2.0.0-rc.1",
                    "TaskStatus": "IN_PROGRESS",
                    "Progress": "57",
                    "TaskDesc": LONG_DESC,
                },
                {
                    "TaskId": TASK_ID[::-1],
                    "DeviceName": "dev-1",
                    "SrcVersion": "1.0",
                    "DestVersion": "2.0",
                    "TaskStatus": "SUCCEEDED",
                    "Progress": "100",
                    "TaskDesc": "",
                },
            ]
        },
    },
    "ListOTAJobByFirmware": {
        "Success": True,
        "Total": 2,
        "Data": {
            "SimpleOTAJobInfo": [
                {
                    "JobId": JOB_ID,
                    "SelectionType": "DYNAMIC",
                    "TargetSelection": "ALL",
                    "JobStatus": "IN_PROGRESS",
                    "JobType": "UPGRADE_FIRMWARE",
                    "UtcCreate": "2026-11-29T20:13:01.000Z",
                },
                {
                    "JobId": JOB_ID[::-1],
                    "SelectionType": "STATIC",
                    "TargetSelection": "SPECIFIC",
                    "JobStatus": "COMPLETED",
                    "JobType": "VERIFY_FIRMWARE",
                    "UtcCreate": "2026-11-29T20:14:01.000Z",
                },
            ]
        },
    },
    "ListOTAFirmware": {
        "Success": True,
        "Total": 2,
        "FirmwareInfo": {
            "SimpleFirmwareInfo": [
                {
                    "FirmwareId": FIRMWARE_ID,
                    "FirmwareName": "smart_lock_main_board_firmware_2_0_0",
                    "ProductKey": PRODUCT_KEY,
                    "ModuleName": "main_board_controller",
                    "DestVersion": "2.0.0-rc.1+build.20261129",
                    "Status": 3,
                },
                {
                    "FirmwareId": FIRMWARE_ID[::-1],
                    "FirmwareName": "fw_2_1",
                    "ProductKey": PRODUCT_KEY,
                    "ModuleName": "default",
                    "DestVersion": "2.1",
                    "Status": 1,
                },
            ]
        },
    },
    "QueryOTAFirmware": {
        "Success": True,
        "FirmwareInfo": {"FirmwareId": FIRMWARE_ID, "Status": 2, "DestVersion": "2.0"},
    },
}


def render(func: Any, **args: Any) -> list[str]:
    out = io.StringIO()
    console = Console(file=out, width=80, color_system=None, legacy_windows=False)
    client: Any = FakeApi(ANSWERS)
    status = ops.run(func, argparse.Namespace(json=False, **args), console=console, client=client)
    assert status == 0
    return out.getvalue().splitlines()


def line_with(lines: list[str], text: str) -> str:
    found = [line for line in lines if text in line]
    assert found, f"{text!r} is not whole on any line:\n" + "\n".join(lines)
    return found[0]


@pytest.mark.parametrize(
    ("func", "args", "ids", "statuses"),
    [
        (
            ops.task_list,
            {"job_id": JOB_ID, "page": 1, "page_size": 50, "status": None},
            [TASK_ID, TASK_ID[::-1]],
            ["IN_PROGRESS", "SUCCEEDED"],
        ),
        (
            ops.batch_list,
            {"firmware_id": FIRMWARE_ID, "page": 1, "page_size": 20},
            [JOB_ID, JOB_ID[::-1]],
            ["IN_PROGRESS", "COMPLETED"],
        ),
        (
            ops.firmware_list,
            {"product": None, "page": 1, "page_size": 20},
            [FIRMWARE_ID, FIRMWARE_ID[::-1], PRODUCT_KEY],
            ["verify failed", "verified"],
        ),
    ],
)
def test_list_tables_fit_80_columns_with_whole_ids_and_named_statuses(
    func: Any, args: dict[str, Any], ids: list[str], statuses: list[str]
) -> None:
    lines = render(func, **args)
    too_wide = [line for line in lines if len(line) > 80]
    assert too_wide == []
    for each in ids:
        line_with(lines, each)
    for status in statuses:
        line_with(lines, status)


def test_a_task_table_keeps_one_line_per_task() -> None:
    lines = render(ops.task_list, job_id=JOB_ID, page=1, page_size=50, status=None)
    row = line_with(lines, TASK_ID)
    # The long description is cut on the task's own line, not wrapped under it.
    assert "download" in row and row.rstrip().endswith("…")
    assert "1.0.0-rc.12" in row


def test_firmware_show_names_its_verification_status() -> None:
    lines = render(ops.firmware_show, firmware_id=FIRMWARE_ID)
    status = line_with(lines, "Status")
    assert "verifying" in status and " 2 " not in status + " "


def test_batch_list_shows_kind_and_minute_of_creation() -> None:
    lines = render(ops.batch_list, firmware_id=FIRMWARE_ID, page=1, page_size=20)
    row = line_with(lines, JOB_ID)
    assert "DYNAMIC" in row and "2026-11-29 20:13" in row
    assert "VERIFY" in line_with(lines, JOB_ID[::-1])


def test_an_empty_list_keeps_its_title_on_one_line() -> None:
    # A page past the end of a big batch: no rows, a long title.
    empty = {"Success": True, "Total": 100000, "Data": {"SimpleOTATaskInfo": []}}
    out = io.StringIO()
    client: Any = FakeApi({"ListOTATaskByJob": empty})
    args = argparse.Namespace(json=False, job_id=JOB_ID, page=3000, page_size=50, status=None)
    ops.run(ops.task_list, args, console=Console(file=out, width=80), client=client)
    line_with(out.getvalue().splitlines(), f"tasks of {JOB_ID} (100000)")
