"""The platform's OTA MQTT messages: device reports in, update offers out (pure).
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

import re
from collections.abc import Mapping
from typing import Any

import orjson

from connectors.device_json import (
    BAD_LEVEL_CHARS,
    MalformedPayload,
    json_object,
    read_message_id,
    topic_level,
    type_name,
    utf8_text,
)
from connectors.download_frames import mqtt_stream_ids, uses_mqtt_download
from otaflow.control.registry import DEVICE_NAME

MAX_DESC_CHARS = 128
# Platform limits: module names and versions are at most 64 characters.
MAX_MODULE_CHARS = 64
MAX_VERSION_CHARS = 64
MIN_STEP, MAX_STEP = -4, 100
DEFAULT_MODULE = "default"

_STEP_RE = re.compile(r"-?[0-9]{1,3}")

_SIGN_METHODS = {"sha256": "SHA256", "md5": "Md5"}


# --------------------------------------------------------------------------- topics


def report_kind_of_topic(mqtt_topic: str) -> tuple[str, str, str]:
    """``(kind, product_key, device_name)`` of a device -> cloud OTA topic."""
    levels = mqtt_topic.split("/")
    # "/ota/device/inform/pk/dn" splits into ["", "ota", "device", "inform", "pk", "dn"].
    if len(levels) == 6 and levels[:3] == ["", "ota", "device"]:
        kind = {"inform": "VERSION", "progress": "PROGRESS"}.get(levels[3])
        if kind is not None:
            return kind, topic_level(levels[4], "product key"), _device_name(levels[5])
    if (len(levels) > 6 and levels[:3] == ["", "ota", "device"] and levels[3] in _REPORTS) or (
        len(levels) > 8 and levels[:2] == ["", "sys"] and levels[-4:] == _GET
    ):
        # The ingress subscribes to these deeper topics only to say why they are refused.
        raise MalformedPayload(
            f"topic {mqtt_topic[:200]!r} has a '/' in its product key or device name"
        )
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
        return "FIRMWARE_GET", topic_level(levels[2], "product key"), _device_name(levels[3])
    raise MalformedPayload(f"topic {mqtt_topic!r} is not a device OTA report topic")


_REPORTS = ("inform", "progress")
_GET = ["thing", "ota", "firmware", "get"]


def _device_name(value: str) -> str:
    """The platform's rule for device names (4-32 characters: letters, digits and
    ``_ - @ . :``); anything else would grow the device state without bound."""
    name = topic_level(value, "device name")
    if not DEVICE_NAME.fullmatch(name):
        raise MalformedPayload(
            f"device name {name[:40]!r} ({len(name)} characters) in topic breaks the "
            "platform's rule: 4-32 characters of letters, digits, '_', '-', '@', '.', ':'"
        )
    return name


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
    body = json_object(payload)
    message_id = read_message_id(body, required=kind == "FIRMWARE_GET")
    params = body.get("params")
    if params is None and kind == "FIRMWARE_GET":
        params = {}  # "which update is pending for the default module?"
    if not isinstance(params, dict):
        raise MalformedPayload(
            f"'params' must be a JSON object, got {type_name(params)}"
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


def _module(params: Mapping[str, Any]) -> str:
    module = params.get("module")
    if module is None:
        return DEFAULT_MODULE
    if not isinstance(module, str):
        raise MalformedPayload(f"'params.module' must be a string, got {type_name(module)}")
    if not module or len(module) > MAX_MODULE_CHARS:
        raise MalformedPayload(
            f"'params.module' must be 1-{MAX_MODULE_CHARS} characters, got {len(module)}"
        )
    return utf8_text(module, "'params.module'")


def _version(params: Mapping[str, Any]) -> str:
    if "version" not in params:
        raise MalformedPayload("missing 'params.version'")
    version = params["version"]
    if not isinstance(version, str):
        raise MalformedPayload(f"'params.version' must be a string, got {type_name(version)}")
    if not version.strip() or len(version) > MAX_VERSION_CHARS:
        raise MalformedPayload(
            f"'params.version' must be 1-{MAX_VERSION_CHARS} non-blank characters, "
            f"got {version[: MAX_VERSION_CHARS + 1]!r}"
        )
    return utf8_text(version, "'params.version'")


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
            f"'params.step' must be an integer or a string of one, got {type_name(raw)}"
        )
    if not MIN_STEP <= step <= MAX_STEP:
        raise MalformedPayload(f"'params.step' {step} out of range [{MIN_STEP}, {MAX_STEP}]")
    return step


def _desc(params: Mapping[str, Any]) -> str | None:
    desc = params.get("desc")
    if desc is None:
        return None
    if not isinstance(desc, str):
        raise MalformedPayload(f"'params.desc' must be a string, got {type_name(desc)}")
    return utf8_text(desc[:MAX_DESC_CHARS], "'params.desc'")


# --------------------------------------------------------------------------- egress


def needs_url(notification: Mapping[str, Any]) -> bool:
    """Whether :func:`build_upgrade_message` needs a signed URL for this notification."""
    firmware = notification.get("firmware")
    return firmware is not None and not uses_mqtt_download(firmware)


def build_upgrade_message(
    notification: dict[str, Any],
    url: str | None,
    file_urls: Mapping[str, str] | None = None,
) -> tuple[str, bytes]:
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
    data = _upgrade_data(notification, firmware, url, file_urls) if firmware is not None else {}
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
    if "/" in value or not BAD_LEVEL_CHARS.isdisjoint(value):
        raise ValueError(f"{what} {value!r} cannot be an MQTT topic level")
    return value


def _upgrade_data(
    notification: Mapping[str, Any],
    firmware: Mapping[str, Any],
    url: str | None,
    file_urls: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    method = _SIGN_METHODS.get(str(firmware.get("sign_method") or "SHA256").lower())
    if method is None:
        raise ValueError(f"unsupported sign method {firmware.get('sign_method')!r}")
    data: dict[str, Any] = {"size": int(firmware["size"]), "version": firmware["version"]}
    files = firmware.get("files") or []
    if files:
        # A package of several files (HTTPS only): files[] replaces url/sign/md5, as the
        # Link SDK for C reads it (fileName, fileSize, fileUrl, fileSign per file).
        urls = file_urls or {}
        missing = [f["file_path"] for f in files if not urls.get(f["file_path"])]
        if missing:
            raise ValueError(f"no download URL for {missing[0]!r}")
        data["size"] = sum(int(f["size"]) for f in files)
        data["files"] = [
            {
                "fileName": f["name"],
                "fileSize": int(f["size"]),
                "fileUrl": urls[f["file_path"]],
                "fileSign": f["sign"],
            }
            for f in files
        ]
    elif uses_mqtt_download(firmware):
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
    if not files:
        data["sign"] = firmware["sign"]
        md5 = firmware.get("md5") or (firmware["sign"] if method == "Md5" else None)
        if md5:
            data["md5"] = md5
    module = firmware.get("module") or DEFAULT_MODULE
    if module != DEFAULT_MODULE:
        data["module"] = module
    ext_data = dict(notification.get("ext_data") or {})
    if firmware.get("udi"):  # the package's Udi, where the platform's docs put it
        ext_data["_package_udi"] = firmware["udi"]
    if ext_data:
        data["extData"] = ext_data
    task_id = notification.get("task_id")
    if task_id is not None:
        data["taskId"] = task_id
    return data
