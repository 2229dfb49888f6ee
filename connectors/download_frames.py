"""The MQTT file-download protocol (``thing/file/download``): requests in, frames out (pure).

A device whose offer says ``"dProtocol":"mqtt"`` (:func:`uses_mqtt_download`, written
into the offer by :mod:`connectors.ota_messages`) fetches the package in blocks from
``connectors.file_download``, which reads requests and writes reply frames with this
module. Nothing here does I/O.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from connectors.device_json import (
    MalformedPayload,
    json_object,
    read_message_id,
    topic_level,
    type_name,
    utf8_text,
)

# Devices can fetch a package over MQTT (thing/file/download) up to this size.
MQTT_DOWNLOAD_MAX_BYTES = 16 * 1024 * 1024


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


# --------------------------------------------------------------------------- requests and frames
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
        return topic_level(levels[2], "product key"), topic_level(levels[3], "device name")
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
        body = json_object(payload)
    except MalformedPayload as exc:
        try:
            body = json_object(_strip_trailing_commas(payload))
        except MalformedPayload:
            raise MalformedDownloadRequest(exc.reason, reply_topic) from None
    try:
        request_id = read_message_id(body, required=True)
    except MalformedPayload as exc:
        raise MalformedDownloadRequest(exc.reason, reply_topic) from None
    assert request_id is not None

    def bad(reason: str, token: str | None = None) -> MalformedDownloadRequest:
        return MalformedDownloadRequest(reason, reply_topic, request_id, token)

    params = body.get("params")
    if not isinstance(params, dict):
        raise bad(f"'params' must be a JSON object, got {type_name(params)}")
    token = params.get("fileToken")
    if token is not None and (
        not isinstance(token, str) or not 0 < len(token) <= MAX_FILE_TOKEN_CHARS
    ):
        raise bad(f"'params.fileToken' must be a string of 1-{MAX_FILE_TOKEN_CHARS} characters")
    if token is not None:
        try:
            token = utf8_text(token, "'params.fileToken'")
        except MalformedPayload as exc:
            raise bad(exc.reason) from None
    file_info = params.get("fileInfo")
    block = params.get("fileBlock")
    if not isinstance(file_info, dict):
        raise bad(f"'params.fileInfo' must be a JSON object, got {type_name(file_info)}", token)
    if not isinstance(block, dict):
        raise bad(f"'params.fileBlock' must be a JSON object, got {type_name(block)}", token)
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
        raise MalformedPayload(f"'{where}.{key}' must be an integer, got {type_name(value)}")
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
