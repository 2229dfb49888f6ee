"""RPC parameter parsing against requests captured from the real Alibaba Cloud SDK."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from otaflow.api.params import (
    ParamError,
    Params,
    encode_form,
    flatten,
    parse_bool,
    parse_int,
    parse_rpc_request,
    unflatten,
)
from otaflow.api.signature import SignatureVerifier

AK = "LTAI5tParamsTestKey"
SECRET = "params-test-secret"


@dataclass(frozen=True)
class Captured:
    method: str
    raw_query: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@pytest.fixture
def sdk(
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Callable[[Callable[[Any, Any], Any]], Captured]]:
    """Call the real ``alibabacloud_iot20180120`` client; return the raw request it sent."""
    for var in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    from alibabacloud_iot20180120 import models
    from alibabacloud_iot20180120.client import Client
    from alibabacloud_tea_openapi.models import Config

    captured: list[Captured] = []

    class Recorder(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            url = urlsplit(self.path)
            captured.append(
                Captured(
                    self.command,
                    url.query,
                    dict(parse_qsl(url.query, keep_blank_values=True)),
                    dict(self.headers.items()),
                    body,
                )
            )
            reply = json.dumps({"RequestId": "r", "Success": True}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        do_GET = do_POST = _handle

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    client = Client(
        Config(
            access_key_id=AK,
            access_key_secret=SECRET,
            endpoint=f"127.0.0.1:{server.server_port}",
            protocol="http",
            read_timeout=5000,
            connect_timeout=5000,
        )
    )

    def call(fn: Callable[[Any, Any], Any]) -> Captured:
        fn(client, models)
        return captured[-1]

    try:
        yield call
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------ flatten / unflatten


def test_unflatten_example_from_the_spec() -> None:
    flat = {"Tag.1.Key": "a", "Tag.1.Value": "b", "DeviceName.1": "x", "DeviceName.2": "y"}
    assert unflatten(flat) == {"Tag": [{"Key": "a", "Value": "b"}], "DeviceName": ["x", "y"]}


def test_unflatten_orders_numerically_and_closes_gaps() -> None:
    flat = {f"SrcVersion.{i}": f"v{i}" for i in (10, 2, 1, 5)}
    assert unflatten(flat) == {"SrcVersion": ["v1", "v2", "v5", "v10"]}
    assert unflatten({"A": "1", "B.x": "2", "B.y.1": "3", "1": "digit-name"}) == {
        "A": "1",
        "B": {"x": "2", "y": ["3"]},
        "1": "digit-name",
    }


def test_unflatten_conflict_and_odd_keys() -> None:
    with pytest.raises(ParamError) as info:
        unflatten({"Tag": "x", "Tag.1.Key": "k"})
    assert info.value.code == "InvalidTag"
    with pytest.raises(ParamError):
        unflatten({"Tag.1.Key": "k", "Tag.1": "x"})
    assert unflatten({"A..B": "1", ".C": "2"}) == {"A..B": "1", ".C": "2"}


def test_flatten_roundtrip_and_matches_sdk() -> None:
    from alibabacloud_openapi_util.client import Client as OpenApiUtil
    from alibabacloud_tea_openapi.utils import Utils

    nested = {
        "ProductKey": "pk",
        "SrcVersion": ["1.0", "1.1"],
        "Tag": [{"Key": "k1", "Value": "v1"}, {"Key": "k2", "Value": "v 2"}],
        "NeedPush": True,
        "RetryCount": 3,
        "Skipped": None,
    }
    flat = flatten(nested)
    assert flat == OpenApiUtil.query(nested) == Utils.query(nested)
    assert flat["NeedPush"] == "True" and flat["Tag.2.Value"] == "v 2"
    back = unflatten(flat)
    assert back["Tag"] == nested["Tag"] and back["SrcVersion"] == ["1.0", "1.1"]
    assert flatten({"A": [None, "x"]}) == {"A.2": "x"}
    assert encode_form({"b": "x y", "a": "/"}) == "a=%2F&b=x+y"
    assert encode_form(flat) == OpenApiUtil.to_form(nested)


def test_scalar_parsing() -> None:
    assert parse_bool("True") is True and parse_bool("false") is False
    assert parse_bool("TRUE") is True
    with pytest.raises(ParamError) as info:
        parse_bool("yes", "NeedPush")
    assert info.value.code == "InvalidNeedPush"
    assert parse_int("42") == 42 and parse_int("-1") == -1
    with pytest.raises(ParamError):
        parse_int("4.2", "PageSize")
    with pytest.raises(ParamError) as info:
        parse_int("0", "PageSize", minimum=1)
    assert info.value.message.startswith("Specified parameter PageSize is not valid.")


# ------------------------------------------------------------------ real SDK requests


def test_captured_create_otadynamic_upgrade_job(sdk: Callable[..., Captured]) -> None:
    req = sdk(
        lambda c, m: c.create_otadynamic_upgrade_job(
            m.CreateOTADynamicUpgradeJobRequest(
                product_key="a1Bw****",
                firmware_id="UfuxnwygsuSkVE0z6****0200",
                src_version=["1.0.0", "1.0.1 beta", "ü/+&"],
                tag=[
                    m.CreateOTADynamicUpgradeJobRequestTag(key="env", value="prod"),
                    m.CreateOTADynamicUpgradeJobRequestTag(key="ring", value="a b"),
                ],
                need_push=True,
                need_confirm=False,
                multi_module_mode=False,
                retry_count=2,
                retry_interval=10,
                timeout_in_minutes=60,
                maximum_per_minute=1000,
                overwrite_mode=1,
                dynamic_mode=1,
                download_protocol="HTTPS",
            )
        )
    )
    # transport facts: POST /, everything in the query string, empty body
    assert req.method == "POST"
    assert req.body == b"" and "content-type" not in {k.lower() for k in req.headers}
    assert req.headers["x-acs-action"] == "CreateOTADynamicUpgradeJob"
    assert req.headers["x-acs-version"] == "2018-01-20"
    assert "Action" not in req.query and "Version" not in req.query
    assert "SrcVersion.2=1.0.1+beta" in req.raw_query  # urlencode: space -> '+'
    assert "SrcVersion.3=%C3%BC%2F%2B%26" in req.raw_query
    assert req.query["NeedPush"] == "True" and req.query["NeedConfirm"] == "False"
    assert req.query["Tag.2.Key"] == "ring" and req.query["Tag.2.Value"] == "a b"

    rpc = parse_rpc_request(req.method, req.query, req.headers, req.body)
    assert rpc.action == "CreateOTADynamicUpgradeJob" and rpc.version == "2018-01-20"
    structured = rpc.structured()
    assert structured["SrcVersion"] == ["1.0.0", "1.0.1 beta", "ü/+&"]
    assert structured["Tag"] == [{"Key": "env", "Value": "prod"}, {"Key": "ring", "Value": "a b"}]

    p = rpc.accessor()
    assert p.get_str("ProductKey", required=True) == "a1Bw****"
    assert p.get_bool("NeedPush") is True and p.get_bool("NeedConfirm") is False
    assert p.get_bool("MultiModuleMode") is False
    assert p.get_int("RetryCount") == 2 and p.get_int("TimeoutInMinutes", maximum=1440) == 60
    assert p.get_int("MaximumPerMinute", minimum=10, maximum=10000) == 1000
    assert p.get_list("SrcVersion", max_items=10)[1] == "1.0.1 beta"
    assert p.get_objects("Tag")[0] == {"Key": "env", "Value": "prod"}
    assert p.get_str("GroupId") is None and p.get_list("GroupIds") == []
    # and the same request is correctly signed
    assert (
        SignatureVerifier({AK: SECRET}).verify(req.method, "/", req.query, req.headers, req.body)
        == AK
    )


def test_captured_form_body_operation(sdk: Callable[..., Captured]) -> None:
    req = sdk(
        lambda c, m: c.batch_check_device_names(
            m.BatchCheckDeviceNamesRequest(
                product_key="pk",
                device_name=["dev 1", "dev-2"],
                device_name_list=[
                    m.BatchCheckDeviceNamesRequestDeviceNameList(
                        device_name="dev-3", device_nickname="nick"
                    )
                ],
            )
        )
    )
    assert req.query == {"ProductKey": "pk"}
    assert req.headers["content-type"] == "application/x-www-form-urlencoded"
    assert req.body == (
        b"DeviceName.1=dev+1&DeviceName.2=dev-2"
        b"&DeviceNameList.1.DeviceName=dev-3&DeviceNameList.1.DeviceNickname=nick"
    )
    rpc = parse_rpc_request(req.method, req.query, req.headers, req.body)
    assert rpc.structured() == {
        "ProductKey": "pk",
        "DeviceName": ["dev 1", "dev-2"],
        "DeviceNameList": [{"DeviceName": "dev-3", "DeviceNickname": "nick"}],
    }


def test_captured_get_operation_and_ints(sdk: Callable[..., Captured]) -> None:
    req = sdk(
        lambda c, m: c.list_otamodule_by_product(m.ListOTAModuleByProductRequest(product_key="pk"))
    )
    assert req.method == "GET" and req.query == {"ProductKey": "pk"}
    req = sdk(
        lambda c, m: c.list_otafirmware(
            m.ListOTAFirmwareRequest(product_key="pk", current_page=2, page_size=50)
        )
    )
    p = Params(parse_rpc_request(req.method, req.query, req.headers, req.body).params)
    assert p.get_int("CurrentPage") == 2 and p.get_int("PageSize", maximum=200) == 50


def test_captured_update_otajob_tags_and_cancel_booleans(sdk: Callable[..., Captured]) -> None:
    req = sdk(
        lambda c, m: c.update_otajob(
            m.UpdateOTAJobRequest(
                job_id="job1",
                tags=[m.UpdateOTAJobRequestTags(key="k", value="v")],
                src_version_list=["1.0"],
            )
        )
    )
    assert req.query["Tags.1.Key"] == "k" and req.query["SrcVersionList.1"] == "1.0"
    req = sdk(
        lambda c, m: c.cancel_otatask_by_job(
            m.CancelOTATaskByJobRequest(job_id="job1", cancel_in_progress_task=True)
        )
    )
    assert req.query == {"JobId": "job1", "CancelInProgressTask": "True"}


# ---------------------------------------------------------------------- parse errors


def test_parse_rpc_request_errors_and_legacy_style() -> None:
    with pytest.raises(ParamError) as info:
        parse_rpc_request("POST", {}, {"x-acs-version": "2018-01-20"})
    assert info.value.code == "MissingAction"
    with pytest.raises(ParamError) as info:
        parse_rpc_request("POST", {}, {"x-acs-action": "QueryProduct", "x-acs-version": "2017"})
    assert info.value.code == "InvalidVersion"
    with pytest.raises(ParamError) as info:
        parse_rpc_request("DELETE", {}, {})
    assert info.value.code == "UnsupportedHTTPMethod"
    legacy = parse_rpc_request(
        "GET",
        {
            "Action": "QueryProduct",
            "Version": "2018-01-20",
            "Format": "JSON",
            "SignatureNonce": "n",
            "ProductKey": "pk",
        },
        {},
    )
    assert legacy.action == "QueryProduct" and legacy.params == {"ProductKey": "pk"}
    as_json = parse_rpc_request(
        "POST",
        {},
        {"X-Acs-Action": "A", "X-Acs-Version": "2018-01-20", "Content-Type": "application/json"},
        json.dumps({"Tag": [{"Key": "k"}], "N": 1}).encode(),
    )
    assert as_json.params == {"Tag.1.Key": "k", "N": "1"}


def test_params_accessor_errors() -> None:
    p = Params({"PageSize": "x", "DeviceName.1": "a", "Tag.1.Key": "k", "Name": ""})
    with pytest.raises(ParamError) as info:
        p.get_str("ProductKey", required=True)
    assert (info.value.code, info.value.message) == (
        "MissingProductKey",
        "ProductKey is mandatory for this action.",
    )
    with pytest.raises(ParamError):
        p.get_str("Name", required=True)
    with pytest.raises(ParamError) as info:
        p.get_int("PageSize")
    assert info.value.code == "InvalidPageSize"
    with pytest.raises(ParamError):
        p.get_str("DeviceName")  # a list where a scalar is expected
    with pytest.raises(ParamError):
        p.get_list("Tag")
    with pytest.raises(ParamError):
        p.get_list("DeviceName", max_items=0)
    assert p.get_int("Missing", default=10) == 10
