"""Released schemas and the rule that keeps their records readable.

Every release's schemas are kept in ``schemas/released/<version>/`` (the codec reads
records written with any of them, ``otaflow.codec``). Today's schemas must be able to
read every record of every released schema, for ever: a changelogged device state
written by 0.1.0 is still read by the release after next. ``problems`` says where they
cannot, and ``tests/unit/test_schema_releases.py`` runs it on every ``make test``, so
a change that would make stored state unreadable fails CI before it is merged.

The rule (``docs/schema-evolution.md``): add a field only with a default; never remove
or rename a field (its data would be dropped on read); never reuse a name; never change
a type except by Avro's promotions (int -> long -> float -> double, string <-> bytes);
add enum symbols only at the end, never remove one; never remove a record type.

    python -m otaflow.schema_releases check          # what CI checks
    python -m otaflow.schema_releases release 0.2.0  # on a release: keep its schemas
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import avro.schema
import cavro
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

from otaflow.codec import (
    CAVRO_OPTIONS,
    NAMESPACE,
    RELEASED_DIR,
    SCHEMA_DIR,
    definition,
    record_schemas,
)


def release_dirs(released_dir: Path = RELEASED_DIR) -> list[Path]:
    """The released schema sets, oldest first (versions compared as numbers)."""
    if not released_dir.is_dir():
        return []

    def version(path: Path) -> tuple[int | str, ...]:
        return tuple(int(p) if p.isdigit() else p for p in path.name.split("."))

    return sorted((p for p in released_dir.iterdir() if p.is_dir()), key=version)


def problems(current_dir: Path = SCHEMA_DIR, released: Sequence[Path] | None = None) -> list[str]:
    """Why records of a released schema could not be read (fully) with today's schemas;
    empty when every released record type reads as today's."""
    today = {name: definition(parsed) for name, parsed in record_schemas(current_dir).items()}
    found: list[str] = []
    for folder in release_dirs() if released is None else released:
        for name, parsed in record_schemas(folder).items():
            where = f"{name} (release {folder.name})"
            reader = today.get(name)
            if reader is None:
                found.append(f"{where}: the record type is gone; its stored records are not")
                continue
            writer = definition(parsed)
            found += [f"{where}: {p}" for p in _incompatibilities(reader, writer)]
            found += [f"{where}: {p}" for p in _dropped_fields(reader, writer)]
    return found


def _incompatibilities(reader: Any, writer: Any) -> list[str]:
    """Avro's schema resolution, checked twice: by the reference implementation, whose
    messages say where, and by cavro, which the codec reads released records with."""
    result = ReaderWriterCompatibilityChecker().get_compatibility(
        avro.schema.parse(json.dumps(reader)), avro.schema.parse(json.dumps(writer))
    )
    if result.compatibility is not SchemaCompatibilityType.compatible:
        return [
            f"cannot be read as today's: {', '.join(sorted(result.messages))} "
            f"(at {', '.join(sorted(result.locations))})"
        ]
    try:
        cavro.Schema(json.dumps(reader), options=CAVRO_OPTIONS).reader_for_writer(
            cavro.Schema(json.dumps(writer), options=CAVRO_OPTIONS)
        )
    except cavro.CannotPromoteError as exc:
        return [f"cavro cannot read it as today's: {exc}"]
    return []


def _dropped_fields(reader: Any, writer: Any) -> Iterator[str]:
    """Fields a released record had and today's has not: resolution skips them, so the
    data is silently lost (a rename is a removal too, unless today's field lists the old
    name in ``aliases``)."""
    today = dict(_named_records(reader))
    for name, fields in _named_records(writer):
        kept = today.get(name)
        if kept is None:
            continue  # a nested type renamed or replaced: the resolution check reports it
        names = {f["name"] for f in kept} | {a for f in kept for a in f.get("aliases", ())}
        for field in fields:
            if field["name"] not in names:
                yield f"field {name}.{field['name']} was removed; its data would be dropped"


def _named_records(schema: Any) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """(full name, fields) of every record type defined in an expanded schema."""
    if isinstance(schema, list):
        for branch in schema:
            yield from _named_records(branch)
    elif isinstance(schema, dict):
        kind = schema.get("type")
        if kind in ("record", "error"):
            name = schema["name"]
            if "." not in name and schema.get("namespace"):
                name = f"{schema['namespace']}.{name}"
            yield name, schema["fields"]
            for field in schema["fields"]:
                yield from _named_records(field["type"])
        elif kind == "array":
            yield from _named_records(schema["items"])
        elif kind == "map":
            yield from _named_records(schema["values"])
        elif isinstance(kind, (dict, list)):
            yield from _named_records(kind)


def release(
    version: str, current_dir: Path = SCHEMA_DIR, released_dir: Path = RELEASED_DIR
) -> Path:
    """Keep today's schemas as release ``version`` (refused if they break the rule)."""
    found = problems(current_dir)
    if found:
        raise ValueError("schemas break the compatibility rule:\n" + "\n".join(found))
    target = released_dir / version
    if target.exists():
        raise ValueError(f"{target} exists: a released schema set never changes")
    target.mkdir(parents=True)
    for path in sorted(current_dir.glob(f"{NAMESPACE}.*.avsc")):
        shutil.copy2(path, target / path.name)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["check"] and len(args) == 1:
        found = problems()
        for line in found:
            print(line)
        releases = ", ".join(p.name for p in release_dirs()) or "none"
        print(f"{len(found)} problem(s) against released schemas ({releases})")
        return 1 if found else 0
    if args[:1] == ["release"] and len(args) == 2:
        print(f"kept {release(args[1])}")
        return 0
    print("usage: python -m otaflow.schema_releases check | release VERSION", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
