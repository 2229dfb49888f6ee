"""Every schema parses, and a sample of every record round-trips through the one codec.

The codec's bytes are checked against two independent Avro implementations: fastavro
and the Apache reference ``avro`` package, so swapping the codec's engine can never
silently change the wire format.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import avro.io
import avro.schema
import fastavro
import pytest

from otaflow.codec import HEADER_LEN, MARKER, SCHEMA_DIR, Codec, DecodeError, codec, definition

CODEC = codec()
SCHEMA_FILES = sorted(SCHEMA_DIR.glob("otaflow.*.avsc"))


def sample(schema: Any, named: dict[str, Any], depth: int = 0) -> Any:
    """A value of ``schema`` that exercises every field (first non-null union branch)."""
    if isinstance(schema, str):
        primitives = {
            "string": "s",
            "bytes": b"\x00\xff",
            "int": -7,
            "long": 1_800_000_000_123,
            "boolean": True,
            "float": 1.5,
            "double": 2.25,
            "null": None,
        }
        if schema in primitives:
            return primitives[schema]
        return sample(named[schema], named, depth)
    if isinstance(schema, list):
        branches = [b for b in schema if b != "null"]
        if not branches:
            return None
        value = sample(branches[0], named, depth)
        records = [b for b in branches if b in named and named[b]["type"] == "record"]
        # A union of several record types carries the branch's name (as fastavro does).
        return (branches[0], value) if len(records) > 1 else value
    kind = schema["type"]
    if kind == "record":
        return {f["name"]: sample(f["type"], named, depth + 1) for f in schema["fields"]}
    if kind == "enum":
        return schema["symbols"][-1]
    if kind == "array":
        return [sample(schema["items"], named, depth + 1)] if depth < 4 else []
    if kind == "map":
        return {"k": sample(schema["values"], named, depth + 1)} if depth < 4 else {}
    return sample(kind, named, depth)


def named_types() -> dict[str, Any]:
    return {path.stem: json.loads(path.read_text()) for path in SCHEMA_FILES}


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda p: p.stem)
def test_schema_parses_and_its_sample_round_trips(path: Path) -> None:
    name = path.stem.split(".", 1)[1]
    declared = json.loads(path.read_text())
    assert declared.get("doc") or declared["type"] == "enum", f"{name} has no doc"
    if declared["type"] != "record":
        return
    record = sample(declared, named_types())
    encoded = CODEC.encode(name, record)
    assert encoded[:2] == MARKER
    assert CODEC.decode(encoded)[0] == name
    assert CODEC.decode_as(name, encoded) == record

    # Same bytes as fastavro, and readable by the Apache reference implementation.
    parsed = CODEC.schema(name).parsed
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed, record)
    assert encoded[HEADER_LEN:] == buf.getvalue()
    reference = avro.schema.parse(json.dumps(definition(parsed)))
    decoder = avro.io.BinaryDecoder(io.BytesIO(encoded[HEADER_LEN:]))
    assert avro.io.DatumReader(reference).read(decoder) == without_union_names(record)


def without_union_names(value: Any) -> Any:
    """The reference library reads a union of records as the bare record."""
    if isinstance(value, tuple):
        return without_union_names(value[1])
    if isinstance(value, dict):
        return {k: without_union_names(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_union_names(v) for v in value]
    return value


def test_every_topic_schema_is_known_to_the_codec() -> None:
    from otaflow import topics

    for spec in topics.ALL:
        for schema in spec.schemas:
            assert schema in CODEC.names, f"{spec.name}: {schema}"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (None, "tombstone"),
        (b"", "marker"),
        (b'{"json": true}', "marker"),
        (MARKER + b"\x00" * 8 + b"x", "unknown schema fingerprint"),
        (CODEC.schema("DeviceReport").header + b"\x02", "corrupt DeviceReport"),
    ],
)
def test_garbage_is_refused_with_a_reason(data: bytes | None, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        CODEC.decode(data)


def test_decode_as_refuses_another_record_type() -> None:
    tick = CODEC.encode("Tick", {"event_time": 1})
    with pytest.raises(DecodeError, match="expected DeviceReport, got Tick"):
        CODEC.decode_as("DeviceReport", tick)


def test_a_codec_can_be_built_from_a_directory(tmp_path: Path) -> None:
    for path in SCHEMA_FILES:
        (tmp_path / path.name).write_text(path.read_text())
    assert Codec(tmp_path).names == CODEC.names
