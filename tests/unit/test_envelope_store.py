"""One envelope's devices: the byte path and the object path see one another's changes,
and every changed device is written once."""

from __future__ import annotations

from collections.abc import Iterator

from otaflow.codec import codec
from otaflow.device_avro import decode_device_state, encode_device_state
from otaflow.domain.devices import DeviceState
from otaflow.domain.simulation import report_record
from otaflow.plain_reports import VersionReport, read_version_report
from streams.envelope_store import EnvelopeStore


def version(
    device_name: str, version: str, at: int = 100, module: str = "default"
) -> VersionReport:
    record = report_record("pk", device_name, "VERSION", at, module=module, version=version)
    parsed = read_version_report(codec().encode("DeviceReport", record))
    assert parsed is not None
    return parsed


def store_over(table: dict[bytes, bytes]) -> EnvelopeStore:
    def scan(prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        return iter(sorted((k, v) for k, v in table.items() if k.startswith(prefix)))

    return EnvelopeStore(table.get, scan)


def stored(name: str, version: str = "0.9", **fields: object) -> tuple[bytes, bytes]:
    state = DeviceState("pk", name, modules={"default": version}, last_seen=50, **fields)  # type: ignore[arg-type]
    return state.key.encode(), encode_device_state(state)


def written(store: EnvelopeStore) -> dict[bytes, DeviceState | None]:
    writes = store.writes()
    assert len({key for key, _ in writes}) == len(writes)  # each device once
    return {key: None if raw is None else decode_device_state(raw) for key, raw in writes}


def test_a_plain_device_and_a_new_one_are_written_from_bytes() -> None:
    store = store_over(dict([stored("d1")]))
    assert store.record_version(version("d1", "1.0"))
    assert store.record_version(version("d2", "1.0"))
    assert store.record_version(version("d2", "1.1", at=120))  # the same device again
    assert not store.states  # no object was made
    out = written(store)
    assert out[b"pk/d1"] == DeviceState(
        "pk", "d1", online=True, modules={"default": "1.0"}, last_seen=100
    )
    assert out[b"pk/d2"] == DeviceState(
        "pk", "d2", online=True, modules={"default": "1.1"}, last_seen=120
    )


def test_the_engine_loading_a_device_sees_its_byte_path_change() -> None:
    store = store_over(dict([stored("d1")]))
    assert store.record_version(version("d1", "1.0"))
    state = store.load("pk/d1")
    assert state is not None and state.modules == {"default": "1.0"} and state.online
    state.online = False  # the engine goes on with the object (an OFFLINE report, say)
    store.put(state)
    # The object now holds the device: the byte path stands aside.
    assert not store.record_version(version("d1", "1.1"))
    out = written(store)
    assert out == {b"pk/d1": state}


def test_the_byte_path_refuses_what_is_not_plain() -> None:
    store = store_over(dict([stored("d1", groups=["g1"])]))
    assert not store.record_version(version("d1", "1.0"))
    assert store.record_version(version("d2", "1.0"))
    assert not store.record_version(version("d2", "1.0", module="wifi"))  # a second module
    state = store.load("pk/d2")
    assert state is not None
    state.modules["wifi"] = "1.0"
    store.put(state)
    assert written(store)[b"pk/d2"] == DeviceState(
        "pk", "d2", online=True, modules={"default": "1.0", "wifi": "1.0"}, last_seen=100
    )


def test_a_scan_sees_byte_path_devices_new_and_stored() -> None:
    store = store_over(dict([stored("d1"), stored("d3")]))
    assert store.record_version(version("d1", "1.0"))
    assert store.record_version(version("d2", "1.0"))
    found = {s.key: s.modules["default"] for s in store.scan("pk/", [])}
    assert found == {"pk/d1": "1.0", "pk/d2": "1.0", "pk/d3": "0.9"}
    assert not store.spliced  # now objects, written from them
    out = written(store)
    assert set(out) == {b"pk/d1", b"pk/d2"}
    assert out[b"pk/d2"] is not None and out[b"pk/d2"].modules == {"default": "1.0"}


def test_a_device_deleted_after_the_byte_path_is_written_once_as_deleted() -> None:
    store = store_over(dict([stored("d1")]))
    assert store.record_version(version("d1", "1.0"))
    store.delete("pk/d1")
    assert written(store) == {b"pk/d1": None}
    store.clear()
    assert store.writes() == []
