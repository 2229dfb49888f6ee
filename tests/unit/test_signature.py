"""ACS3-HMAC-SHA256 verification against what the real Alibaba Cloud SDK sends."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from otaflow.api.signature import (
    SignatureError,
    SignatureVerifier,
    canonical_query_string,
    format_acs_date,
    parse_acs_date,
    parse_authorization,
    sign_request,
)

AK = "LTAI5tOtaflowTestKey"
SECRET = "otaflow-test-secret-0123456789"


# --------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class Captured:
    """One raw HTTP request as it reached the server."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    @property
    def date(self) -> datetime:
        return parse_acs_date(self.headers["x-acs-date"])


class _Recorder(BaseHTTPRequestHandler):
    captured: list[Captured]

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        url = urlsplit(self.path)
        self.captured.append(
            Captured(
                method=self.command,
                path=url.path,
                query=dict(parse_qsl(url.query, keep_blank_values=True)),
                headers={k: v for k, v in self.headers.items()},
                body=body,
            )
        )
        reply = json.dumps({"RequestId": "test", "Success": True, "Data": {}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json;charset=utf-8")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    do_GET = do_POST = _handle

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def sdk(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, list[Captured]]]:
    """A real ``alibabacloud_iot20180120`` client pointed at a recording HTTP server."""
    for var in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    from alibabacloud_iot20180120.client import Client
    from alibabacloud_tea_openapi.models import Config

    captured: list[Captured] = []
    handler = type("Recorder", (_Recorder,), {"captured": captured})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
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
        yield client, captured
    finally:
        server.shutdown()
        server.server_close()


def _call(sdk: tuple[Any, list[Captured]], fn: Callable[[Any, Any], Any]) -> Captured:
    from alibabacloud_iot20180120 import models

    client, captured = sdk
    before = len(captured)
    fn(client, models)
    assert len(captured) == before + 1
    return captured[-1]


def _verify(verifier: SignatureVerifier, req: Captured, now: datetime | None = None) -> str:
    return verifier.verify(
        req.method, req.path, req.query, req.headers, req.body, req.date if now is None else now
    )


def _refused(
    verifier: SignatureVerifier, req: Captured, now: datetime | None = None
) -> SignatureError:
    with pytest.raises(SignatureError) as info:
        _verify(verifier, req, now)
    return info.value


def _query_product(sdk: tuple[Any, list[Captured]]) -> Captured:
    return _call(
        sdk,
        lambda c, m: c.query_product(
            m.QueryProductRequest(product_key="a1BwAGV****", iot_instance_id="iot-cn-0pp1n8t****")
        ),
    )


# --------------------------------------------------------------- (a) real SDK requests


def test_real_sdk_query_product_verifies(sdk: tuple[Any, list[Captured]]) -> None:
    req = _query_product(sdk)
    assert req.headers["x-acs-action"] == "QueryProduct"
    assert req.headers["x-acs-version"] == "2018-01-20"
    assert req.headers["Authorization"].startswith(f"ACS3-HMAC-SHA256 Credential={AK},")
    verifier = SignatureVerifier({AK: SECRET})
    assert _verify(verifier, req) == AK
    # with the real clock too (the SDK stamped the request a moment ago)
    req2 = _query_product(sdk)
    assert verifier.verify(req2.method, req2.path, req2.query, req2.headers, req2.body) == AK


def test_real_sdk_special_characters_and_lists_verify(sdk: tuple[Any, list[Captured]]) -> None:
    req = _call(
        sdk,
        lambda c, m: c.create_otadynamic_upgrade_job(
            m.CreateOTADynamicUpgradeJobRequest(
                firmware_id="fw id/ü*~+&=%",
                product_key="pk",
                src_version=["1.0 beta", "2.0"],
                tag=[m.CreateOTADynamicUpgradeJobRequestTag(key="k", value="a b+c,d;e")],
                need_push=True,
                retry_count=2,
            )
        ),
    )
    assert req.query["FirmwareId"] == "fw id/ü*~+&=%"
    assert _verify(SignatureVerifier({AK: SECRET}), req) == AK


def test_real_sdk_form_body_and_get_verify(sdk: tuple[Any, list[Captured]]) -> None:
    post = _call(
        sdk,
        lambda c, m: c.batch_check_device_names(
            m.BatchCheckDeviceNamesRequest(product_key="pk", device_name=["dev 1", "dev-2"])
        ),
    )
    assert post.body and post.headers["content-type"] == "application/x-www-form-urlencoded"
    get = _call(
        sdk,
        lambda c, m: c.list_otamodule_by_product(m.ListOTAModuleByProductRequest(product_key="pk")),
    )
    assert get.method == "GET"
    verifier = SignatureVerifier({AK: SECRET})
    assert _verify(verifier, post) == AK
    assert _verify(verifier, get) == AK


def test_sdk_signing_functions_directly() -> None:
    """Both SDK signing implementations (tea-openapi 0.4 and openapi-util) agree with us."""
    from alibabacloud_openapi_util.client import Client as OpenApiUtil
    from alibabacloud_tea_openapi.utils import Utils
    from darabonba.request import DaraRequest

    body = b"DeviceName.1=a&DeviceName.2=b%20c"
    request = DaraRequest()
    request.method = "POST"
    request.pathname = "/"
    request.query = {"ProductKey": "pk", "Tag.1.Value": "x y*~", "Empty": ""}
    request.headers = {
        "host": "iot.cn-shanghai.aliyuncs.com",
        "x-acs-version": "2018-01-20",
        "x-acs-action": "BatchCheckDeviceNames",
        "user-agent": "AlibabaCloud (test)",
        "x-acs-date": format_acs_date(),
        "x-acs-signature-nonce": "f1e2d3c4b5a6",
        "accept": "application/json",
        "content-type": "application/x-www-form-urlencoded",
        "x-acs-content-sha256": Utils.hash(body, "ACS3-HMAC-SHA256").hex(),
    }
    payload = request.headers["x-acs-content-sha256"]
    for impl in (Utils, OpenApiUtil):
        auth = impl.get_authorization(request, "ACS3-HMAC-SHA256", payload, AK, SECRET)
        headers = {**request.headers, "Authorization": auth}
        verifier = SignatureVerifier({AK: SECRET})
        assert verifier.verify("POST", "/", request.query, headers, body) == AK

    ours = sign_request(
        access_key_id=AK,
        access_key_secret=SECRET,
        method="POST",
        host=request.headers["host"],
        query=request.query,
        headers={k: v for k, v in request.headers.items() if k != "host"},
        body=body,
        date=parse_acs_date(request.headers["x-acs-date"]),
        nonce="f1e2d3c4b5a6",
    )
    sdk_auth = Utils.get_authorization(request, "ACS3-HMAC-SHA256", payload, AK, SECRET)
    assert ours["authorization"] == sdk_auth


def test_canonical_query_matches_sdk() -> None:
    from alibabacloud_tea_openapi.utils import get_canonical_query_string

    query = {"b": "x y", "a": "ü*~/+", "Tag.1.Key": "k=v&w", "c": ""}
    assert canonical_query_string(query) == get_canonical_query_string(query)
    assert canonical_query_string(query) == "Tag.1.Key=k%3Dv%26w&a=%C3%BC%2A~%2F%2B&b=x%20y&c="


# ----------------------------------------------------------------------- (b) refusals


def test_wrong_secret_is_refused(sdk: tuple[Any, list[Captured]]) -> None:
    req = _query_product(sdk)
    err = _refused(SignatureVerifier({AK: "not-the-secret"}), req)
    assert (err.code, err.http_status) == ("SignatureDoesNotMatch", 400)
    assert err.message.startswith("Specified signature is not matched with our calculation.")
    assert "server string to sign is:ACS3-HMAC-SHA256\n" in err.message


def test_unknown_access_key_is_refused(sdk: tuple[Any, list[Captured]]) -> None:
    err = _refused(SignatureVerifier({"someone-else": SECRET}), _query_product(sdk))
    assert (err.code, err.http_status) == ("InvalidAccessKeyId.NotFound", 404)
    assert err.message == "Specified access key is not found."


def test_tampered_query_param_is_refused(sdk: tuple[Any, list[Captured]]) -> None:
    req = _query_product(sdk)
    tampered = replace(req, query={**req.query, "ProductKey": "another-product"})
    assert _refused(SignatureVerifier({AK: SECRET}), tampered).code == "SignatureDoesNotMatch"
    added = replace(req, query={**req.query, "PageSize": "50"})
    assert _refused(SignatureVerifier({AK: SECRET}), added).code == "SignatureDoesNotMatch"


def test_tampered_body_action_or_path_is_refused(sdk: tuple[Any, list[Captured]]) -> None:
    req = _call(
        sdk,
        lambda c, m: c.batch_check_device_names(
            m.BatchCheckDeviceNamesRequest(product_key="pk", device_name=["a"])
        ),
    )
    verifier = SignatureVerifier({AK: SECRET})
    for forged in (
        replace(req, body=b"DeviceName.1=b"),
        replace(req, headers={**req.headers, "x-acs-action": "DeleteProduct"}),
        replace(req, path="/other"),
        replace(req, method="GET"),
    ):
        assert _refused(verifier, forged).code == "SignatureDoesNotMatch"


def test_twenty_minute_old_date_is_refused(sdk: tuple[Any, list[Captured]]) -> None:
    req = _query_product(sdk)
    verifier = SignatureVerifier({AK: SECRET})
    err = _refused(verifier, req, now=req.date + timedelta(minutes=20))
    assert (err.code, err.http_status) == ("InvalidTimeStamp.Expired", 400)
    assert err.message == "Specified time stamp or date value is expired."
    # a date 20 minutes in the future is as stale; 14 minutes either way is fine
    assert _refused(verifier, req, now=req.date - timedelta(minutes=20)).code == (
        "InvalidTimeStamp.Expired"
    )
    assert _verify(verifier, req, now=req.date + timedelta(minutes=14)) == AK


def test_old_date_signed_by_sdk_code_is_refused() -> None:
    """A request signed (correctly) 20 minutes ago with the SDK's own signing code."""
    from alibabacloud_tea_openapi.utils import Utils
    from darabonba.request import DaraRequest

    request = DaraRequest()
    request.method = "POST"
    request.pathname = "/"
    request.query = {"ProductKey": "pk"}
    request.headers = {
        "host": "127.0.0.1:8080",
        "x-acs-version": "2018-01-20",
        "x-acs-action": "QueryProduct",
        "x-acs-date": format_acs_date(datetime.now(UTC) - timedelta(minutes=20)),
        "x-acs-signature-nonce": "0123456789abcdef",
        "x-acs-content-sha256": Utils.hash(b"", "ACS3-HMAC-SHA256").hex(),
    }
    payload = request.headers["x-acs-content-sha256"]
    headers = {
        **request.headers,
        "Authorization": Utils.get_authorization(request, "ACS3-HMAC-SHA256", payload, AK, SECRET),
    }
    with pytest.raises(SignatureError) as info:
        SignatureVerifier({AK: SECRET}).verify("POST", "/", request.query, headers, b"")
    assert info.value.code == "InvalidTimeStamp.Expired"


def test_replayed_nonce_is_refused(sdk: tuple[Any, list[Captured]]) -> None:
    req = _query_product(sdk)
    verifier = SignatureVerifier({AK: SECRET})
    assert _verify(verifier, req) == AK
    err = _refused(verifier, req, now=req.date + timedelta(seconds=30))
    assert (err.code, err.http_status) == ("SignatureNonceUsed", 400)
    assert err.message == "Specified signature nonce was used already."
    # a fresh SDK call carries a fresh nonce
    assert _verify(verifier, _query_product(sdk)) == AK


def test_refused_request_does_not_burn_its_nonce(sdk: tuple[Any, list[Captured]]) -> None:
    req = _query_product(sdk)
    verifier = SignatureVerifier({AK: SECRET})
    forged = replace(req, query={**req.query, "ProductKey": "x"})
    assert _refused(verifier, forged).code == "SignatureDoesNotMatch"
    assert _verify(verifier, req) == AK


def test_nonce_memory_is_bounded_by_the_window() -> None:
    verifier = SignatureVerifier({AK: SECRET}, max_skew_s=60)
    start = datetime(2025, 1, 1, tzinfo=UTC)
    for i in range(50):
        at = start + timedelta(seconds=10 * i)
        headers = sign_request(
            access_key_id=AK,
            access_key_secret=SECRET,
            method="POST",
            host="h",
            action="QueryProduct",
            version="2018-01-20",
            date=at,
            nonce=f"n{i}",
        )
        assert verifier.verify("POST", "/", {}, headers, b"", at) == AK
    # nonces live 2 * 60 s, one request every 10 s => about 12 remembered, not 50
    assert verifier.remembered_nonces <= 13
    capped = SignatureVerifier({AK: SECRET}, max_nonces=5)
    for i in range(20):
        headers = sign_request(
            access_key_id=AK, access_key_secret=SECRET, method="POST", host="h",
            action="A", version="V", date=start, nonce=f"m{i}",
        )  # fmt: skip
        capped.verify("POST", "/", {}, headers, b"", start)
    assert capped.remembered_nonces <= 5


def test_header_level_refusals(sdk: tuple[Any, list[Captured]]) -> None:
    req = _query_product(sdk)
    verifier = SignatureVerifier({AK: SECRET})
    no_auth = {k: v for k, v in req.headers.items() if k.lower() != "authorization"}

    def code(headers: dict[str, str]) -> str:
        return _refused(verifier, replace(req, headers=headers), now=req.date).code

    assert code(no_auth) == "MissingAuthorization"
    assert code({**no_auth, "Authorization": "ACS3-HMAC-SHA256 garbage"}) == "IncompleteSignature"
    assert code({**no_auth, "Authorization": "ACS3-HMAC-SHA256"}) == "IncompleteSignature"
    sm3 = req.headers["Authorization"].replace("ACS3-HMAC-SHA256", "ACS3-HMAC-SM3")
    assert code({**no_auth, "Authorization": sm3}) == "InvalidSignatureMethod"
    # an x-acs-* header slipped in after signing
    assert code({**req.headers, "x-acs-extra": "1"}) == "IncompleteSignature"
    no_nonce = {k: v for k, v in req.headers.items() if k != "x-acs-signature-nonce"}
    assert code(no_nonce) == "MissingSignatureNonce"
    no_date = {k: v for k, v in req.headers.items() if k != "x-acs-date"}
    assert code(no_date) == "MissingTimestamp"
    bad_date = {**req.headers, "x-acs-date": "yesterday"}
    assert code(bad_date) == "InvalidTimeStamp.Format"


def test_error_body_shape() -> None:
    err = SignatureError("SignatureNonceUsed", "Specified signature nonce was used already.")
    body = err.to_body("REQ-1", "iot.cn-shanghai.aliyuncs.com")
    assert body["Code"] == "SignatureNonceUsed" and body["RequestId"] == "REQ-1"
    assert body["HostId"] == "iot.cn-shanghai.aliyuncs.com"


# ------------------------------------------------------------------- (c) sign_request


def test_sign_request_verifies() -> None:
    query = {"ProductKey": "pk", "SrcVersion.1": "1.0 beta", "Tag.1.Value": "ü*~"}
    body = b"DeviceName.1=a"
    headers = sign_request(
        access_key_id=AK,
        access_key_secret=SECRET,
        method="POST",
        host="127.0.0.1:8080",
        query=query,
        headers={"Content-Type": "application/x-www-form-urlencoded", "accept": "application/json"},
        body=body,
        action="CreateOTADynamicUpgradeJob",
        version="2018-01-20",
    )
    auth = parse_authorization(headers["authorization"])
    assert auth.access_key_id == AK
    assert "host" in auth.signed_headers and "content-type" in auth.signed_headers
    verifier = SignatureVerifier({AK: SECRET})
    # header names arrive in any case
    received = {k.title(): v for k, v in headers.items()}
    assert verifier.verify("POST", "/", query, received, body) == AK
    with pytest.raises(SignatureError) as info:
        verifier.verify("POST", "/", query, received, body)
    assert info.value.code == "SignatureNonceUsed"


def test_verifier_accepts_encoded_key_form() -> None:
    """Signers that percent-encode query keys too (published algorithm) are accepted."""
    import hashlib
    import hmac

    from otaflow.api.signature import canonical_headers, canonical_request

    query = {"Odd Key*": "v"}
    headers = {
        "host": "h",
        "x-acs-action": "A",
        "x-acs-version": "V",
        "x-acs-date": format_acs_date(),
        "x-acs-signature-nonce": "n",
        "x-acs-content-sha256": hashlib.sha256(b"").hexdigest(),
    }
    block, signed = canonical_headers(headers)
    canonical = canonical_request(
        "POST", "/", canonical_query_string(query, encode_keys=True), block, signed,
        headers["x-acs-content-sha256"],
    )  # fmt: skip
    sts = "ACS3-HMAC-SHA256\n" + hashlib.sha256(canonical.encode()).hexdigest()
    sig = hmac.new(SECRET.encode(), sts.encode(), hashlib.sha256).hexdigest()
    headers["Authorization"] = (
        f"ACS3-HMAC-SHA256 Credential={AK},SignedHeaders={signed},Signature={sig}"
    )
    assert SignatureVerifier({AK: SECRET}).verify("POST", "/", query, headers, b"") == AK
