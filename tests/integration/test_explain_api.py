"""ExplainOTADevice through the real API (the SDK's signing) and ``otaflow explain``,
answered from the API's view of the public topics."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from typing import Any

import pytest

from otaflow.cli.ops import add_parsers
from otaflow.dev import devstack
from tests.integration.api_support import (
    AK,
    SK,
    Deployment,
    dynamic_job,
    eventually,
    new_product,
    ok,
    report_versions,
    running_deployment,
    upload_firmware,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def deployment(
    stack: devstack.DevStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    yield from running_deployment(stack, tmp_path_factory)


def test_explain_reads_why_through_the_api_and_the_cli(
    deployment: Deployment, capsys: pytest.CaptureFixture[str]
) -> None:
    api = deployment
    pk = new_product(api)
    firmware_id = upload_firmware(api, pk)
    job_id = ok(dynamic_job(api, pk, firmware_id)).data.job_id
    report_versions(api, pk, "1.0", "match001")
    report_versions(api, pk, "0.5", "other001")

    def explain(name: str) -> dict[str, Any]:
        body = api.call_raw("ExplainOTADevice", {"ProductKey": pk, "DeviceName": name})
        assert body["Success"] is not False, body
        items = body["Data"]["Explanations"]
        if not items:  # the view has not read the device's report yet
            return {}
        (item,) = items
        return dict(item)

    matched = eventually(lambda: explain("match001"), lambda i: bool(i.get("Evidence")))
    assert matched["JobId"] == job_id
    assert matched["Reason"] in ("QUEUED", "PUSHED")
    assert matched["Evidence"][0]["status"] == "QUEUED"
    other = eventually(lambda: explain("other001"), lambda i: bool(i.get("Reason")))
    assert other["Reason"] == "SOURCE_VERSION" and "reports 0.5" in other["Detail"]

    parser = argparse.ArgumentParser(prog="otaflow")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    base = ["--endpoint", f"http://127.0.0.1:{api.settings.api_port}"]
    base += ["--access-key-id", AK, "--access-key-secret", SK, "--json"]
    args = parser.parse_args(["explain", f"{pk}/other001", *base])
    assert args.func(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["Data"]["Explanations"][0]["Reason"] == "SOURCE_VERSION"
