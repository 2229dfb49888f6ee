"""The JSON form of public records: the Avro record's fields, readable without Avro."""

from __future__ import annotations

import base64

import orjson

from otaflow import topics
from otaflow.codec import codec
from otaflow.device_avro import encode_task_event
from otaflow.public_json import to_json

CODEC = codec()


def test_a_task_event_as_json_has_the_schema_fields_with_enums_and_nulls_plain() -> None:
    event = {
        "task_id": "t1",
        "batch_id": "b1",
        "product_key": "pk",
        "device_name": "dn",
        "module": "default",
        "src_version": None,
        "dest_version": "2.0",
        "status": "NOTIFIED",
        "previous_status": "QUEUED",
        "progress": 0,
        "desc": "",
        "event_time": 1_800_000_000_000,
        "timeout_minutes": 45,
    }
    # The hot path's encoder, which is what the device agent writes.
    assert orjson.loads(to_json(encode_task_event(event))) == event


def test_a_dead_letter_carries_its_raw_bytes_as_base64() -> None:
    raw = b"\xc3\x01 not json \xff"
    letter = {"source": "t/0/5", "reason": "why", "raw": raw, "event_time": 7}
    decoded = orjson.loads(to_json(CODEC.encode("DeadLetter", letter)))
    assert base64.b64decode(decoded.pop("raw")) == raw
    assert decoded == {"source": "t/0/5", "reason": "why", "event_time": 7}


def test_json_copies_keep_key_and_partitions() -> None:
    copy = topics.json_copy(topics.TASK_EVENTS)
    assert copy.name == "ota.task.events.json"
    assert (copy.key, copy.partitions, copy.public) == ("productKey/deviceName", None, True)
    assert {spec.name for spec in topics.JSON_COPIED} == {"ota.task.events", "ota.deadletter"}
