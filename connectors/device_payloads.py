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
from dataclasses import dataclass
from typing import Any

import orjson

from otaflow.control.registry import DEVICE_NAME

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
            return kind, _level(levels[4], "product key"), _device_name(levels[5])
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
        return "FIRMWARE_GET", _level(levels[2], "product key"), _device_name(levels[3])
    raise MalformedPayload(f"topic {mqtt_topic!r} is not a device OTA report topic")


_REPORTS = ("inform", "progress")
_GET = ["thing", "ota", "firmware", "get"]


def _device_name(value: str) -> str:
    """The platform's rule for device names (4-32 characters: letters, digits and
    ``_ - @ . :``); anything else would grow the device state without bound."""
    name = _level(value, "device name")
    if not DEVICE_NAME.fullmatch(name):
        raise MalformedPayload(
            f"device name {name[:40]!r} ({len(name)} characters) in topic breaks the "
            "platform's rule: 4-32 characters of letters, digits, '_', '-', '@', '.', ':'"
        )
    return name


def _level(value: str, what: str) -> str:
    if not value:
        raise MalformedPayload(f"empty {what} in topic")
    if not _BAD_LEVEL_CHARS.isdisjoint(value):
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
    if "/" in value or not _BAD_LEVEL_CHARS.isdisjoint(value):
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


# --------------------------------------------------------------------------- MQTT file download
#
# A device told ``"dProtocol":"mqtt"`` fetches the package in blocks (Link SDK for C,
# ``components/mqtt-download``)::
#
#   /sys/{pk}/{dn}/thing/file/download        {"id":"1","version":"1.0","params":{
#       "fileToken":"default","fileInfo":{"streamId":S,"fileId":F},
#       "fileBlock":{"size":Z,"offset":O}}}
#   /sys/{pk}/{dn}/thing/file/download_reply  binary frame:
#       [header length: 2 bytes, big endian][header: JSON][bSize bytes of the file]
#       [CRC-16/IBM of those bytes: 2 bytes, little endian]
#   header: {"id":"1","code":200,"data":{"bSize":Z',"bOffset":O,"fileLength":L,
#            "fileToken":"default"}}
#
# The SDK reads the header length as ``p[0] << 8 | p[1]``, requires
# ``len(frame) == 2 + header length + bSize + 2``, and compares the CRC (poly 0x8005
# reflected = 0xA001, init 0, no final xor: CRC-16/ARC) over the bytes only, reading
# the trailer as a native ``uint16_t`` (little endian on its targets; the same SDK's
# mqtt-upload writes that trailer low byte first). Any code other than 200 makes it
# ask again (three times, then the download fails), so errors are answered with the
# same frame shape, no bytes, and a ``message``.

DOWNLOAD_CODE_OK = 200
# Error codes: the SDK only tests "== 200". Alink's generic codes are used: 460
# "request parameter error", 500 "server error"; 404 names a stream otaflow does not
# serve.
DOWNLOAD_CODE_BAD_REQUEST = 460
DOWNLOAD_CODE_UNKNOWN_STREAM = 404
DOWNLOAD_CODE_SERVER_ERROR = 500
# Largest block one request may ask for (bounds memory per request); the SDK asks
# for 5 KiB by default.
MAX_DOWNLOAD_BLOCK = 128 * 1024
# The SDK copies the echoed fileToken into a 128-byte buffer: never echo more.
MAX_FILE_TOKEN_CHARS = 64
MAX_DOWNLOAD_REQUEST_BYTES = 4096


def _crc16_ibm_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC16_IBM_TABLE = _crc16_ibm_table()


def crc16_ibm(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC-16/IBM as the Link SDK computes it (reflected 0x8005, init 0): "123456789" -> 0xBB3D."""
    table = _CRC16_IBM_TABLE
    for byte in data:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc


def file_download_request_topic(product_key: str, device_name: str) -> str:
    return f"/sys/{product_key}/{device_name}/thing/file/download"


def file_download_reply_topic(product_key: str, device_name: str) -> str:
    return f"/sys/{product_key}/{device_name}/thing/file/download_reply"


@dataclass(frozen=True)
class DownloadRequest:
    """One ``thing/file/download`` request; identity from the topic."""

    product_key: str
    device_name: str
    request_id: str
    file_token: str | None
    stream_id: int
    file_id: int
    size: int
    offset: int

    @property
    def reply_topic(self) -> str:
        return file_download_reply_topic(self.product_key, self.device_name)


class MalformedDownloadRequest(MalformedPayload):
    """A download request otaflow cannot use. Whatever could be read before the fault
    (who asked, under which id) is kept, so the device still gets an error reply."""

    def __init__(
        self,
        reason: str,
        reply_topic: str | None = None,
        request_id: str | None = None,
        file_token: str | None = None,
    ) -> None:
        super().__init__(reason)
        self.reply_topic = reply_topic
        self.request_id = request_id
        self.file_token = file_token


def device_of_download_topic(mqtt_topic: str) -> tuple[str, str]:
    """``(product_key, device_name)`` of ``/sys/{pk}/{dn}/thing/file/download``."""
    levels = mqtt_topic.split("/")
    if (
        len(levels) == 7
        and levels[:2] == ["", "sys"]
        and levels[4:]
        == [
            "thing",
            "file",
            "download",
        ]
    ):
        return _level(levels[2], "product key"), _level(levels[3], "device name")
    raise MalformedPayload(f"topic {mqtt_topic!r} is not a file download request topic")


def parse_download_request(mqtt_topic: str, payload: bytes) -> DownloadRequest:
    """Read one request, or raise :class:`MalformedDownloadRequest` (``MalformedPayload``).

    Lenient where the official SDK is sloppy: it writes ``"fileId":F,}`` (a trailing
    comma), which strict JSON refuses.
    """
    try:
        product_key, device_name = device_of_download_topic(mqtt_topic)
    except MalformedPayload as exc:
        raise MalformedDownloadRequest(exc.reason) from None
    reply_topic = file_download_reply_topic(product_key, device_name)
    if len(payload) > MAX_DOWNLOAD_REQUEST_BYTES:
        raise MalformedDownloadRequest(
            f"request of {len(payload)} bytes exceeds {MAX_DOWNLOAD_REQUEST_BYTES}", reply_topic
        )
    try:
        body = _json_object(payload)
    except MalformedPayload as exc:
        try:
            body = _json_object(_strip_trailing_commas(payload))
        except MalformedPayload:
            raise MalformedDownloadRequest(exc.reason, reply_topic) from None
    try:
        request_id = _message_id(body, required=True)
    except MalformedPayload as exc:
        raise MalformedDownloadRequest(exc.reason, reply_topic) from None
    assert request_id is not None

    def bad(reason: str, token: str | None = None) -> MalformedDownloadRequest:
        return MalformedDownloadRequest(reason, reply_topic, request_id, token)

    params = body.get("params")
    if not isinstance(params, dict):
        raise bad(f"'params' must be a JSON object, got {_type_name(params)}")
    token = params.get("fileToken")
    if token is not None and (
        not isinstance(token, str) or not 0 < len(token) <= MAX_FILE_TOKEN_CHARS
    ):
        raise bad(f"'params.fileToken' must be a string of 1-{MAX_FILE_TOKEN_CHARS} characters")
    if token is not None:
        try:
            token = _utf8(token, "'params.fileToken'")
        except MalformedPayload as exc:
            raise bad(exc.reason) from None
    file_info = params.get("fileInfo")
    block = params.get("fileBlock")
    if not isinstance(file_info, dict):
        raise bad(f"'params.fileInfo' must be a JSON object, got {_type_name(file_info)}", token)
    if not isinstance(block, dict):
        raise bad(f"'params.fileBlock' must be a JSON object, got {_type_name(block)}", token)
    try:
        stream_id = _non_negative_int(file_info, "streamId", "params.fileInfo")
        file_id = _non_negative_int(file_info, "fileId", "params.fileInfo")
        size = _non_negative_int(block, "size", "params.fileBlock")
        offset = _non_negative_int(block, "offset", "params.fileBlock")
    except MalformedPayload as exc:
        raise bad(exc.reason, token) from None
    if not 0 < size <= MAX_DOWNLOAD_BLOCK:
        raise bad(f"'params.fileBlock.size' {size} out of range [1, {MAX_DOWNLOAD_BLOCK}]", token)
    return DownloadRequest(
        product_key, device_name, request_id, token, stream_id, file_id, size, offset
    )


def _non_negative_int(obj: Mapping[str, Any], key: str, where: str) -> int:
    if key not in obj:
        raise MalformedPayload(f"missing '{where}.{key}'")
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedPayload(f"'{where}.{key}' must be an integer, got {_type_name(value)}")
    if not 0 <= value < 2**32:
        raise MalformedPayload(f"'{where}.{key}' {value} out of range [0, 2^32)")
    return value


def _strip_trailing_commas(payload: bytes) -> bytes:
    """``{"a":1,}`` -> ``{"a":1}`` outside strings (what the official SDK sends)."""
    out = bytearray()
    in_string = escaped = False
    pending_comma: int | None = None  # index in out of a comma not yet known to be trailing
    for byte in payload:
        if in_string:
            out.append(byte)
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
            continue
        if byte in b" \t\r\n":
            out.append(byte)
            continue
        if byte in b"}]" and pending_comma is not None:
            del out[pending_comma]
        pending_comma = None
        if byte == 0x2C:  # comma
            pending_comma = len(out)
        elif byte == 0x22:
            in_string = True
        out.append(byte)
    return bytes(out)


def _frame(header: Mapping[str, Any], data: bytes, crc: int | None = None) -> bytes:
    head = orjson.dumps(header)
    if len(head) > 0xFFFF:
        raise ValueError("download reply header longer than 65535 bytes")
    if crc is None:
        crc = crc16_ibm(data)
    return b"".join((len(head).to_bytes(2, "big"), head, data, crc.to_bytes(2, "little")))


def build_download_block(
    request: DownloadRequest, data: bytes, file_length: int, crc: int | None = None
) -> bytes:
    """The ``download_reply`` frame carrying ``data`` (the bytes at ``request.offset``).

    ``crc``: ``crc16_ibm(data)`` if the caller has it already (computed here if not).
    """
    block: dict[str, Any] = {
        "bSize": len(data),
        "bOffset": request.offset,
        "fileLength": file_length,
    }
    if request.file_token is not None:
        block["fileToken"] = request.file_token
    return _frame({"id": request.request_id, "code": DOWNLOAD_CODE_OK, "data": block}, data, crc)


def build_download_error(
    request_id: str | None, code: int, message: str, file_token: str | None = None
) -> bytes:
    """An error ``download_reply``: the same frame with no bytes (so the SDK can parse it)."""
    header: dict[str, Any] = {}
    if request_id is not None:
        header["id"] = request_id
    header["code"] = code
    header["message"] = message[:200]
    header["data"] = {"fileToken": file_token} if file_token is not None else {}
    return _frame(header, b"")


@dataclass(frozen=True)
class DownloadReply:
    """A parsed ``download_reply`` frame (what a device, or a test, reads)."""

    header: dict[str, Any]
    data: bytes

    @property
    def code(self) -> int:
        return int(self.header["code"])


def parse_download_reply(frame: bytes) -> DownloadReply:
    """Check a frame the way the Link SDK does (lengths, CRC); ``ValueError`` if bad."""
    if len(frame) < 4:
        raise ValueError(f"frame of {len(frame)} bytes is too short")
    head_len = int.from_bytes(frame[:2], "big")
    if 2 + head_len + 2 > len(frame):
        raise ValueError(f"header length {head_len} exceeds the frame ({len(frame)} bytes)")
    header = json.loads(frame[2 : 2 + head_len])
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    data = frame[2 + head_len : -2]
    size = header.get("data", {}).get("bSize", 0) if header.get("code") == 200 else 0
    if len(data) != size:
        raise ValueError(f"frame carries {len(data)} bytes, header says {size}")
    crc = int.from_bytes(frame[-2:], "little")
    if crc != crc16_ibm(data):
        raise ValueError(f"CRC {crc:#06x} does not match the bytes ({crc16_ibm(data):#06x})")
    return DownloadReply(header, bytes(data))
