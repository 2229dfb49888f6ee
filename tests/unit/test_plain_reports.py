"""A plain device's version report applied in bytes reaches exactly the object path's
state, and anything else is left to the object path."""

from __future__ import annotations

import copy

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from otaflow.codec import codec
from otaflow.device_avro import _long, decode_device_state, encode_device_state
from otaflow.domain.batches import BatchRegistry
from otaflow.domain.devices import DeviceState
from otaflow.domain.engine import DeviceEngine, Effects
from otaflow.domain.simulation import report_record
from otaflow.plain_reports import apply_version, read_version_report

LONGS = st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.integers(0, 2**42)
# Mostly short names (the byte path's), sometimes 64 bytes or more (the object path's).
TEXT = st.text(max_size=12) | st.builds(lambda n: "é" * n, st.integers(30, 40))
MODULES = st.sampled_from(["default", "wifi", "wlan", "", "é"])  # wifi, wlan: same length
VERSIONS = st.none() | st.sampled_from(["1.0", "2.0", ""]) | TEXT


def report(product_key: str, device_name: str, **fields: object) -> dict[str, object]:
    """A version report (``report_record``'s, with a version)."""
    fields.setdefault("version", "1.0")
    kind = str(fields.pop("kind", "VERSION"))
    return report_record(product_key, device_name, kind, 1_800_000_000_000, **fields)


def short(text: str) -> bool:
    return len(text.encode()) < 64


@st.composite
def stored_states(draw: st.DrawFn, product_key: str, device_name: str) -> DeviceState | None:
    """None (a new device), a plain device, or one with anything the byte path refuses."""
    shape = draw(st.sampled_from(["new", "plain", "plain", "other"]))
    if shape == "new":
        return None
    state = DeviceState(
        product_key,
        device_name,
        online=draw(st.booleans()),
        modules={draw(MODULES): draw(TEXT)},
        last_seen=draw(LONGS),
        registered=draw(st.booleans()),
    )
    if shape == "other":
        extra = draw(st.sampled_from(["module", "count", "province", "groups", "dyn", "match"]))
        if extra == "module":
            state.modules["other"] = "0.1"
        elif extra == "count":
            state.match_counts["B"] = 1
        elif extra == "province":
            state.province = "Zhejiang"
        elif extra == "groups":
            state.groups = ["g1"]
        elif extra == "dyn":
            state.dynamic_groups = ["dg1"]
        else:
            state.group_matches = ["G"]
    return state


@settings(max_examples=400, deadline=None)
@given(st.data(), TEXT, TEXT, MODULES, VERSIONS, LONGS)
def test_the_byte_path_writes_what_the_engine_decides(
    data: st.DataObject,
    product_key: str,
    device_name: str,
    module: str,
    version: str | None,
    event_time: int,
) -> None:
    state = data.draw(stored_states(product_key, device_name))
    record = report(product_key, device_name, module=module, version=version, event_time=event_time)
    engine = DeviceEngine(BatchRegistry())  # no batch: the domain decides nothing
    fx = Effects()
    expected = encode_device_state(engine.on_report(copy.deepcopy(state), record, fx))
    assert not fx.task_events and not fx.notifications and not fx.queued

    parsed = read_version_report(codec().encode("DeviceReport", record))
    stored = None if state is None else encode_device_state(state)
    result = None if parsed is None else apply_version(stored, parsed)
    if result is not None:
        assert result == expected
        assert decode_device_state(result) == decode_device_state(expected)
    plain_for_module = state is None or (
        list(state.modules) == [module]
        and encode_device_state(state)
        == encode_device_state(
            DeviceState(
                product_key,
                device_name,
                online=state.online,
                modules=dict(state.modules),
                last_seen=state.last_seen,
                registered=state.registered,
            )
        )
    )
    byte_path_applies = (
        plain_for_module
        and all(short(t) for t in (product_key, device_name, module))
        and module != ""
        and version is not None
        and short(version)
        and (state is None or short(state.modules[module]))
    )
    # Taken whenever it applies, and only then.
    assert (result is not None) == byte_path_applies


@given(TEXT, TEXT, MODULES, TEXT, LONGS)
def test_a_version_report_is_read_as_cavro_reads_it(
    product_key: str, device_name: str, module: str, version: str, event_time: int
) -> None:
    assume(all(short(t) for t in (product_key, device_name, module, version)) and module)
    record = report(product_key, device_name, module=module, version=version, event_time=event_time)
    parsed = read_version_report(codec().encode("DeviceReport", record))
    assert parsed is not None
    key, names, product, module_bytes, version_bytes, at, at_bytes = parsed
    assert key == f"{product_key}/{device_name}".encode()
    assert product == product_key.encode()
    assert names[1:].startswith(product) and names.endswith(device_name.encode())
    assert module_bytes[1:] == module.encode() and module_bytes[0] == len(module.encode()) * 2
    assert version_bytes[1:] == version.encode()
    assert at == event_time
    assert at_bytes == _long(event_time)  # as written, in its shortest form


def test_other_reports_are_left_to_the_object_path() -> None:
    encode = codec().encode
    for fields in (
        {"kind": "PROGRESS", "step": 10},
        {"kind": "ONLINE"},
        {"kind": "FIRMWARE_GET", "message_id": "7"},
        {"version": None},
        {"step": 5},
        {"desc": "x"},
        {"message_id": "1"},
        {"module": ""},
    ):
        assert read_version_report(encode("DeviceReport", report("pk", "d1", **fields))) is None
    assert read_version_report(encode("DeviceReport", report("pk", "d" * 64))) is None
    assert read_version_report(encode("DeviceReport", report("p" * 64, "d1"))) is None
    assert read_version_report(encode("DeviceState", DeviceState("pk", "d1").to_record())) is None


def test_damaged_report_bytes_are_left_to_the_object_path() -> None:
    item = codec().encode("DeviceReport", report("pk", "dé1"))
    assert read_version_report(item) is not None
    for end in range(len(item)):
        assert read_version_report(item[:end]) is None  # truncated anywhere
    assert read_version_report(item + b"\x00") is None
    bad_utf8 = item.replace("é".encode(), b"\xff\xfe")
    assert read_version_report(bad_utf8) is None
    # An event time wider than a long (cavro reads it as something else): left to cavro.
    parsed = read_version_report(item)
    assert parsed is not None
    time_at = len(item) - len(_long(parsed[5]))
    wide = item[:time_at] + bytes.fromhex("feffffffffffffffff7f")
    assert read_version_report(wide) is None
    assert read_version_report(item[:time_at] + bytes.fromhex("feffffffffffffffff00")) is None
    # Not in the shortest form (a trailing zero group): left to cavro, which re-encodes.
    assert read_version_report(item[:time_at] + bytes.fromhex("8000")) is None
    assert read_version_report(item[:time_at] + bytes.fromhex("00")) is not None


@given(st.integers(0, 60), st.integers(0, 255))
def test_damaged_state_bytes_never_raise(position: int, byte: int) -> None:
    parsed = read_version_report(codec().encode("DeviceReport", report("pk", "d1")))
    assert parsed is not None
    stored = bytearray(encode_device_state(DeviceState("pk", "d1", modules={"default": "0.9"})))
    assume(position < len(stored))
    stored[position] = byte
    result = apply_version(bytes(stored), parsed)
    if result is not None:  # the damage kept the plain layout: still a device state
        assert decode_device_state(result).modules == {"default": "1.0"}
    assert apply_version(bytes(stored[:position]), parsed) is None
