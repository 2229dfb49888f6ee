"""Pure translation between the platform's MQTT device payloads and otaflow records.

Nothing here does I/O or reads a clock: the connectors (``connectors.ingress`` and
``connectors.egress``) pass the time and the signed URL in, which keeps every rule
about the wire format in one unit-testable place.

Device -> cloud (:func:`parse_report`), see ``device-protocol.md``::

    /ota/device/inform/{pk}/{dn}            {"id":"1","params":{"version":"1.0.1",
                                             "module":"MCU"}}
    /ota/device/progress/{pk}/{dn}          {"id":"2","params":{"step":"-1","desc":"...",
                                             "module":"MCU"}}
    /sys/{pk}/{dn}/thing/ota/firmware/get   {"id":"3","version":"1.0","params":{"module":"MCU"},
                                             "method":"thing.ota.firmware.get"}

Cloud -> device (:func:`build_upgrade_message`)::

    /ota/device/upgrade/{pk}/{dn}                 {"code":"1000","data":{...},"id":<ms>,
                                                   "message":"success"}
    /sys/{pk}/{dn}/thing/ota/firmware/get_reply   {"id":"<request id>","code":200,"data":{...}|{}}

The device's identity always comes from the MQTT topic, never from the payload: the
broker's ACL ties a client to its own topics, while the payload is whatever the
device (or an attacker holding its credentials) chose to write.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

import orjson

# A report is a few hundred bytes; anything this large is not one of ours and
# should not be parsed (nor kept whole in the dead-letter topic, see ingress).
MAX_PAYLOAD_BYTES = 64 * 1024
MAX_DESC_CHARS = 128
# Platform limits: module names and versions are at most 64 characters.
MAX_MODULE_CHARS = 64
MAX_VERSION_CHARS = 64
MAX_ID_CHARS = 64
MIN_STEP, MAX_STEP = -4, 100
DEFAULT_MODULE = "default"
# Devices can fetch a package over MQTT (thing/file/download) up to this size.
MQTT_DOWNLOAD_MAX_BYTES = 16 * 1024 * 1024

_STEP_RE = re.compile(r"-?[0-9]{1,3}")
# A topic level we accept as product key / device name: non-empty, no MQTT
# wildcards, no NUL (the separator '/' cannot occur inside a level by construction).
_BAD_LEVEL_CHARS = frozenset("+#\x00")

_SIGN_METHODS = {"sha256": "SHA256", "md5": "Md5"}


class MalformedPayload(ValueError):
    """A device message otaflow cannot use; ``reason`` says why, for the dead-letter topic."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------- topics


def report_kind_of_topic(mqtt_topic: str) -> tuple[str, str, str]:
    """``(kind, product_key, device_name)`` of a device -> cloud OTA topic."""
    levels = mqtt_topic.split("/")
    # "/ota/device/inform/pk/dn" splits into ["", "ota", "device", "inform", "pk", "dn"].
    if len(levels) == 6 and levels[:3] == ["", "ota", "device"]:
        kind = {"inform": "VERSION", "progress": "PROGRESS"}.get(levels[3])
        if kind is not None:
            return kind, _level(levels[4], "product key"), _level(levels[5], "device name")
    if (
        len(levels) == 8
        and levels[:2] == ["", "sys"]
        and levels[4:]
        == [
            "thing",
            "ota",
            "firmware",
            "get",
        ]
    ):
        return "FIRMWARE_GET", _level(levels[2], "product key"), _level(levels[3], "device name")
    raise MalformedPayload(f"topic {mqtt_topic!r} is not a device OTA report topic")


def _level(value: str, what: str) -> str:
    if not value:
        raise MalformedPayload(f"empty {what} in topic")
    if any(ch in _BAD_LEVEL_CHARS for ch in value):
        raise MalformedPayload(f"{what} {value!r} in topic contains '+', '#' or NUL")
    return _utf8(value, f"{what} in topic")


def _utf8(value: str, what: str) -> str:
    """JSON strings may hold unpaired surrogates (``"\\ud800"``); Avro strings may not."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise MalformedPayload(f"{what} is not valid Unicode (unpaired surrogate)") from None
    return value


def upgrade_topic(product_key: str, device_name: str) -> str:
    return f"/ota/device/upgrade/{product_key}/{device_name}"


def firmware_get_reply_topic(product_key: str, device_name: str) -> str:
    return f"/sys/{product_key}/{device_name}/thing/ota/firmware/get_reply"


# --------------------------------------------------------------------------- ingress


def parse_report(mqtt_topic: str, payload: bytes, now_ms: int) -> dict[str, Any]:
    """Turn one device message into a ``DeviceReport`` record, or raise :class:`MalformedPayload`.

    ``now_ms`` becomes ``event_time`` (wall clock at ingress: device clocks are not
    trusted). ``desc`` longer than 128 characters is cut, not refused: losing the
    progress step over a chatty description would be worse.
    """
    kind, product_key, device_name = report_kind_of_topic(mqtt_topic)
    body = _json_object(payload)
    message_id = _message_id(body, required=kind == "FIRMWARE_GET")
    params = body.get("params")
    if params is None and kind == "FIRMWARE_GET":
        params = {}  # "which update is pending for the default module?"
    if not isinstance(params, dict):
        raise MalformedPayload(
            f"'params' must be a JSON object, got {_type_name(params)}"
            if "params" in body
            else "missing 'params' object"
        )
    record: dict[str, Any] = {
        "product_key": product_key,
        "device_name": device_name,
        "kind": kind,
        "module": _module(params),
        "version": None,
        "step": None,
        "desc": None,
        "message_id": message_id,
        "event_time": now_ms,
    }
    if kind == "VERSION":
        record["version"] = _version(params)
    elif kind == "PROGRESS":
        record["step"] = _step(params)
        record["desc"] = _desc(params)
    return record


def _json_object(payload: bytes) -> dict[str, Any]:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise MalformedPayload(
            f"payload of {len(payload)} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit"
        )
    try:
        text = bytes(payload).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedPayload(f"payload is not UTF-8: {exc}") from None
    try:
        body = json.loads(text)
    except RecursionError:
        raise MalformedPayload("payload is not JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, or an integer literal with too many digits
        raise MalformedPayload(f"payload is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise MalformedPayload(f"payload must be a JSON object, got {_type_name(body)}")
    return body


def _message_id(body: Mapping[str, Any], *, required: bool) -> str | None:
    raw = body.get("id")
    if raw is None:
        if required:
            raise MalformedPayload("missing 'id' (needed to answer the request)")
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise MalformedPayload(f"'id' must be a string or an integer, got {_type_name(raw)}")
    text = str(raw)
    if not text or len(text) > MAX_ID_CHARS:
        raise MalformedPayload(f"'id' must be 1-{MAX_ID_CHARS} characters, got {len(text)}")
    return _utf8(text, "'id'")


def _module(params: Mapping[str, Any]) -> str:
    module = params.get("module")
    if module is None:
        return DEFAULT_MODULE
    if not isinstance(module, str):
        raise MalformedPayload(f"'params.module' must be a string, got {_type_name(module)}")
    if not module or len(module) > MAX_MODULE_CHARS:
        raise MalformedPayload(
            f"'params.module' must be 1-{MAX_MODULE_CHARS} characters, got {len(module)}"
        )
    return _utf8(module, "'params.module'")


def _version(params: Mapping[str, Any]) -> str:
    if "version" not in params:
        raise MalformedPayload("missing 'params.version'")
    version = params["version"]
    if not isinstance(version, str):
        raise MalformedPayload(f"'params.version' must be a string, got {_type_name(version)}")
    if not version.strip() or len(version) > MAX_VERSION_CHARS:
        raise MalformedPayload(
            f"'params.version' must be 1-{MAX_VERSION_CHARS} non-blank characters, "
            f"got {version[: MAX_VERSION_CHARS + 1]!r}"
        )
    return _utf8(version, "'params.version'")


def _step(params: Mapping[str, Any]) -> int:
    if "step" not in params:
        raise MalformedPayload("missing 'params.step'")
    raw = params["step"]
    if isinstance(raw, bool):
        raise MalformedPayload("'params.step' must be an integer or a string of one, got boolean")
    if isinstance(raw, int):
        step = raw
    elif isinstance(raw, str):
        if not _STEP_RE.fullmatch(raw):
            raise MalformedPayload(f"'params.step' {raw[:20]!r} is not an integer")
        step = int(raw)
    elif isinstance(raw, float):
        raise MalformedPayload(f"'params.step' must be an integer, got the number {raw!r}")
    else:
        raise MalformedPayload(
            f"'params.step' must be an integer or a string of one, got {_type_name(raw)}"
        )
    if not MIN_STEP <= step <= MAX_STEP:
        raise MalformedPayload(f"'params.step' {step} out of range [{MIN_STEP}, {MAX_STEP}]")
    return step


def _desc(params: Mapping[str, Any]) -> str | None:
    desc = params.get("desc")
    if desc is None:
        return None
    if not isinstance(desc, str):
        raise MalformedPayload(f"'params.desc' must be a string, got {_type_name(desc)}")
    return _utf8(desc[:MAX_DESC_CHARS], "'params.desc'")


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


# --------------------------------------------------------------------------- egress


def mqtt_stream_ids(firmware_id: str) -> tuple[int, int]:
    """``(streamId, streamFileId)`` for the MQTT download of a firmware: stable per firmware.

    Whatever answers ``thing/file/download`` must map them back with this function.
    """
    digest = hashlib.blake2b(firmware_id.encode("utf-8"), digest_size=8).digest()
    stream_id = int.from_bytes(digest[:4], "big") & 0x7FFFFFFF
    return stream_id or 1, 1


def uses_mqtt_download(firmware: Mapping[str, Any]) -> bool:
    protocol = str(firmware.get("download_protocol") or "HTTPS").upper()
    return protocol == "MQTT" and int(firmware["size"]) <= MQTT_DOWNLOAD_MAX_BYTES


def needs_url(notification: Mapping[str, Any]) -> bool:
    """Whether :func:`build_upgrade_message` needs a signed URL for this notification."""
    firmware = notification.get("firmware")
    return firmware is not None and not uses_mqtt_download(firmware)


def build_upgrade_message(notification: dict[str, Any], url: str | None) -> tuple[str, bytes]:
    """``(mqtt topic, payload)`` for one ``Notification`` record; ``ValueError`` if unusable.

    ``url`` is the signed download URL of ``firmware.file_path`` when
    :func:`needs_url` says so (ignored otherwise). The PUSH ``id`` is the
    notification's ``event_time`` so the function stays pure and a re-published
    notification carries the same id.
    """
    product_key = _device_level(notification.get("product_key"), "product_key")
    device_name = _device_level(notification.get("device_name"), "device_name")
    kind = notification.get("kind")
    firmware = notification.get("firmware")
    data = _upgrade_data(notification, firmware, url) if firmware is not None else {}
    if kind == "PUSH":
        if firmware is None:
            raise ValueError("PUSH notification without firmware")
        message: dict[str, Any] = {
            "code": "1000",
            "data": data,
            "id": int(notification["event_time"]),
            "message": "success",
        }
        topic = upgrade_topic(product_key, device_name)
    elif kind == "PULL_REPLY":
        reply_to = notification.get("reply_to")
        message = {
            "id": reply_to if reply_to is not None else str(notification["event_time"]),
            "code": 200,
            "data": data,
        }
        topic = firmware_get_reply_topic(product_key, device_name)
    else:
        raise ValueError(f"unknown notification kind {kind!r}")
    try:
        # orjson writes the same compact UTF-8 JSON as json.dumps(separators=(",", ":"),
        # ensure_ascii=False) in a fifteenth of the time (egress builds one per offer).
        payload = orjson.dumps(message)
    except orjson.JSONEncodeError as exc:  # e.g. an unpaired surrogate in ext_data
        raise ValueError(f"notification cannot be written as JSON: {exc}") from None
    return topic, payload


def _device_level(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"notification has no {what}")
    if "/" in value or any(ch in _BAD_LEVEL_CHARS for ch in value):
        raise ValueError(f"{what} {value!r} cannot be an MQTT topic level")
    return value


def _upgrade_data(
    notification: Mapping[str, Any], firmware: Mapping[str, Any], url: str | None
) -> dict[str, Any]:
    method = _SIGN_METHODS.get(str(firmware.get("sign_method") or "SHA256").lower())
    if method is None:
        raise ValueError(f"unsupported sign method {firmware.get('sign_method')!r}")
    data: dict[str, Any] = {"size": int(firmware["size"]), "version": firmware["version"]}
    if uses_mqtt_download(firmware):
        stream_id, stream_file_id = mqtt_stream_ids(firmware["firmware_id"])
        data["dProtocol"] = "mqtt"
        data["streamId"] = stream_id
        data["streamFileId"] = stream_file_id
    else:
        if not url:
            raise ValueError(f"no download URL for {firmware.get('file_path')!r}")
        data["url"] = url
    if firmware.get("is_diff"):
        data["isDiff"] = 1
    data["signMethod"] = method
    data["sign"] = firmware["sign"]
    md5 = firmware.get("md5") or (firmware["sign"] if method == "Md5" else None)
    if md5:
        data["md5"] = md5
    module = firmware.get("module") or DEFAULT_MODULE
    if module != DEFAULT_MODULE:
        data["module"] = module
    ext_data = dict(notification.get("ext_data") or {})
    if ext_data:
        data["extData"] = ext_data
    task_id = notification.get("task_id")
    if task_id is not None:
        data["taskId"] = task_id
    return data
