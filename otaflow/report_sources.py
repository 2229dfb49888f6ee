"""Bring your own telemetry topic: records of a topic otaflow does not own, mapped onto
version reports.

A platform team that already produces device telemetry onto Kafka names that topic in
a source file (TOML) and says where each record keeps the product key, the device
name, the module, the version and the event time, and which records to skip. The
report batcher (``streams.batcher``) reads the topic beside ``ota.device.reports``,
maps each record with a ``SourceMapper`` into the same ``DeviceReport`` bytes a native
producer would write, and dead-letters what does not map (with the reason and the raw
bytes). There is no bridge process to run.

    [[source]]
    topic = "fleet.telemetry"            # read as it is: no prefix is added
    format = "json"                      # or "avro" with schema = "telemetry.avsc"
    product_key = "$.device.product"
    device_name = "$.device.name"
    module = "$.firmware.module"         # optional: module_default (default "default")
    version = "$.firmware.version"
    event_time = "$.ts"                  # optional: the Kafka record's timestamp
    event_time_unit = "ms"               # "ms", "s" or "iso8601"
    only_when = { "$.type" = "firmware" }   # records failing this are skipped, silently
    skip_when = { "$.firmware.version" = "" }

Paths are a small JSONPath subset: ``$`` then ``.name``, ``["name"]`` or ``[index]``
steps. Each is compiled once (into chained subscripts), so mapping a record is a JSON
parse (orjson), a few lookups and the report's bytes written directly: a general
JSONPath engine would cost more per record than the rest of the batcher's work on it.

This module is pure (no Kafka): ``tests/unit/test_report_sources.py`` covers it.
"""

from __future__ import annotations

import datetime as dt
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from otaflow.device_avro import encode_long, encode_string

# Imported for its guard too: plain_reports refuses to load if DeviceReport's fields
# change, and the bytes written here follow the same field order.
from otaflow.plain_reports import REPORT_HEADER

# Items from a configured source carry a source partition of ``SOURCE_PARTITION_BASE *
# (index + 1) + partition`` in their envelope, so the device agent's "applied up to
# this offset" marks of ``ota.device.reports`` partition 3 and of the first source's
# partition 3 never collide (a topic with 10,000 partitions is not a concern).
SOURCE_PARTITION_BASE = 10_000

FORMATS = ("json", "avro")
AVRO_FRAMINGS = ("raw", "confluent", "single-object")
TIME_UNITS = ("ms", "s", "iso8601")

_STEP = re.compile(r"""\.([A-Za-z_][A-Za-z0-9_\-]*)|\[(-?\d+)\]|\["([^"]*)"\]|\['([^']*)'\]""")
_MISSING = object()


class SourceConfigError(ValueError):
    """A source file that cannot be used; the message names the field."""


class Unmappable(ValueError):
    """A record that passed the skip rules but does not make a version report."""


@dataclass(frozen=True)
class JsonPath:
    text: str
    steps: tuple[str | int, ...]

    @classmethod
    def parse(cls, text: str) -> JsonPath:
        if not isinstance(text, str) or not text.startswith("$"):
            raise SourceConfigError(f"path {text!r} must start with '$' (as in '$.device.name')")
        steps: list[str | int] = []
        pos = 1
        while pos < len(text):
            match = _STEP.match(text, pos)
            if match is None:
                raise SourceConfigError(
                    f'path {text!r}: cannot read {text[pos:]!r}; use .name, ["name"] or [0]'
                )
            name, index, quoted, single = match.groups()
            if index is not None:
                steps.append(int(index))
            else:
                steps.append(name if name is not None else quoted if quoted is not None else single)
            pos = match.end()
        return cls(text, tuple(steps))

    def find(self, record: Any) -> Any:
        """The value at this path, or ``_MISSING``."""
        value = record
        try:
            for step in self.steps:
                # A str step into a list or a string raises TypeError; an index into a
                # string must not read its characters.
                if type(step) is int and type(value) is not list:
                    return _MISSING
                value = value[step]
        except (KeyError, IndexError, TypeError):
            return _MISSING
        return value

    def __str__(self) -> str:
        return self.text


def _condition(raw: Any, what: str) -> tuple[tuple[JsonPath, frozenset[Any]], ...]:
    """``{path = value}`` or ``{path = [values]}`` tables: a path matches when its value
    is one of those given."""
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise SourceConfigError(f"{what} must be a table of path = value (or [values])")
    out = []
    for path, wanted in raw.items():
        values = wanted if isinstance(wanted, list) else [wanted]
        for value in values:
            if not isinstance(value, (str, int, float, bool)):
                raise SourceConfigError(f"{what}: {path} = {value!r} is not a string/number/bool")
        out.append((JsonPath.parse(path), frozenset(values)))
    return tuple(out)


@dataclass(frozen=True)
class ReportSource:
    """One configured telemetry topic and how its records map onto version reports."""

    topic: str
    product_key: JsonPath
    device_name: JsonPath
    version: JsonPath
    format: str = "json"
    module: JsonPath | None = None
    module_default: str = "default"
    event_time: JsonPath | None = None
    event_time_unit: str = "ms"
    only_when: tuple[tuple[JsonPath, frozenset[Any]], ...] = ()
    skip_when: tuple[tuple[JsonPath, frozenset[Any]], ...] = ()
    avro_schema: Path | None = None
    avro_framing: str = "raw"
    name: str = field(default="")

    @classmethod
    def from_table(cls, table: Mapping[str, Any], base_dir: Path) -> ReportSource:
        known = {
            "name",
            "topic",
            "format",
            "product_key",
            "device_name",
            "module",
            "module_default",
            "version",
            "event_time",
            "event_time_unit",
            "only_when",
            "skip_when",
            "schema",
            "framing",
        }
        unknown = sorted(set(table) - known)
        if unknown:
            raise SourceConfigError(f"unknown field(s) {unknown}; known: {sorted(known)}")
        for required in ("topic", "product_key", "device_name", "version"):
            if not isinstance(table.get(required), str) or not table[required]:
                raise SourceConfigError(f"'{required}' is required (a string)")
        fmt = table.get("format", "json")
        if fmt not in FORMATS:
            raise SourceConfigError(f"format {fmt!r}: one of {FORMATS}")
        unit = table.get("event_time_unit", "ms")
        if unit not in TIME_UNITS:
            raise SourceConfigError(f"event_time_unit {unit!r}: one of {TIME_UNITS}")
        framing = table.get("framing", "raw")
        if framing not in AVRO_FRAMINGS:
            raise SourceConfigError(f"framing {framing!r}: one of {AVRO_FRAMINGS}")
        schema: Path | None = None
        if fmt == "avro":
            if not isinstance(table.get("schema"), str):
                raise SourceConfigError("format 'avro' needs schema = \"path/to/schema.avsc\"")
            schema = (base_dir / table["schema"]).resolve()
            if not schema.is_file():
                raise SourceConfigError(f"schema file {schema} does not exist")
        elif "schema" in table:
            raise SourceConfigError("'schema' is for format 'avro' only")
        module_default = table.get("module_default", "default")
        if not isinstance(module_default, str) or not module_default:
            raise SourceConfigError("module_default must be a non-empty string")
        return cls(
            topic=table["topic"],
            name=str(table.get("name", table["topic"])),
            format=fmt,
            product_key=JsonPath.parse(table["product_key"]),
            device_name=JsonPath.parse(table["device_name"]),
            version=JsonPath.parse(table["version"]),
            module=JsonPath.parse(table["module"]) if "module" in table else None,
            module_default=module_default,
            event_time=JsonPath.parse(table["event_time"]) if "event_time" in table else None,
            event_time_unit=unit,
            only_when=_condition(table.get("only_when"), "only_when"),
            skip_when=_condition(table.get("skip_when"), "skip_when"),
            avro_schema=schema,
            avro_framing=framing,
        )


def load_sources(path: str | Path) -> list[ReportSource]:
    """The ``[[source]]`` tables of a TOML file (an empty path: none)."""
    if not path:
        return []
    file = Path(path)
    try:
        data = tomllib.loads(file.read_text())
    except OSError as exc:
        raise SourceConfigError(f"cannot read source file {file}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SourceConfigError(f"{file} is not valid TOML: {exc}") from exc
    tables = data.get("source", [])
    if not isinstance(tables, list) or not tables:
        raise SourceConfigError(f"{file}: no [[source]] table")
    sources = []
    for i, table in enumerate(tables):
        try:
            sources.append(ReportSource.from_table(table, file.parent))
        except SourceConfigError as exc:
            raise SourceConfigError(f"{file}, source {i + 1}: {exc}") from exc
    topics = [s.topic for s in sources]
    if len(set(topics)) != len(topics):
        raise SourceConfigError(f"{file}: a topic is named by two sources: {topics}")
    return sources


def _text(value: Any, path: JsonPath, what: str) -> str:
    if isinstance(value, str):
        if value:
            return value
        raise Unmappable(f"{what} at {path} is empty")
    if value is _MISSING:
        raise Unmappable(f"no {what} at {path}")
    # An integer is unambiguous as text; a float is not (2.10 parses as 2.1).
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise Unmappable(f"{what} at {path} is {type(value).__name__}, not a string")


class SourceMapper:
    """Maps one source's raw record values onto ``(device key, DeviceReport bytes)``."""

    def __init__(self, source: ReportSource) -> None:
        self.source = source
        self._header = REPORT_HEADER
        self._parse = self._avro_parser(source) if source.format == "avro" else orjson.loads
        self._to_ms = {
            "ms": _time_ms,
            "s": _time_s,
            "iso8601": _time_iso,
        }[source.event_time_unit]
        self._in_ms = source.event_time_unit == "ms"
        self._product_key = _getter(source.product_key)
        self._device_name = _getter(source.device_name)
        self._version = _getter(source.version)
        self._module = _getter(source.module)
        self._event_time = None if source.event_time is None else _getter(source.event_time)
        self._only_when = [(_getter(path), wanted) for path, wanted in source.only_when]
        self._skip_when = [(_getter(path), wanted) for path, wanted in source.skip_when]
        self._repeated: dict[str, bytes] = {}

    @staticmethod
    def _avro_parser(source: ReportSource) -> Callable[[bytes], Any]:
        import cavro

        assert source.avro_schema is not None
        decode = cavro.Schema(
            source.avro_schema.read_text(), options=cavro.Options(record_decodes_to_dict=True)
        ).binary_decode
        skip = {"raw": 0, "confluent": 5, "single-object": 10}[source.avro_framing]
        if not skip:
            return decode
        return lambda raw: decode(raw[skip:])

    def map(self, raw: bytes, timestamp_ms: int) -> tuple[bytes, bytes] | None:
        """``(productKey/deviceName, DeviceReport)``; None for a record the skip rules
        leave out. Raises ``Unmappable`` with the reason for one that does not map."""
        source = self.source
        try:
            record = self._parse(raw)
        except Exception as exc:  # orjson and cavro raise their own types
            raise Unmappable(f"not {source.format.upper()}: {exc}") from exc
        for get, wanted in self._only_when:
            value = get(record)
            if value is _MISSING or type(value) in _CONTAINERS or value not in wanted:
                return None
        for get, wanted in self._skip_when:
            value = get(record)
            if value is not _MISSING and type(value) not in _CONTAINERS and value in wanted:
                return None
        # The common case (a non-empty string, a time in ms) costs one type check each;
        # anything else takes _text / _to_ms, which convert or say what is wrong.
        product_key = self._product_key(record)
        if type(product_key) is not str or not product_key:
            product_key = _text(product_key, source.product_key, "product key")
        device_name = self._device_name(record)
        if type(device_name) is not str or not device_name:
            device_name = _text(device_name, source.device_name, "device name")
        if "/" in product_key or "/" in device_name:
            raise Unmappable("a product key or device name with '/' (the key separator)")
        version = self._version(record)
        if type(version) is not str or not version:
            version = _text(version, source.version, "version")
        module = self._module(record)
        if type(module) is not str or not module:
            if module is _MISSING or module is None:
                module = source.module_default
            else:
                assert source.module is not None
                module = _text(module, source.module, "module")
        if self._event_time is None:
            event_time = timestamp_ms
        else:
            event_time = self._event_time(record)
            if type(event_time) is not int or event_time < 0 or not self._in_ms:
                if event_time is _MISSING or event_time is None:
                    raise Unmappable(f"no event time at {source.event_time}")
                assert source.event_time is not None
                event_time = self._to_ms(event_time, source.event_time)
        # The DeviceReport's bytes, written field by field as the Avro encoder would
        # (unit-tested against it): a third of the cost of encoding a dict with cavro.
        # Product keys, modules and versions repeat across a fleet: encoded once.
        repeated = self._repeated
        name = device_name.encode()
        # Avro writes a string's length as a zig-zag varint: one byte below 64.
        length = _SHORT_LENGTHS[len(name)] if len(name) < 64 else encode_long(len(name))
        return f"{product_key}/{device_name}".encode(), b"".join(
            (
                self._header,
                repeated.get(product_key) or self._remember(product_key),
                length,
                name,
                _KIND_VERSION,
                repeated.get(module) or self._remember(module),
                _SOME,
                repeated.get(version) or self._remember(version),
                _NO_STEP_DESC_ID,
                encode_long(event_time),
            )
        )

    def _remember(self, text: str) -> bytes:
        encoded = encode_string(text)
        if len(self._repeated) < _REPEATED_MAX:
            self._repeated[text] = encoded
        return encoded


_SHORT_LENGTHS = [bytes((n << 1,)) for n in range(64)]
# Bound on the encodings kept per source, so arbitrary strings cannot grow it.
_REPEATED_MAX = 4096
_CONTAINERS = (dict, list)


def _getter(path: JsonPath | None) -> Callable[[Any], Any]:
    """A function reading ``path`` (``_MISSING`` when absent): for names only, chained
    subscripts (a name into a list or a string raises TypeError, caught); else the
    general ``JsonPath.find``, which keeps indexes out of strings."""
    if path is None:
        return lambda record: _MISSING
    steps = path.steps
    if not all(type(step) is str for step in steps):
        return path.find
    if len(steps) == 1:
        (a,) = steps

        def get1(record: Any) -> Any:
            try:
                return record[a]
            except (KeyError, TypeError, IndexError):
                return _MISSING

        return get1
    if len(steps) == 2:
        a, b = steps

        def get2(record: Any) -> Any:
            try:
                return record[a][b]
            except (KeyError, TypeError, IndexError):
                return _MISSING

        return get2
    if len(steps) == 3:
        a, b, c = steps

        def get3(record: Any) -> Any:
            try:
                return record[a][b][c]
            except (KeyError, TypeError, IndexError):
                return _MISSING

        return get3
    return path.find


# In DeviceReport's field order: kind VERSION (enum index 0), the version union's string
# branch (index 1), then step, desc and message_id null (each union index 0).
_KIND_VERSION = b"\x00"
_SOME = b"\x02"
_NO_STEP_DESC_ID = b"\x00\x00\x00"


def _time_ms(value: Any, path: JsonPath) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise Unmappable(f"event time at {path} is {value!r}, not milliseconds since the epoch")


def _time_s(value: Any, path: JsonPath) -> int:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return round(value * 1000)
    raise Unmappable(f"event time at {path} is {value!r}, not seconds since the epoch")


def _time_iso(value: Any, path: JsonPath) -> int:
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            if parsed.tzinfo is None:
                raise Unmappable(f"event time at {path} ({value!r}) has no time zone")
            return round(parsed.timestamp() * 1000)
    raise Unmappable(f"event time at {path} is {value!r}, not an ISO 8601 time")
