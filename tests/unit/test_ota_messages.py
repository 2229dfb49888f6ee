"""The pure MQTT <-> record translation of the connectors (no broker, no Kafka)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.device_json import MAX_PAYLOAD_BYTES, MalformedPayload
from connectors.download_frames import MQTT_DOWNLOAD_MAX_BYTES, mqtt_stream_ids
from connectors.ota_messages import MAX_DESC_CHARS, build_upgrade_message, needs_url, parse_report
from otaflow.codec import codec

NOW = 1_700_000_000_123
INFORM = "/ota/device/inform/pk1/dev-1"
PROGRESS = "/ota/device/progress/pk1/dev-1"
GET = "/sys/pk1/dev-1/thing/ota/firmware/get"


def js(value: Any) -> bytes:
    return json.dumps(value).encode()


def roundtrip(record: dict[str, Any]) -> dict[str, Any]:
    return codec().decode_as("DeviceReport", codec().encode("DeviceReport", record))


# --------------------------------------------------------------------------- parse_report


def test_inform_becomes_a_version_report_with_identity_from_the_topic() -> None:
    payload = js(
        {
            "id": "123",
            "params": {"version": "1.0.1", "module": "MCU"},
            "productKey": "evil",
            "deviceName": "other",
        }
    )
    record = parse_report(INFORM, payload, NOW)
    assert record == {
        "product_key": "pk1",
        "device_name": "dev-1",
        "kind": "VERSION",
        "module": "MCU",
        "version": "1.0.1",
        "step": None,
        "desc": None,
        "message_id": "123",
        "event_time": NOW,
    }
    assert roundtrip(record) == record


def test_inform_without_module_is_the_default_module_and_int_id_becomes_a_string() -> None:
    record = parse_report(INFORM, js({"id": 7, "params": {"version": "2.0"}}), NOW)
    assert record["module"] == "default"
    assert record["message_id"] == "7"


def test_id_is_optional_for_reports() -> None:
    assert parse_report(INFORM, js({"params": {"version": "2.0"}}), NOW)["message_id"] is None


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        ("-1", -1),
        ("-4", -4),
        ("0", 0),
        ("100", 100),
        ("050", 50),
        (37, 37),
        (-2, -2),
    ],
)
def test_progress_step_from_string_or_int(step: object, expected: int) -> None:
    record = parse_report(PROGRESS, js({"id": "1", "params": {"step": step, "desc": "ok"}}), NOW)
    assert record["kind"] == "PROGRESS"
    assert record["step"] == expected
    assert record["desc"] == "ok"
    assert record["version"] is None


def test_progress_desc_is_cut_to_128_characters() -> None:
    record = parse_report(PROGRESS, js({"params": {"step": "5", "desc": "é" * 500}}), NOW)
    assert record["desc"] == "é" * MAX_DESC_CHARS


def test_firmware_get_uses_params_module_and_ignores_the_protocol_version() -> None:
    payload = js(
        {
            "id": "42",
            "version": "1.0",
            "params": {"module": "MCU"},
            "method": "thing.ota.firmware.get",
        }
    )
    record = parse_report(GET, payload, NOW)
    assert record["kind"] == "FIRMWARE_GET"
    assert record["module"] == "MCU"
    assert record["version"] is None
    assert record["message_id"] == "42"
    assert (record["product_key"], record["device_name"]) == ("pk1", "dev-1")


def test_firmware_get_without_params_asks_for_the_default_module() -> None:
    assert parse_report(GET, js({"id": "1"}), NOW)["module"] == "default"


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        (INFORM, b"\xff\xfe", "not UTF-8"),
        (INFORM, b"{nope", "not JSON"),
        (INFORM, b"", "not JSON"),
        (INFORM, b"[1, 2]", "must be a JSON object, got array"),
        (INFORM, b'"s"', "must be a JSON object, got string"),
        (INFORM, b"null", "must be a JSON object, got null"),
        (INFORM, js({"id": "1"}), "missing 'params'"),
        (INFORM, js({"params": [1]}), "'params' must be a JSON object, got array"),
        (INFORM, js({"params": {}}), "missing 'params.version'"),
        (INFORM, js({"params": {"version": 1.2}}), "'params.version' must be a string, got number"),
        (INFORM, js({"params": {"version": "  "}}), "non-blank"),
        (INFORM, js({"params": {"version": "v" * 65}}), "1-64"),
        (INFORM, js({"params": {"version": "1", "module": 3}}), "'params.module' must be a string"),
        (INFORM, js({"params": {"version": "1", "module": ""}}), "'params.module' must be 1-64"),
        (
            INFORM,
            js({"id": True, "params": {"version": "1"}}),
            "'id' must be a string or an integer",
        ),
        (INFORM, js({"id": [], "params": {"version": "1"}}), "'id' must be a string or an integer"),
        (INFORM, js({"id": "", "params": {"version": "1"}}), "'id' must be 1-64"),
        (INFORM, b'{"params":{"version":"\\ud800"}}', "unpaired surrogate"),
        (PROGRESS, js({"params": {"desc": "x"}}), "missing 'params.step'"),
        (PROGRESS, js({"params": {"step": "abc"}}), "is not an integer"),
        (PROGRESS, js({"params": {"step": " 5"}}), "is not an integer"),
        (PROGRESS, js({"params": {"step": "1_0"}}), "is not an integer"),
        (PROGRESS, js({"params": {"step": "1.5"}}), "is not an integer"),
        (PROGRESS, js({"params": {"step": 5.0}}), "must be an integer, got the number 5.0"),
        (PROGRESS, js({"params": {"step": True}}), "got boolean"),
        (PROGRESS, js({"params": {"step": None}}), "got null"),
        (PROGRESS, js({"params": {"step": 101}}), "101 out of range [-4, 100]"),
        (PROGRESS, js({"params": {"step": "-5"}}), "-5 out of range"),
        (PROGRESS, js({"params": {"step": 10**30}}), "out of range"),
        (PROGRESS, js({"params": {"step": 1, "desc": 5}}), "'params.desc' must be a string"),
        (GET, js({"params": {}}), "missing 'id'"),
        (GET, js({"id": "1", "params": "MCU"}), "'params' must be a JSON object, got string"),
        ("/ota/device/inform/pk1", js({"params": {"version": "1"}}), "not a device OTA report"),
        ("/ota/device/upgrade/pk/dn", js({"params": {"version": "1"}}), "not a device OTA report"),
        ("/ota/device/inform//dn", js({"params": {"version": "1"}}), "empty product key"),
        ("/ota/device/inform/pk/", js({"params": {"version": "1"}}), "empty device name"),
        ("/sys/pk/+/thing/ota/firmware/get", js({"id": "1"}), "contains '+'"),
        (INFORM, b"[" * 100_000, "exceeds the 65536-byte limit"),
        (INFORM, b" " * (MAX_PAYLOAD_BYTES + 1), "exceeds"),
        (INFORM, b"[" * 30_000 + b"]" * 30_000, "nested too deeply"),
        (INFORM, b'{"id": ' + b"9" * 5000 + b"}", "not JSON"),
    ],
)
def test_malformed_payloads_raise_with_a_precise_reason(
    topic: str, payload: bytes, reason: str
) -> None:
    with pytest.raises(MalformedPayload) as info:
        parse_report(topic, payload, NOW)
    assert reason in info.value.reason


def test_payload_at_the_size_limit_is_still_parsed() -> None:
    body = {"params": {"version": "1"}, "pad": ""}
    body["pad"] = "x" * (MAX_PAYLOAD_BYTES - len(js(body)))
    payload = js(body)
    assert len(payload) == MAX_PAYLOAD_BYTES
    assert parse_report(INFORM, payload, NOW)["version"] == "1"


# --------------------------------------------------------------------------- fuzzing

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=80),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=25,
)
# Values in the places the parser looks at, so the interesting branches get hit.
field_values = (
    st.none()
    | st.booleans()
    | st.integers(-10, 200)
    | st.floats()
    | st.text(max_size=70)
    | st.sampled_from(["-1", "100", "1.0", "abc", "", "MCU"])
    | st.lists(st.integers(), max_size=2)
    | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
)
shaped_bodies = st.fixed_dictionaries(
    {},
    optional={
        "id": field_values,
        "version": field_values,
        "params": st.fixed_dictionaries(
            {},
            optional={
                "version": field_values,
                "module": field_values,
                "step": field_values,
                "desc": field_values,
            },
        )
        | field_values,
    },
)
topics = st.sampled_from([INFORM, PROGRESS, GET]) | st.builds(
    "/".join,
    st.lists(
        st.sampled_from(
            [
                "",
                "ota",
                "device",
                "inform",
                "progress",
                "sys",
                "thing",
                "firmware",
                "get",
                "pk",
                "+",
                "\ud800",
            ]
        ),
        max_size=8,
    ),
)


def check_parse(topic: str, payload: bytes) -> None:
    try:
        record = parse_report(topic, payload, NOW)
    except MalformedPayload as exc:
        assert exc.reason
        return
    assert roundtrip(record) == record  # whatever parses is a valid DeviceReport
    assert record["kind"] in ("VERSION", "PROGRESS", "FIRMWARE_GET")


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(topic=topics, payload=st.binary(max_size=300))
def test_random_bytes_parse_or_raise_malformed(topic: str, payload: bytes) -> None:
    check_parse(topic, payload)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(topic=topics, body=json_values)
def test_random_json_parses_or_raises_malformed(topic: str, body: object) -> None:
    check_parse(topic, json.dumps(body).encode())


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(topic=st.sampled_from([INFORM, PROGRESS, GET]), body=shaped_bodies)
def test_report_shaped_json_parses_or_raises_malformed(topic: str, body: object) -> None:
    check_parse(topic, json.dumps(body).encode())


# --------------------------------------------------------------------------- build_upgrade_message


def firmware(**overrides: Any) -> dict[str, Any]:
    base = {
        "firmware_id": "fw-1",
        "module": "default",
        "version": "2.0.0",
        "src_version": None,
        "is_diff": False,
        "size": 1234,
        "sign_method": "SHA256",
        "sign": "ab" * 32,
        "md5": None,
        "file_path": "pk1/fw-1.bin",
        "download_protocol": "HTTPS",
    }
    return base | overrides


def notification(**overrides: Any) -> dict[str, Any]:
    base = {
        "product_key": "pk1",
        "device_name": "dev-1",
        "kind": "PUSH",
        "reply_to": None,
        "task_id": "task-9",
        "batch_id": "batch-1",
        "firmware": firmware(),
        "ext_data": {},
        "event_time": 1626969597470,
    }
    return base | overrides


def build(n: dict[str, Any], url: str | None = "https://pkg/x?s=1") -> tuple[str, dict[str, Any]]:
    # Whatever the engine emits must also survive the Avro round trip.
    n = codec().decode_as("Notification", codec().encode("Notification", n))
    topic, payload = build_upgrade_message(n, url)
    return topic, json.loads(payload)


def test_push_over_https() -> None:
    topic, message = build(notification())
    assert topic == "/ota/device/upgrade/pk1/dev-1"
    assert message == {
        "code": "1000",
        "id": 1626969597470,
        "message": "success",
        "data": {
            "size": 1234,
            "version": "2.0.0",
            "url": "https://pkg/x?s=1",
            "signMethod": "SHA256",
            "sign": "ab" * 32,
            "taskId": "task-9",
        },
    }


def test_payload_is_compact_utf8_json() -> None:
    _, payload = build_upgrade_message(notification(ext_data={"k": "é"}), "u")
    assert b" " not in payload
    assert "é".encode() in payload


def test_push_with_md5_diff_module_and_ext_data() -> None:
    fw = firmware(sign_method="Md5", sign="0" * 32, is_diff=True, src_version="1.0", module="MCU")
    ext = {"region": "eu", "_package_udi": '{"k":"v"}'}
    _, message = build(notification(firmware=fw, ext_data=ext))
    data = message["data"]
    assert data["signMethod"] == "Md5"
    assert data["md5"] == "0" * 32
    assert data["isDiff"] == 1
    assert data["module"] == "MCU"
    assert data["extData"] == ext


@pytest.mark.parametrize(
    ("given_method", "wire"),
    [
        ("SHA256", "SHA256"),
        ("sha256", "SHA256"),
        ("MD5", "Md5"),
        ("md5", "Md5"),
        ("Md5", "Md5"),
    ],
)
def test_sign_method_spelling_is_the_one_sdks_accept(given_method: str, wire: str) -> None:
    _, message = build(notification(firmware=firmware(sign_method=given_method)))
    assert message["data"]["signMethod"] == wire


def test_sha256_with_md5_present_carries_both() -> None:
    _, message = build(notification(firmware=firmware(md5="f" * 32)))
    assert message["data"]["sign"] == "ab" * 32
    assert message["data"]["md5"] == "f" * 32


def test_full_package_has_no_is_diff_and_default_module_no_module_and_no_ext_data() -> None:
    _, message = build(notification())
    assert {"isDiff", "module", "extData", "md5"}.isdisjoint(message["data"])


def test_mqtt_download_has_stream_ids_and_no_url() -> None:
    n = notification(firmware=firmware(download_protocol="MQTT", size=MQTT_DOWNLOAD_MAX_BYTES))
    assert not needs_url(n)
    _, message = build(n, url=None)
    data = message["data"]
    assert "url" not in data
    assert data["dProtocol"] == "mqtt"
    assert (data["streamId"], data["streamFileId"]) == mqtt_stream_ids("fw-1")
    assert isinstance(data["streamId"], int) and data["streamId"] > 0


def test_mqtt_download_over_16_mib_falls_back_to_https() -> None:
    n = notification(firmware=firmware(download_protocol="MQTT", size=MQTT_DOWNLOAD_MAX_BYTES + 1))
    assert needs_url(n)
    _, message = build(n)
    assert message["data"]["url"] == "https://pkg/x?s=1"
    assert "dProtocol" not in message["data"]


def test_stream_ids_are_stable_and_differ_between_firmwares() -> None:
    assert mqtt_stream_ids("fw-1") == mqtt_stream_ids("fw-1")
    assert mqtt_stream_ids("fw-1") != mqtt_stream_ids("fw-2")


def test_pull_reply_with_a_pending_update() -> None:
    topic, message = build(notification(kind="PULL_REPLY", reply_to="77"))
    assert topic == "/sys/pk1/dev-1/thing/ota/firmware/get_reply"
    assert message["id"] == "77"
    assert message["code"] == 200
    assert message["data"] == build(notification())[1]["data"]
    assert set(message) == {"id", "code", "data"}


def test_pull_reply_with_nothing_pending_has_empty_data() -> None:
    n = notification(kind="PULL_REPLY", reply_to="78", firmware=None, task_id=None, batch_id=None)
    assert not needs_url(n)
    topic, message = build(n, url=None)
    assert topic == "/sys/pk1/dev-1/thing/ota/firmware/get_reply"
    assert message == {"id": "78", "code": 200, "data": {}}


@pytest.mark.parametrize(
    ("n", "url", "reason"),
    [
        (notification(firmware=None), None, "PUSH notification without firmware"),
        (notification(), None, "no download URL"),
        (notification(firmware=firmware(sign_method="CRC32")), "u", "unsupported sign method"),
        (notification(product_key="a+b"), "u", "cannot be an MQTT topic level"),
        (notification(device_name="a/b"), "u", "cannot be an MQTT topic level"),
        (notification(device_name=""), "u", "no device_name"),
        (notification(kind="OTHER"), "u", "unknown notification kind"),
    ],
)
def test_unusable_notifications_raise_value_error(
    n: dict[str, Any], url: str | None, reason: str
) -> None:
    with pytest.raises(ValueError, match=reason.replace("+", r"\+")):
        build_upgrade_message(n, url)
