"""A "previous release" of otaflow's schemas, made from today's, for upgrade tests.

Adding a field with a default is the change the compatibility rule allows (see
``docs/schema-evolution.md``); seen from the other side, the release before it is today's
schemas without that field. ``previous_release`` writes such a schema set, and
``Transcoder`` rewrites records as that release would have written them.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import fastavro

from otaflow.codec import HEADER_LEN, NAMESPACE, SCHEMA_DIR, Codec, definition


def previous_release(out_dir: Path, drop: Mapping[str, Sequence[str]] | None = None) -> Path:
    """Today's schemas without the fields in ``drop`` (record name -> field names), each
    of which must have a default; without ``drop``, every record type loses its last
    field with a default. Returns ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in sorted(SCHEMA_DIR.glob(f"{NAMESPACE}.*.avsc")):
        schema = json.loads(path.read_text())
        if schema["type"] == "record":
            defaulted = [f["name"] for f in schema["fields"] if "default" in f]
            gone = set(defaulted[-1:] if drop is None else drop.get(schema["name"], ()))
            assert gone <= set(defaulted), f"{schema['name']}: only fields with defaults"
            schema["fields"] = [f for f in schema["fields"] if f["name"] not in gone]
        (out_dir / path.name).write_text(json.dumps(schema))
    return out_dir


class Transcoder:
    """Rewrites today's records in the previous release's schemas, and refuses a record
    whose dropped fields hold anything but their defaults (that release could not have
    written it, and reading it back could not give it whole)."""

    def __init__(self, previous_dir: Path, today: Codec) -> None:
        self.previous = Codec(previous_dir, released=[])
        self.today = today

    def __call__(self, value: bytes) -> bytes:
        name, record = self.today.decode(value)
        old = self.previous.encode(name, record)
        back = self.today_reading(old)
        assert back == record, f"{name}: a dropped field held data: {record} != {back}"
        return old

    def today_reading(self, old: bytes) -> dict[str, Any]:
        """``old`` as today's schema reads it, by fastavro's resolution (an oracle
        independent of the codec's)."""
        name = self.previous.schema_of(old).name
        writer = definition(self.previous.schema(name).parsed)
        reader = definition(self.today.schema(name).parsed)
        record = fastavro.schemaless_reader(
            io.BytesIO(old[HEADER_LEN:]),
            fastavro.parse_schema(writer),
            fastavro.parse_schema(reader),
            return_record_name=True,
            return_record_name_override=True,
        )
        assert isinstance(record, dict)
        return record
