"""Avro single-object encoding with fastavro alone: what otaflow writes on its topics.

A record is ``C3 01``, the writer schema's 8-byte CRC-64-AVRO fingerprint (little
endian), then the Avro binary body. The schemas are the ``.avsc`` files in otaflow's
``schemas/`` folder (copy them next to your code); fastavro resolves the named types
one file refers to (``otaflow.TaskStatus`` in ``otaflow.TaskEvent.avsc``) from the
same folder. Shared by the examples; no otaflow import.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from fastavro import schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, load_schema, to_parsing_canonical_form

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"
MARKER = b"\xc3\x01"


class SingleObject:
    def __init__(self, name: str, schemas: Path = SCHEMAS) -> None:
        self.name = name
        self.schema = load_schema(str(schemas / f"otaflow.{name}.avsc"))
        crc = fingerprint(to_parsing_canonical_form(self.schema), "CRC-64-AVRO")
        self.header = MARKER + int(crc, 16).to_bytes(8, "little")

    def encode(self, record: dict[str, Any]) -> bytes:
        body = io.BytesIO()
        schemaless_writer(body, self.schema, record)
        return self.header + body.getvalue()

    def decode(self, value: bytes) -> dict[str, Any]:
        if value[:10] != self.header:
            raise ValueError(f"not a {self.name} record (header {value[:10].hex()})")
        record = schemaless_reader(io.BytesIO(value[10:]), self.schema, None)
        if not isinstance(record, dict):
            raise ValueError(f"{self.name} did not decode to a record")
        return record
