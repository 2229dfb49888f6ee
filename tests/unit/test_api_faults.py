"""Issue 16: no input gives the API a plain-text 500, stops a process or holds a connection.

The API server runs here for real (aiohttp on a free port, ``ApiRunner``), with the
official SDK or hand-signed raw requests as clients; the command agent is replaced by a
recorder that, like the real ``ControlClient``, encodes every command as the Avro
record it would put on Kafka and refuses one over Kafka's 1 MB record limit.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import requests
from alibabacloud_iot20180120 import models as m
from Tea.exceptions import TeaException

from otaflow import config
from otaflow.api import server as api_server
from otaflow.api.server import ApiRequestHandler, create_app
from otaflow.api.signature import sign_request
from otaflow.api.views import TaskView
from otaflow.codec import codec
from otaflow.control.client import CommandResult, CommandTimeout
from otaflow.packages import PackageStore
from tests.served_api import ServedApi, free_port

AK, SK = "faultAK", "faultSecret"
CODEC = codec()
KAFKA_RECORD_LIMIT = 1_000_000


@dataclass
class RecordingCommands:
    """Stands in for ``ControlClient``: encodes the command, records it, answers."""

    calls: list[dict[str, Any]] = field(default_factory=list)
    answer: CommandResult | Exception | None = None

    def call(
        self,
        action: str,
        params: Mapping[str, str],
        *,
        request_id: str | None = None,
        timeout: float = 30.0,
        now_ms: int | None = None,
        nonce: str | None = None,
    ) -> CommandResult:
        command = {
            "request_id": request_id or "r",
            "action": action,
            "params": dict(params),
            "event_time": now_ms or 0,
        }
        encoded = CODEC.encode("Command", command)  # what Kafka would be sent
        if len(encoded) > KAFKA_RECORD_LIMIT:
            raise RuntimeError("KafkaError{code=MSG_SIZE_TOO_LARGE}")
        self.calls.append({**command, "nonce": nonce})
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer or CommandResult(request_id or "r", True, None, None, {"Ok": 1})


class Server(ServedApi):
    def __init__(self, tmp: Path, commands: RecordingCommands, view: TaskView) -> None:
        port = free_port()
        settings = replace(config.load(), access_keys={AK: SK}, api_port=port)
        app = create_app(
            settings,
            commands,
            view,
            packages=PackageStore(settings, root=tmp),
            body_timeout_s=1.0,
        )
        super().__init__(app, port, (AK, SK))


@pytest.fixture
def commands() -> RecordingCommands:
    return RecordingCommands()


@pytest.fixture
def view() -> TaskView:
    return TaskView()


@pytest.fixture
def api(
    tmp_path: Path,
    commands: RecordingCommands,
    view: TaskView,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Server]:
    monkeypatch.setattr(ApiRequestHandler, "header_timeout_s", 1.0)
    server = Server(tmp_path, commands, view)
    try:
        yield server
    finally:
        server.close()


def signed_post(
    api: Server,
    action: str,
    query: dict[str, str] | None = None,
    body: bytes = b"",
    content_type: str | None = None,
    nonce: str | None = None,
) -> requests.Response:
    query = query or {}
    headers = {"content-type": content_type} if content_type else {}
    signed = sign_request(
        access_key_id=AK,
        access_key_secret=SK,
        method="POST",
        host=api.host,
        query=query,
        headers=headers,
        body=body,
        action=action,
        version="2018-01-20",
        nonce=nonce,
    )
    return requests.post(f"http://{api.host}/", params=query, data=body, headers=signed, timeout=30)


def signed_head(api: Server, action: str, body: bytes, content_length: int) -> bytes:
    """A raw request's line and headers, signed for ``body``, announcing ``content_length``
    bytes: what a client that stops or lies about its body would send first."""
    signed = sign_request(
        access_key_id=AK,
        access_key_secret=SK,
        method="POST",
        host=api.host,
        action=action,
        version="2018-01-20",
        headers={"content-type": FORM},
        body=body,
    )
    lines = "".join(f"{k}: {v}\r\n" for k, v in signed.items())
    return f"POST / HTTP/1.1\r\n{lines}Content-Length: {content_length}\r\n\r\n".encode()


def gateway_error(response: requests.Response, status: int, code: str) -> dict[str, Any]:
    """The platform's error shape, JSON, never aiohttp's text page."""
    assert response.status_code == status, (response.status_code, response.text[:300])
    body: dict[str, Any] = response.json()
    assert body["Code"] == code, body
    assert body["RequestId"] and body["Message"], body
    return body


def raw_exchange(api: Server, data: bytes, wait_s: float = 8.0) -> bytes:
    """Send ``data`` and read until the server closes or ``wait_s`` passes."""
    with socket.create_connection(("127.0.0.1", api.port)) as sock:
        sock.sendall(data)
        sock.settimeout(0.2)
        received = b""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                break
            received += chunk
        return received


# -- item 1: every parameter is checked before a command is written ----------------------


def test_firmware_size_beyond_64_bits_is_refused_before_a_command_is_written(
    api: Server, commands: RecordingCommands
) -> None:
    request = m.CreateOTAFirmwareRequest(
        product_key="pk_faults",
        firmware_name="fw",
        dest_version="2.0.0",
        firmware_url="http://127.0.0.1/packages/ota/x.bin",
        firmware_sign="0" * 32,
        firmware_size=2**63,
    )
    body = api.sdk().create_otafirmware(request).body
    assert body.success is False
    assert body.code == "iot.common.InvalidFormattedParameter"
    assert "FirmwareSize" in body.error_message
    # Past the platform's 1,000 MB package limit too, and a non-number.
    for size in (str(1000 * 1024 * 1024 + 1), "12ab", "9" * 400):
        answer = signed_post(
            api,
            "CreateOTAFirmware",
            {"ProductKey": "pk", "FirmwareName": "fw", "FirmwareSize": size},
        ).json()
        assert answer["Success"] is False and "FirmwareSize" in answer["ErrorMessage"], answer
    assert commands.calls == []


def test_integer_limits_cover_paging_and_rates(api: Server, commands: RecordingCommands) -> None:
    answer = signed_post(
        api, "ListOTAFirmware", {"ProductKey": "pk", "PageSize": str(2**31)}
    ).json()
    assert answer["Code"] == "iot.common.InvalidFormattedParameter", answer
    answer = signed_post(
        api, "UpdateOTAJob", {"JobId": "j", "MaximumPerMinute": "-99999999999"}
    ).json()
    assert answer["Code"] == "iot.common.InvalidFormattedParameter", answer
    assert commands.calls == []


# -- item 5: every error in the platform's shape ------------------------------------------


def test_lone_surrogate_in_json_body_is_a_platform_error(
    api: Server, commands: RecordingCommands
) -> None:
    body = b'{"ProductName": "abc\\ud800def", "NodeType": 0}'
    response = signed_post(api, "CreateProduct", body=body, content_type="application/json")
    gateway_error(response, 400, "InvalidProductName")
    assert commands.calls == []


def test_json_nested_5000_deep_is_a_platform_error(api: Server) -> None:
    body = b'{"Tag": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    response = signed_post(api, "CreateProduct", body=body, content_type="application/json")
    gateway_error(response, 400, "InvalidParameter.Format")


def test_one_megabyte_value_is_a_platform_error(api: Server, commands: RecordingCommands) -> None:
    response = signed_post(
        api, "CreateProduct", body=b"ProductName=" + b"a" * 1_000_000, content_type=FORM
    )
    gateway_error(response, 400, "InvalidProductName")
    # Many values that are each fine but together do not fit one Kafka record.
    many = "&".join(f"Tag.{i}.Value={'v' * 4000}" for i in range(1, 300)).encode()
    response = signed_post(api, "CreateProduct", body=many, content_type=FORM)
    gateway_error(response, 400, "InvalidParameter.Size")
    assert commands.calls == []


FORM = "application/x-www-form-urlencoded"


def test_list_where_the_api_takes_one_value_is_a_platform_error(api: Server) -> None:
    response = signed_post(api, "ListOTATaskByJob", {"JobId.1": "job"})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["Success"] is False
    assert answer["Code"] == "iot.common.InvalidFormattedParameter"
    assert "JobId" in answer["ErrorMessage"]


def test_unexpected_failure_is_json_500(api: Server, commands: RecordingCommands) -> None:
    commands.answer = RuntimeError("a bug")
    response = signed_post(api, "QueryProduct", {"ProductKey": "pk"})
    gateway_error(response, 500, "InternalError")
    with pytest.raises(TeaException) as raised:
        api.sdk().query_product(m.QueryProductRequest(product_key="pk"))
    assert raised.value.code == "InternalError"


def test_malformed_parameter_names_are_refused(api: Server, commands: RecordingCommands) -> None:
    gateway_error(
        signed_post(api, "QueryProduct", {"ProductKey": "pk", "a" * 200: "x"}),
        400,
        "InvalidParameterName",
    )
    gateway_error(
        signed_post(api, "QueryProduct", {"ProductKey": "pk", "Tag.1.A.B.C": "x"}),
        400,
        "InvalidTag",
    )
    assert commands.calls == []


# -- request line, headers, body and timeouts --------------------------------------------


def test_sdk_can_send_200_target_names_of_32_characters(
    api: Server, commands: RecordingCommands
) -> None:
    names = [f"{i:03d}:" + "@" * 28 for i in range(200)]  # ':' and '@' are %-encoded
    assert all(len(n) == 32 for n in names)
    request = m.CreateOTAStaticUpgradeJobRequest(
        product_key="pk_faults",
        firmware_id="fw",
        target_selection="SPECIFIC",
        target_device_name=names,
        src_version=[f"1.0.{i}-" + "x" * 58 for i in range(10)],
        tag=[
            m.CreateOTAStaticUpgradeJobRequestTag(key=f"k{i}", value="v" * 1024) for i in range(10)
        ],
    )
    body = api.sdk().create_otastatic_upgrade_job(request).body
    assert body.success is True
    sent = commands.calls[-1]["params"]
    assert [sent[f"TargetDeviceName.{i + 1}"] for i in range(200)] == names


def test_request_line_over_the_limit_is_a_json_error(api: Server) -> None:
    response = requests.post(
        f"http://{api.host}/?x={'a' * (api_server.MAX_REQUEST_LINE + 10)}", timeout=30
    )
    gateway_error(response, 431, "InvalidRequest.HeaderTooLarge")


def test_half_sent_request_is_answered_408_and_closed(api: Server) -> None:
    started = time.monotonic()
    received = raw_exchange(api, b"POST / HTTP/1.1\r\nHost: x\r\nx-acs-action: Query")
    assert time.monotonic() - started < 6
    assert received.startswith(b"HTTP/1.1 408"), received[:200]
    assert json.loads(received.split(b"\r\n\r\n", 1)[1])["Code"] == "RequestTimeout"


def test_unsigned_large_body_is_refused_before_it_is_read(api: Server) -> None:
    head = (
        b"POST / HTTP/1.1\r\nHost: x\r\nx-acs-action: QueryProduct\r\n"
        b"x-acs-version: 2018-01-20\r\nContent-Length: 62914560\r\n\r\n"
    )
    received = raw_exchange(api, head + b"a" * 1000)  # the other 60 MB never come
    assert received.startswith(b"HTTP/1.1 400"), received[:200]
    assert b'"MissingAuthorization"' in received


def test_signed_body_over_the_limit_is_refused_from_its_length(api: Server) -> None:
    # Signed for an empty body, announcing 60 MB.
    head = signed_head(api, "BatchCheckDeviceNames", b"", content_length=62_914_560)
    received = raw_exchange(api, head)
    assert received.startswith(b"HTTP/1.1 413"), received[:200]
    assert b'"RequestEntityTooLarge"' in received


def test_body_that_stops_arriving_is_answered_408(api: Server) -> None:
    # Signed for the whole body, announcing 100 bytes, sending 10 of them.
    head = signed_head(api, "QueryProduct", b"ProductKey=pk", content_length=100) + b"ProductKey"
    started = time.monotonic()
    received = raw_exchange(api, head)
    assert time.monotonic() - started < 6
    assert received.startswith(b"HTTP/1.1 408"), received[:200]


# -- views, replays, deadlines -------------------------------------------------------------


def test_view_not_caught_up_answers_503(api: Server, view: TaskView) -> None:
    view.catching_up = (71_137, 100_000)
    response = signed_post(api, "ListOTATaskByJob", {"JobId": "job"})
    body = gateway_error(response, 503, "ServiceUnavailable.ViewNotReady")
    assert "71,137 of 100,000" in body["Message"]
    view.catching_up = None
    answer = signed_post(api, "ListOTATaskByJob", {"JobId": "job"}).json()
    assert answer["Code"] == "iot.ota.JobNotExist", answer


def test_command_carries_the_signed_nonce_and_a_replay_answer_is_400(
    api: Server, commands: RecordingCommands
) -> None:
    response = signed_post(api, "QueryProduct", {"ProductKey": "pk"}, nonce="n" * 32)
    assert response.json()["Success"] is True
    nonce = commands.calls[-1]["nonce"]
    date_ms, access_key, value = nonce.split("/")
    assert len(date_ms) == 13 and access_key == AK and value == "n" * 32
    # What the command agent answers when another API process already used the nonce.
    commands.answer = CommandResult("r", False, "SignatureNonceUsed", "used already", None)
    gateway_error(signed_post(api, "QueryProduct", {"ProductKey": "pk"}), 400, "SignatureNonceUsed")


def test_command_timeout_is_a_json_503(api: Server, commands: RecordingCommands) -> None:
    commands.answer = CommandTimeout("no outcome")
    gateway_error(signed_post(api, "QueryProduct", {"ProductKey": "pk"}), 503, "ServiceUnavailable")


def test_idle_keep_alive_connection_after_a_request_is_not_answered_408(api: Server) -> None:
    body = b"ProductKey=pk"
    head = signed_head(api, "QueryProduct", body, content_length=len(body))
    # Headers and body in two writes, then the connection stays idle past the timeout.
    with socket.create_connection(("127.0.0.1", api.port)) as sock:
        sock.sendall(head)
        sock.sendall(body)
        sock.settimeout(0.2)
        received = b""
        deadline = time.monotonic() + 3.0  # header timeout is 1 s in these tests
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                break
            received += chunk
    assert received.startswith(b"HTTP/1.1 200"), received[:200]
    # Only a second status line would be a 408: a random RequestId may contain "408".
    assert received.count(b"HTTP/1.1 ") == 1, received
