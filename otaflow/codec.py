"""The one codec every producer and consumer of otaflow uses.

Records are Avro, written in Avro's *single-object encoding*: two marker bytes
(``C3 01``), the schema's 8-byte CRC-64-AVRO fingerprint (little endian), then the
binary body. That makes every record self-describing without a schema registry
service: a consumer looks the fingerprint up among the schemas in ``schemas/`` and
refuses anything else with a clear reason (which the connectors send to the
dead-letter topic).

Records outlive the code that wrote them (a changelogged table keeps a device's state
for years), so the codec also reads every *released* schema: each release's schemas
are kept, as they were, in ``schemas/released/<version>/``. A record whose fingerprint
is one of those is resolved from its writer's schema to today's by Avro's schema
resolution (new fields take their defaults, promoted types are widened), so after an
upgrade it decodes to exactly what today's schema would have given. The released sets
are read on the first record that needs them, not at start. Which changes keep old
records readable, and the check that enforces it: ``docs/schema-evolution.md`` and
``otaflow/schema_releases.py``.

Two libraries, each for what it does best (measured in ``benchmarks/codec_bench.py``):
fastavro loads the ``.avsc`` files (resolving named types across files) and computes
fingerprints; cavro (Cython) encodes and decodes, byte for byte the same as fastavro
but 5-10x faster per record, which matters on the device agent's hot path (one state
encode and one report decode per device report). The reference ``avro`` package
parses the same files in the schema test.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import cavro
from fastavro.schema import expand_schema, fingerprint, load_schema, to_parsing_canonical_form

from otaflow import config

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
# One folder per release, each with that release's schema files as they were.
RELEASED_DIR = SCHEMA_DIR / "released"
NAMESPACE = "otaflow"
MARKER = b"\xc3\x01"
HEADER_LEN = len(MARKER) + 8

Record = dict[str, Any]


class DecodeError(ValueError):
    """Bytes that are not a record of any otaflow schema; the message says why."""


# Decoding gives plain dicts; a union of several record types decodes to
# ("namespace.Name", record), as fastavro's return_record_name_override did; fields
# left out when encoding take their schema defaults.
CAVRO_OPTIONS = cavro.Options(
    record_decodes_to_dict=True,
    allow_tuple_notation=True,
    record_encode_use_defaults=True,
    union_decodes_to=cavro.UnionDecodeOption.TYPE_TUPLE_IF_RECORD_AMBIGUOUS,
)


def definition(parsed: Any) -> Any:
    """The full, self-contained JSON definition of a parsed schema (each type once)."""
    return _define_once(expand_schema(parsed), set())


def _define_once(schema: Any, seen: set[str]) -> Any:
    """An expanded schema with each named type defined at its first use, named after that
    (fastavro's expansion inlines a type every time it is used; Avro allows one definition)."""
    if isinstance(schema, list):
        return [_define_once(branch, seen) for branch in schema]
    if not isinstance(schema, dict):
        return schema
    kind = schema.get("type")
    if kind in ("record", "enum", "fixed", "error"):
        name = schema["name"]
        if "." not in name and schema.get("namespace"):
            name = f"{schema['namespace']}.{name}"
        if name in seen:
            return name
        seen.add(name)
        if kind in ("record", "error"):
            fields = [dict(f, type=_define_once(f["type"], seen)) for f in schema["fields"]]
            return dict(schema, fields=fields)
        return schema
    if kind == "array":
        return dict(schema, items=_define_once(schema["items"], seen))
    if kind == "map":
        return dict(schema, values=_define_once(schema["values"], seen))
    if isinstance(kind, (dict, list)):
        return dict(schema, type=_define_once(kind, seen))
    return schema


class Schema:
    """One named record schema with its parsed form, its coder and fingerprint header."""

    __slots__ = ("coder", "fingerprint", "header", "name", "parsed")

    def __init__(self, name: str, parsed: Any) -> None:
        self.name = name
        self.parsed = parsed
        self.coder = cavro.Schema(json.dumps(definition(parsed)), options=CAVRO_OPTIONS)
        self.fingerprint = fingerprint_of(parsed)
        self.header = MARKER + self.fingerprint


class ReleasedSchema:
    """A record type as an earlier release wrote it, read as today's schema of that name.

    ``coder`` decodes the writer's bytes into the reader's shape (cavro's resolution);
    it is never used to encode: the codec writes only today's schemas.
    """

    __slots__ = ("coder", "fingerprint", "name", "release")

    def __init__(self, name: str, release: str, fingerprint: bytes, coder: Any) -> None:
        self.name = name
        self.release = release
        self.fingerprint = fingerprint
        self.coder = coder


def record_schemas(schema_dir: Path) -> dict[str, Any]:
    """The record types of one schema folder, by short name, parsed (named types from
    the other files of the same folder)."""
    out: dict[str, Any] = {}
    for path in sorted(schema_dir.glob(f"{NAMESPACE}.*.avsc")):
        parsed = load_schema(str(path), _write_hint=False)
        if isinstance(parsed, dict) and parsed.get("type") == "record":
            out[path.stem.split(".", 1)[1]] = parsed
    return out


def fingerprint_of(parsed: Any) -> bytes:
    """The 8-byte CRC-64-AVRO fingerprint of a parsed schema, as the header carries it."""
    fp = int(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"), 16)
    return fp.to_bytes(8, "little")


def released_dirs() -> list[Path]:
    """Every released schema set, ``schemas/released/<version>/``, then the folders an
    operator named for state an unreleased build wrote (``config.extra_schema_releases``)."""
    dirs = sorted(p for p in RELEASED_DIR.glob("*") if p.is_dir()) if RELEASED_DIR.is_dir() else []
    return dirs + config.extra_schema_releases()


class Codec:
    """Encodes and decodes every otaflow record type by its short name (``DeviceReport``)."""

    def __init__(
        self, schema_dir: Path = SCHEMA_DIR, released: Sequence[Path] | None = None
    ) -> None:
        self._by_name: dict[str, Schema] = {}
        self._by_fingerprint: dict[bytes, Schema | ReleasedSchema] = {}
        for name, parsed in record_schemas(schema_dir).items():
            schema = Schema(name, parsed)
            self._by_name[schema.name] = schema
            self._by_fingerprint[schema.fingerprint] = schema
        self._released_dirs = released
        # Fingerprint -> (release, name, parsed writer schema) of every released record
        # type; built on the first fingerprint that is not today's.
        self._released: dict[bytes, tuple[str, str, Any]] | None = None

    @property
    def names(self) -> list[str]:
        return sorted(self._by_name)

    def schema(self, name: str) -> Schema:
        return self._by_name[name]

    def encode(self, name: str, record: Mapping[str, Any]) -> bytes:
        schema = self._by_name[name]
        body: bytes = schema.coder.binary_encode(record)
        return schema.header + body

    def encode_many(self, name: str, records: Iterable[Mapping[str, Any]]) -> list[bytes]:
        schema = self._by_name[name]
        header, encode = schema.header, schema.coder.binary_encode
        return [header + encode(record) for record in records]

    def schema_of(self, data: bytes | None) -> Schema | ReleasedSchema:
        # Consumers hand over a Kafka message's value as it is: None is a tombstone.
        if data is None:
            raise DecodeError("null value (a tombstone), not a record")
        if len(data) < HEADER_LEN or data[:2] != MARKER:
            raise DecodeError("not an Avro single-object record (missing C3 01 marker)")
        fp = bytes(data[2:HEADER_LEN])
        schema = self._by_fingerprint.get(fp)
        if schema is None:
            schema = self._by_fingerprint[fp] = self._released_schema(fp)
        return schema

    def _released_schema(self, fp: bytes) -> ReleasedSchema:
        """The reader for a record an earlier release wrote (DecodeError if none did)."""
        if self._released is None:
            self._released = {}
            dirs = released_dirs() if self._released_dirs is None else self._released_dirs
            for folder in dirs:
                for name, parsed in record_schemas(folder).items():
                    self._released.setdefault(fingerprint_of(parsed), (folder.name, name, parsed))
        found = self._released.get(fp)
        if found is None:
            raise DecodeError(f"unknown schema fingerprint {fp.hex()}")
        release, name, parsed = found
        reader = self._by_name.get(name)
        if reader is None:
            raise DecodeError(f"{name} (schema of release {release}) is no longer a record type")
        writer = cavro.Schema(json.dumps(definition(parsed)), options=CAVRO_OPTIONS)
        try:
            coder = reader.coder.reader_for_writer(writer)
        except cavro.CannotPromoteError as exc:  # prevented by tests/unit/test_schema_releases.py
            raise DecodeError(
                f"{name} of release {release} cannot be read as today's: {exc}"
            ) from exc
        return ReleasedSchema(name, release, fp, coder)

    def decode(self, data: bytes | None) -> tuple[str, Record]:
        """Return ``(schema name, record)`` for any otaflow record."""
        schema = self.schema_of(data)
        assert data is not None
        return schema.name, self._read(schema, data)

    def decode_as(self, name: str, data: bytes | None) -> Record:
        """Decode a record that must be of schema ``name``."""
        schema = self.schema_of(data)
        if schema.name != name:
            raise DecodeError(f"expected {name}, got {schema.name}")
        assert data is not None
        return self._read(schema, data)

    @staticmethod
    def _read(schema: Schema | ReleasedSchema, data: bytes) -> Record:
        try:
            record = schema.coder.binary_decode(data[HEADER_LEN:])
        except Exception as exc:  # cavro raises several types for truncated input
            raise DecodeError(f"corrupt {schema.name} body: {exc}") from exc
        if not isinstance(record, dict):
            raise DecodeError(f"{schema.name} did not decode to a record")
        return record


@cache
def codec() -> Codec:
    """The process-wide codec (schemas are parsed once)."""
    return Codec()
