"""The ``otaflow`` operator CLI drives the OpenAPI end to end.

Shared deployment (``conftest.py``, one for the package) and helpers:
``tests/integration/api_support.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import pytest
from alibabacloud_iot20180120 import models as m

from otaflow.cli.ops import add_parsers
from otaflow.packages import file_path_of_url
from tests.integration.api_support import (
    AK,
    SK,
    Deployment,
    job_ids,
    new_product,
    ok,
)

pytestmark = pytest.mark.integration


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
