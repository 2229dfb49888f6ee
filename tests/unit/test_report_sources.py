"""A telemetry record of a team's own topic, mapped onto otaflow's version reports."""

from __future__ import annotations

import io
import json
from pathlib import Path

import fastavro
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otaflow.codec import codec
from otaflow.plain_reports import read_version_report
from otaflow.report_sources import (
    JsonPath,
    ReportSource,
    SourceConfigError,
    SourceMapper,
    Unmappable,
    load_sources,
)

CODEC = codec()

SOURCE_TOML = """
[[source]]
topic = "fleet.telemetry"
product_key = "$.device.product"
device_name = "$.device['name']"
module = "$.fw.module"
version = "$.fw.version"
event_time = "$.ts"
only_when = { "$.type" = ["firmware", "boot"] }
skip_when = { "$.fw.version" = "unknown" }
"""


def mapper(tmp_path: Path, text: str = SOURCE_TOML) -> SourceMapper:
    file = tmp_path / "sources.toml"
    file.write_text(text)
    (source,) = load_sources(file)
    return SourceMapper(source)


def telemetry(**overrides: object) -> bytes:
    record: dict[str, object] = {
        "type": "firmware",
        "device": {"product": "pk1", "name": "dev-7"},
        "fw": {"module": "mcu", "version": "1.4.2"},
        "ts": 1_800_000_000_123,
    }
    record.update(overrides)
    return json.dumps(record).encode()


def test_a_json_record_maps_to_the_report_a_native_producer_would_write(tmp_path: Path) -> None:
    key, value = mapper(tmp_path).map(telemetry(), timestamp_ms=5) or (b"", b"")
    assert key == b"pk1/dev-7"
    native = CODEC.encode(
        "DeviceReport",
        {
            "product_key": "pk1",
            "device_name": "dev-7",
            "kind": "VERSION",
            "module": "mcu",
            "version": "1.4.2",
            "event_time": 1_800_000_000_123,
        },
    )
    assert value == native
    # And it takes the device agent's byte path, as a native report does.
    assert read_version_report(value) is not None


def test_records_the_skip_rules_leave_out_are_skipped_not_dead_lettered(tmp_path: Path) -> None:
    m = mapper(tmp_path)
    assert m.map(telemetry(type="heartbeat"), 0) is None
    assert m.map(telemetry(type=None), 0) is None
    assert m.map(b'{"device": {}}', 0) is None  # no type at all: only_when fails
    assert m.map(telemetry(fw={"version": "unknown"}), 0) is None
    assert m.map(telemetry(type="boot"), 0) is not None


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (b"{not json", "not JSON"),
        (telemetry(device={"name": "dev-7"}), "no product key at $.device.product"),
        (telemetry(device={"product": "pk1", "name": ""}), "device name at $.device['name']"),
        (telemetry(fw={"module": "mcu"}), "no version at $.fw.version"),
        (telemetry(fw={"version": 2.10}), "version at $.fw.version is float"),
        (telemetry(device={"product": "p/k", "name": "d"}), "'/'"),
        (telemetry(ts="yesterday"), "not milliseconds"),
        (telemetry(ts=None), "no event time at $.ts"),
    ],
)
def test_a_record_that_does_not_map_says_why(tmp_path: Path, record: bytes, reason: str) -> None:
    with pytest.raises(Unmappable) as info:
        mapper(tmp_path).map(record, 0)
    assert reason in str(info.value)


def test_defaults_module_and_kafka_timestamp_and_integer_versions(tmp_path: Path) -> None:
    m = mapper(
        tmp_path,
        '[[source]]\ntopic = "t"\nproduct_key = "$.pk"\ndevice_name = "$.dn"\nversion = "$.v[0]"\n',
    )
    _, value = m.map(b'{"pk": "p", "dn": "d", "v": [7, 8]}', timestamp_ms=42) or (b"", b"")
    report = CODEC.decode_as("DeviceReport", value)
    assert (report["module"], report["version"], report["event_time"]) == ("default", "7", 42)


@pytest.mark.parametrize(
    ("unit", "value", "expected"),
    [
        ("s", 1_800_000_000.5, 1_800_000_000_500),
        ("iso8601", "2027-01-15T08:00:00Z", 1_800_000_000_000),
    ],
)
def test_event_time_units(tmp_path: Path, unit: str, value: object, expected: int) -> None:
    m = mapper(
        tmp_path,
        '[[source]]\ntopic = "t"\nproduct_key = "$.pk"\ndevice_name = "$.dn"\n'
        f'version = "$.v"\nevent_time = "$.at"\nevent_time_unit = "{unit}"\n',
    )
    raw = json.dumps({"pk": "p", "dn": "d", "v": "1", "at": value}).encode()
    _, encoded = m.map(raw, 0) or (b"", b"")
    assert CODEC.decode_as("DeviceReport", encoded)["event_time"] == expected


def test_an_iso_time_without_a_zone_is_refused(tmp_path: Path) -> None:
    m = mapper(
        tmp_path,
        '[[source]]\ntopic = "t"\nproduct_key = "$.pk"\ndevice_name = "$.dn"\n'
        'version = "$.v"\nevent_time = "$.at"\nevent_time_unit = "iso8601"\n',
    )
    with pytest.raises(Unmappable, match="no time zone"):
        m.map(b'{"pk": "p", "dn": "d", "v": "1", "at": "2027-01-15T08:00:00"}', 0)


def test_an_avro_topic_with_a_schema_file_and_confluent_framing(tmp_path: Path) -> None:
    schema = {
        "type": "record",
        "name": "Telemetry",
        "fields": [
            {"name": "product", "type": "string"},
            {"name": "device", "type": "string"},
            {"name": "firmware", "type": ["null", "string"], "default": None},
            {"name": "at", "type": "long"},
        ],
    }
    (tmp_path / "telemetry.avsc").write_text(json.dumps(schema))
    m = mapper(
        tmp_path,
        '[[source]]\ntopic = "t"\nformat = "avro"\nschema = "telemetry.avsc"\n'
        'framing = "confluent"\nproduct_key = "$.product"\ndevice_name = "$.device"\n'
        'version = "$.firmware"\nevent_time = "$.at"\n',
    )
    body = io.BytesIO()
    fastavro.schemaless_writer(
        body,
        fastavro.parse_schema(schema),
        {"product": "p", "device": "d", "firmware": "3.1", "at": 99},
    )
    raw = b"\x00\x00\x00\x00\x07" + body.getvalue()  # magic byte + schema id 7
    key, value = m.map(raw, 0) or (b"", b"")
    assert key == b"p/d"
    assert CODEC.decode_as("DeviceReport", value)["version"] == "3.1"
    with pytest.raises(Unmappable, match="not AVRO"):
        m.map(b"\x00\x00\x00\x00\x07\xff", 0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[source]]\ntopic = "t"\n', "'product_key' is required"),
        ('[[source]]\ntopic="t"\nproduct_key="pk"\ndevice_name="$.d"\nversion="$.v"\n', "'$'"),
        (
            '[[source]]\ntopic="t"\nproduct_key="$.p"\ndevice_name="$.d"\nversion="$.v"\n'
            'format="xml"\n',
            "format 'xml'",
        ),
        (
            '[[source]]\ntopic="t"\nproduct_key="$.p"\ndevice_name="$.d"\nversion="$.v"\n'
            'colour="red"\n',
            "unknown field(s) ['colour']",
        ),
        (
            '[[source]]\ntopic="t"\nproduct_key="$.p"\ndevice_name="$.d"\nversion="$.v"\n'
            'format="avro"\n',
            "needs schema",
        ),
        ('topic = "t"\n', "no [[source]] table"),
        ("[[source]\n", "not valid TOML"),
    ],
)
def test_a_bad_source_file_names_the_problem(tmp_path: Path, text: str, message: str) -> None:
    file = tmp_path / "sources.toml"
    file.write_text(text)
    with pytest.raises(SourceConfigError) as info:
        load_sources(file)
    assert message in str(info.value)


def test_paths() -> None:
    assert JsonPath.parse("$.a['b c'][2].d").steps == ("a", "b c", 2, "d")
    assert JsonPath.parse("$").find({"x": 1}) == {"x": 1}
    path = JsonPath.parse("$.a[0]")
    assert path.find({"a": [5]}) == 5
    # An index never reads a string's characters, a name never an array's items.
    assert path.find({"a": "xyz"}) is not path.find({"a": [5]})
    assert JsonPath.parse("$.a.b").find({"a": ["b"]}) is JsonPath.parse("$.x").find({})
    with pytest.raises(SourceConfigError):
        JsonPath.parse("$.a..b")


def test_source_defaults() -> None:
    source = ReportSource.from_table(
        {"topic": "t", "product_key": "$.p", "device_name": "$.d", "version": "$.v"}, Path(".")
    )
    assert (source.format, source.module_default, source.event_time) == ("json", "default", None)


@given(
    product_key=st.text(min_size=1, max_size=80).filter(lambda t: "/" not in t),
    device_name=st.text(min_size=1, max_size=80).filter(lambda t: "/" not in t),
    module=st.text(min_size=1, max_size=70),
    version=st.text(min_size=1, max_size=70),
    event_time=st.integers(min_value=0, max_value=2**62),
)
@settings(max_examples=300, deadline=None)
def test_the_bytes_written_are_the_avro_encoders(
    product_key: str, device_name: str, module: str, version: str, event_time: int
) -> None:
    source = ReportSource.from_table(
        {
            "topic": "t",
            "product_key": "$.p",
            "device_name": "$.d",
            "module": "$.m",
            "version": "$.v",
            "event_time": "$.t",
        },
        Path("."),
    )
    raw = orjson.dumps(
        {"p": product_key, "d": device_name, "m": module, "v": version, "t": event_time}
    )
    _, value = SourceMapper(source).map(raw, 0) or (b"", b"")
    record = {
        "product_key": product_key,
        "device_name": device_name,
        "kind": "VERSION",
        "module": module,
        "version": version,
        "event_time": event_time,
    }
    assert value == CODEC.encode("DeviceReport", record)
