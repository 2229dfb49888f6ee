"""MQTT file download: the frame, its CRC, request parsing, and the responder's answers."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.device_json import MalformedPayload
from connectors.download_frames import (
    DOWNLOAD_CODE_BAD_REQUEST,
    DOWNLOAD_CODE_SERVER_ERROR,
    DOWNLOAD_CODE_UNKNOWN_STREAM,
    MAX_DOWNLOAD_BLOCK,
    MalformedDownloadRequest,
    build_download_block,
    build_download_error,
    crc16_ibm,
    mqtt_stream_ids,
    parse_download_reply,
    parse_download_request,
)
from connectors.file_download import FileDownloadResponder, StreamDirectory
from otaflow.config import Settings
from otaflow.packages import PackageStore

TOPIC = "/sys/pk1/dev-1/thing/file/download"
REPLY = "/sys/pk1/dev-1/thing/file/download_reply"


def crc16_bitwise(data: bytes) -> int:
    """CRC-16/ARC written out bit by bit (the textbook form), independent of the table."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def sdk_request(request_id: int, stream_id: int, file_id: int, size: int, offset: int) -> bytes:
    """Byte for byte what Link SDK for C's _md_send_request writes (trailing comma included)."""
    params = (
        f'{{"fileToken":"default","fileInfo":{{"streamId":{stream_id},"fileId":{file_id},}},'
        f'"fileBlock":{{"size":{size},"offset":{offset}}}}}'
    )
    return f'{{"id":"{request_id}","version":"1.0","params":{params}}}'.encode()


# --------------------------------------------------------------------------- CRC


@pytest.mark.parametrize(
    ("data", "crc"),
    [
        (b"123456789", 0xBB3D),  # the CRC-16/ARC check value
        (b"", 0x0000),
        (b"\x00", 0x0000),
        (b"\x01", 0xC0C1),  # crc_ibm_table[1] in the SDK
        (b"\xff", 0x4040),  # crc_ibm_table[255]
        (b"A", 0x30C0),
    ],
)
def test_crc16_ibm_vectors(data: bytes, crc: int) -> None:
    assert crc16_ibm(data) == crc


@given(st.binary(max_size=300))
def test_crc16_table_matches_the_bitwise_definition(data: bytes) -> None:
    assert crc16_ibm(data) == crc16_bitwise(data)


def test_crc16_can_be_continued() -> None:
    assert crc16_ibm(b"56789", crc16_ibm(b"1234")) == 0xBB3D


# --------------------------------------------------------------------------- frame


def request(**overrides: Any) -> Any:
    base = {"request_id": 7, "stream_id": 5, "file_id": 1, "size": 8, "offset": 16}
    base |= overrides
    return parse_download_request(TOPIC, sdk_request(**base))


def test_block_frame_layout_byte_by_byte() -> None:
    data = b"123456789"
    frame = build_download_block(request(size=9), data, file_length=100)
    head = (
        b'{"id":"7","code":200,"data":{"bSize":9,"bOffset":16,'
        b'"fileLength":100,"fileToken":"default"}}'
    )
    assert frame[:2] == len(head).to_bytes(2, "big")  # header length, big endian
    assert frame[2 : 2 + len(head)] == head
    assert frame[2 + len(head) : -2] == data
    assert frame[-2:] == b"\x3d\xbb"  # CRC 0xBB3D, low byte first
    assert len(frame) == 2 + len(head) + 9 + 2  # the SDK's length check


def test_block_frame_uses_a_given_crc() -> None:
    frame = build_download_block(request(size=3), b"abc", 3, crc=0x1234)
    assert frame[-2:] == b"\x34\x12"


def test_block_frame_round_trips_and_omits_an_absent_token() -> None:
    req = parse_download_request(
        TOPIC,
        json.dumps(
            {
                "id": "9",
                "params": {
                    "fileInfo": {"streamId": 1, "fileId": 1},
                    "fileBlock": {"size": 4, "offset": 0},
                },
            }
        ).encode(),
    )
    reply = parse_download_reply(build_download_block(req, b"\x00\xff\x10\x20", 4))
    assert reply.code == 200
    assert reply.data == b"\x00\xff\x10\x20"
    assert reply.header == {
        "id": "9",
        "code": 200,
        "data": {"bSize": 4, "bOffset": 0, "fileLength": 4},
    }


def test_error_frame_has_the_same_shape_and_no_bytes() -> None:
    frame = build_download_error("3", DOWNLOAD_CODE_UNKNOWN_STREAM, "unknown stream", "default")
    head_len = int.from_bytes(frame[:2], "big")
    assert len(frame) == 2 + head_len + 2
    assert frame[-2:] == b"\x00\x00"
    reply = parse_download_reply(frame)
    assert reply.header == {
        "id": "3",
        "code": 404,
        "message": "unknown stream",
        "data": {"fileToken": "default"},
    }
    assert reply.data == b""


def test_parse_download_reply_refuses_a_bad_crc_or_length() -> None:
    frame = bytearray(build_download_block(request(size=3), b"abc", 3))
    frame[-1] ^= 0x01
    with pytest.raises(ValueError, match="CRC"):
        parse_download_reply(bytes(frame))
    good = build_download_block(request(size=3), b"abc", 3)
    with pytest.raises(ValueError, match="header says"):
        parse_download_reply(good[:-3] + good[-2:])


# --------------------------------------------------------------------------- requests


def test_the_sdks_own_request_with_its_trailing_comma_parses() -> None:
    payload = sdk_request(12, 123456, 1, 5120, 10240)
    with pytest.raises(json.JSONDecodeError):
        json.loads(payload)  # the premise: strict JSON refuses it
    req = parse_download_request(TOPIC, payload)
    assert (req.product_key, req.device_name) == ("pk1", "dev-1")
    assert req.request_id == "12"
    assert req.file_token == "default"
    assert (req.stream_id, req.file_id, req.size, req.offset) == (123456, 1, 5120, 10240)
    assert req.reply_topic == REPLY


def test_trailing_commas_inside_strings_are_kept() -> None:
    payload = (
        b'{"id":"1","params":{"fileToken":"a,}b","fileInfo":{"streamId":1,"fileId":1,},'
        b'"fileBlock":{"size":1,"offset":0,},}}'
    )
    assert parse_download_request(TOPIC, payload).file_token == "a,}b"


def body(**params: Any) -> bytes:
    base: dict[str, Any] = {
        "fileToken": "default",
        "fileInfo": {"streamId": 1, "fileId": 1},
        "fileBlock": {"size": 10, "offset": 0},
    }
    base |= params
    return json.dumps({"id": "5", "version": "1.0", "params": base}).encode()


@pytest.mark.parametrize(
    ("topic", "payload", "reason", "addressable", "has_id"),
    [
        ("/sys/pk1/dev-1/thing/file/other", body(), "not a file download", False, False),
        ("/sys/pk+/dev-1/thing/file/download", body(), "contains '+'", False, False),
        (TOPIC, b"{nope", "not JSON", True, False),
        (TOPIC, b"[1]", "must be a JSON object", True, False),
        (TOPIC, b'{"params":{}}', "missing 'id'", True, False),
        (TOPIC, b'{"id":"1","params":[]}', "'params' must be a JSON object", True, True),
        (TOPIC, body(fileInfo=None), "'params.fileInfo' must be a JSON object", True, True),
        (TOPIC, body(fileBlock="x"), "'params.fileBlock' must be a JSON object", True, True),
        (TOPIC, body(fileInfo={"fileId": 1}), "missing 'params.fileInfo.streamId'", True, True),
        (
            TOPIC,
            body(fileInfo={"streamId": "1", "fileId": 1}),
            "must be an integer, got string",
            True,
            True,
        ),
        (
            TOPIC,
            body(fileBlock={"size": True, "offset": 0}),
            "must be an integer, got boolean",
            True,
            True,
        ),
        (TOPIC, body(fileBlock={"size": 10, "offset": -1}), "out of range", True, True),
        (TOPIC, body(fileBlock={"size": 0, "offset": 0}), "size' 0 out of range", True, True),
        (
            TOPIC,
            body(fileBlock={"size": MAX_DOWNLOAD_BLOCK + 1, "offset": 0}),
            "out of range",
            True,
            True,
        ),
        (TOPIC, body(fileToken="t" * 65), "fileToken' must be a string of 1-64", True, True),
        (TOPIC, body(fileToken=5), "fileToken' must be a string", True, True),
        (TOPIC, b" " * 5000, "exceeds 4096", True, False),
    ],
)
def test_malformed_requests_say_why_and_whom_to_answer(
    topic: str, payload: bytes, reason: str, addressable: bool, has_id: bool
) -> None:
    with pytest.raises(MalformedDownloadRequest) as info:
        parse_download_request(topic, payload)
    assert isinstance(info.value, MalformedPayload)
    assert reason in info.value.reason
    assert (info.value.reply_topic == REPLY) is addressable
    assert (info.value.request_id is not None) is has_id


@given(st.binary(max_size=200))
def test_random_bytes_parse_or_raise_malformed(payload: bytes) -> None:
    try:
        req = parse_download_request(TOPIC, payload)
    except MalformedDownloadRequest as exc:
        assert exc.reason
        return
    assert 0 < req.size <= MAX_DOWNLOAD_BLOCK


# --------------------------------------------------------------------------- stream map


def batch(batch_id: str, firmware_id: str, protocol: str = "MQTT", size: int = 1000) -> Any:
    return {
        "batch_id": batch_id,
        "firmware": {
            "firmware_id": firmware_id,
            "size": size,
            "file_path": f"pk1/{firmware_id}.bin",
            "download_protocol": protocol,
        },
    }


def test_stream_directory_maps_only_mqtt_offers_and_forgets_tombstoned_batches() -> None:
    streams = StreamDirectory()
    streams.apply("b1", batch("b1", "fw-a"))
    streams.apply("b2", batch("b2", "fw-b", protocol="HTTPS"))
    streams.apply("b3", batch("b3", "fw-c", size=17 * 1024 * 1024))  # too big for MQTT
    sid_a, fid_a = mqtt_stream_ids("fw-a")
    found = streams.get(sid_a)
    assert found is not None
    assert (found.file_path, found.file_id) == ("pk1/fw-a.bin", fid_a)
    assert streams.get(mqtt_stream_ids("fw-b")[0]) is None
    assert streams.get(mqtt_stream_ids("fw-c")[0]) is None
    assert len(streams) == 1
    streams.apply("b4", batch("b4", "fw-a"))  # a second batch of the same firmware
    streams.apply("b1", None)
    assert streams.get(sid_a) is not None  # b4 still offers it
    streams.apply("b4", batch("b4", "fw-a", protocol="HTTPS"))  # b4 changed protocol
    assert streams.get(sid_a) is None


# --------------------------------------------------------------------------- answers


@pytest.fixture
def responder(tmp_path: Path) -> FileDownloadResponder:
    settings = Settings()
    store = PackageStore(settings, root=tmp_path)
    store.add_bytes("pk1/fw-a.bin", bytes(range(256)) * 4)  # 1,024 bytes
    r = FileDownloadResponder(settings, store, client_id="unit")
    r.streams.apply("b1", batch("b1", "fw-a"))
    r.streams.apply("b2", batch("b2", "fw-gone"))  # offered, but the file is missing
    return r


def ask(r: FileDownloadResponder, payload: bytes) -> Any:
    answer = r.answer(TOPIC, payload)
    assert answer is not None
    topic, frame = answer
    assert topic == REPLY
    return parse_download_reply(frame)


def test_answers_a_block_and_clamps_the_last_one(responder: FileDownloadResponder) -> None:
    sid, fid = mqtt_stream_ids("fw-a")
    content = bytes(range(256)) * 4
    reply = ask(responder, sdk_request(1, sid, fid, 100, 300))
    assert reply.code == 200
    assert reply.data == content[300:400]
    assert reply.header["data"] == {
        "bSize": 100,
        "bOffset": 300,
        "fileLength": 1024,
        "fileToken": "default",
    }
    last = ask(responder, sdk_request(2, sid, fid, 512, 1000))
    assert last.data == content[1000:]
    assert last.header["data"]["bSize"] == 24
    # the same block again: served from the CRC cache, identical frame
    assert ask(responder, sdk_request(1, sid, fid, 100, 300)) == reply
    assert responder.blocks_sent == 3


@pytest.mark.parametrize(
    ("stream", "file_id", "offset", "code", "message"),
    [
        (12345, 1, 0, DOWNLOAD_CODE_UNKNOWN_STREAM, "unknown stream"),
        ("fw-a", 2, 0, DOWNLOAD_CODE_UNKNOWN_STREAM, "unknown file"),
        ("fw-a", 1, 1024, DOWNLOAD_CODE_BAD_REQUEST, "at or beyond the end"),
        ("fw-a", 1, 5000, DOWNLOAD_CODE_BAD_REQUEST, "at or beyond the end"),
        ("fw-gone", 1, 0, DOWNLOAD_CODE_SERVER_ERROR, "unavailable"),
    ],
)
def test_errors_are_answered_with_a_code(
    responder: FileDownloadResponder,
    stream: int | str,
    file_id: int,
    offset: int,
    code: int,
    message: str,
) -> None:
    sid = stream if isinstance(stream, int) else mqtt_stream_ids(stream)[0]
    reply = ask(responder, sdk_request(4, sid, file_id, 10, offset))
    assert reply.code == code
    assert message in reply.header["message"]
    assert reply.header["id"] == "4"
    assert reply.data == b""
    assert responder.errors_sent == 1
    assert responder.blocks_sent == 0


def test_a_malformed_request_is_answered_when_addressable(
    responder: FileDownloadResponder,
) -> None:
    reply = ask(responder, b'{"id":"8","params":{"fileInfo":1}}')
    assert reply.code == DOWNLOAD_CODE_BAD_REQUEST
    assert reply.header["id"] == "8"
    assert responder.answer("/sys/a/b/thing/file/nope", b"{}") is None


def test_large_package_block_crc_matches(tmp_path: Path) -> None:
    settings = Settings()
    store = PackageStore(settings, root=tmp_path)
    content = os.urandom(MAX_DOWNLOAD_BLOCK + 10)
    store.add_bytes("pk1/fw-big.bin", content)
    r = FileDownloadResponder(settings, store, client_id="unit")
    r.streams.apply("b", batch("b", "fw-big"))
    sid, fid = mqtt_stream_ids("fw-big")
    reply = ask(r, sdk_request(1, sid, fid, MAX_DOWNLOAD_BLOCK, 0))
    assert reply.data == content[:MAX_DOWNLOAD_BLOCK]
