"""The one codec every producer and consumer of otaflow uses.

Records are Avro, written in Avro's *single-object encoding*: two marker bytes
(``C3 01``), the schema's 8-byte CRC-64-AVRO fingerprint (little endian), then the
binary body. That makes every record self-describing without a schema registry
service: a consumer looks the fingerprint up among the schemas in ``schemas/`` and
refuses anything else with a clear reason (which the connectors send to the
dead-letter topic).

fastavro does the work: it is the better-kept, compiled Avro implementation; the
reference ``avro`` package parses the same ``.avsc`` files in the schema test and
is measured against fastavro in ``benchmarks/``.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, load_schema, to_parsing_canonical_form

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
NAMESPACE = "otaflow"
MARKER = b"\xc3\x01"
HEADER_LEN = len(MARKER) + 8

Record = dict[str, Any]


class DecodeError(ValueError):
    """Bytes that are not a record of any otaflow schema; the message says why."""


class Schema:
    """One named record schema with its parsed form and fingerprint header."""

    __slots__ = ("fingerprint", "header", "name", "parsed")

    def __init__(self, name: str, parsed: Any) -> None:
        self.name = name
        self.parsed = parsed
        fp = int(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"), 16)
        self.fingerprint = fp.to_bytes(8, "little")
        self.header = MARKER + self.fingerprint


class Codec:
    """Encodes and decodes every otaflow record type by its short name (``DeviceReport``)."""

    def __init__(self, schema_dir: Path = SCHEMA_DIR) -> None:
        self._by_name: dict[str, Schema] = {}
        self._by_fingerprint: dict[bytes, Schema] = {}
        for path in sorted(schema_dir.glob(f"{NAMESPACE}.*.avsc")):
            parsed = load_schema(str(path), _write_hint=False)
            if isinstance(parsed, dict) and parsed.get("type") == "record":
                schema = Schema(path.stem.split(".", 1)[1], parsed)
                self._by_name[schema.name] = schema
                self._by_fingerprint[schema.fingerprint] = schema

    @property
    def names(self) -> list[str]:
        return sorted(self._by_name)

    def schema(self, name: str) -> Schema:
        return self._by_name[name]

    def encode(self, name: str, record: Mapping[str, Any]) -> bytes:
        schema = self._by_name[name]
        buf = io.BytesIO()
        buf.write(schema.header)
        fastavro.schemaless_writer(buf, schema.parsed, record)
        return buf.getvalue()

    def encode_many(self, name: str, records: Iterable[Mapping[str, Any]]) -> list[bytes]:
        schema = self._by_name[name]
        out = []
        for record in records:
            buf = io.BytesIO()
            buf.write(schema.header)
            fastavro.schemaless_writer(buf, schema.parsed, record)
            out.append(buf.getvalue())
        return out

    def schema_of(self, data: bytes) -> Schema:
        if len(data) < HEADER_LEN or data[:2] != MARKER:
            raise DecodeError("not an Avro single-object record (missing C3 01 marker)")
        schema = self._by_fingerprint.get(bytes(data[2:HEADER_LEN]))
        if schema is None:
            raise DecodeError(f"unknown schema fingerprint {bytes(data[2:HEADER_LEN]).hex()}")
        return schema

    def decode(self, data: bytes) -> tuple[str, Record]:
        """Return ``(schema name, record)`` for any otaflow record."""
        schema = self.schema_of(data)
        return schema.name, self._read(schema, data)

    def decode_as(self, name: str, data: bytes) -> Record:
        """Decode a record that must be of schema ``name``."""
        schema = self.schema_of(data)
        if schema.name != name:
            raise DecodeError(f"expected {name}, got {schema.name}")
        return self._read(schema, data)

    @staticmethod
    def _read(schema: Schema, data: bytes) -> Record:
        try:
            record = fastavro.schemaless_reader(
                io.BytesIO(data[HEADER_LEN:]),
                schema.parsed,
                return_record_name=True,
                return_record_name_override=True,
            )
        except Exception as exc:  # fastavro raises several types for truncated input
            raise DecodeError(f"corrupt {schema.name} body: {exc}") from exc
        if not isinstance(record, dict):
            raise DecodeError(f"{schema.name} did not decode to a record")
        return record


@cache
def codec() -> Codec:
    """The process-wide codec (schemas are parsed once)."""
    return Codec()
