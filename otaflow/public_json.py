"""The JSON form of otaflow's public output records, for tools that do not read Avro.

With ``OTAFLOW_PUBLIC_JSON=1`` every task event and dead letter is also written, with
the same key, to ``<topic>.json`` (``ota.task.events.json``, ``ota.deadletter.json``):
kcat, Kafka Connect's ``JsonConverter`` (``schemas.enable=false``) or any consumer
read it as it is. The Avro topics stay as they are, since otaflow's own readers (the
API's task view) and existing consumers read them.

The shape is the Avro record's, field for field (``schemas/otaflow.<Name>.avsc`` and
docs/kafka-integration.md): enums as their symbol, a union as its value or ``null``,
``bytes`` (a dead letter's ``raw``) as base64 text. One object per record, UTF-8.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson

from otaflow.codec import codec


def _bytes_as_base64(value: Any) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode()
    raise TypeError(f"{type(value).__name__} has no JSON form")


def record_json(record: dict[str, Any]) -> bytes:
    """One decoded otaflow record as its public JSON object."""
    return orjson.dumps(record, default=_bytes_as_base64)


def to_json(avro_value: bytes) -> bytes:
    """The JSON form of an otaflow record in its Avro single-object encoding."""
    return record_json(codec().decode(avro_value)[1])
