"""Records written with a released schema stay readable: the CI check of the
compatibility rule (``docs/schema-evolution.md``) and the codec's resolution of old
fingerprints, byte paths included."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from otaflow import device_avro
from otaflow.codec import NAMESPACE, SCHEMA_DIR, Codec, DecodeError, codec
from otaflow.device_avro import decode_device_state, encode_device_state, plain_layout
from otaflow.domain.devices import DeviceState
from otaflow.domain.simulation import report_record
from otaflow.plain_reports import apply_version, read_version_report
from otaflow.schema_releases import problems, release, release_dirs
from tests.schema_support import Transcoder, previous_release
from tests.unit.test_schemas import named_types, sample

CODEC = codec()


def test_todays_schemas_read_every_released_schema() -> None:
    """The CI check: fails on a change to ``schemas/`` that breaks the rule."""
    assert release_dirs(), "no released schema set in schemas/released/"
    found = problems()
    assert not found, "schemas/ breaks docs/schema-evolution.md:\n" + "\n".join(found)


def test_every_released_schema_is_known_to_the_codec() -> None:
    """A released record type that today's codec could not read would fail here."""
    for folder in release_dirs():
        for path in sorted(folder.glob(f"{NAMESPACE}.*.avsc")):
            declared = json.loads(path.read_text())
            if declared["type"] == "record":
                record = sample(declared, named_types())
                old = Codec(folder, released=[]).encode(declared["name"], record)
                assert CODEC.decode(old)[0] == declared["name"]


def edit(schema_dir: Path, name: str, change: Callable[[dict[str, Any]], None]) -> None:
    path = schema_dir / f"{NAMESPACE}.{name}.avsc"
    schema = json.loads(path.read_text())
    change(schema)
    path.write_text(json.dumps(schema))


def field(schema: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in schema["fields"] if f["name"] == name)


def drop_field(name: str) -> Callable[[dict[str, Any]], None]:
    return lambda s: s.__setitem__("fields", [f for f in s["fields"] if f["name"] != name])


CHANGES: dict[str, tuple[str, Callable[[dict[str, Any]], None], str | None]] = {
    # name: (record type, change, what the check says; None: allowed)
    "add a field with a default": (
        "DeviceState",
        lambda s: s["fields"].append({"name": "notes", "type": "string", "default": ""}),
        None,
    ),
    "promote int to long": ("Task", lambda s: field(s, "progress").update(type="long"), None),
    "rename with an alias": (
        "DeviceState",
        lambda s: field(s, "city").update(name="town", aliases=["city"]),
        None,
    ),
    "add a field without a default": (
        "Task",
        lambda s: s["fields"].append({"name": "notes", "type": "string"}),
        "cannot be read",
    ),
    "change a type": (
        "DeviceState",
        lambda s: field(s, "last_seen").update(type="string", default=""),
        "cannot be read",
    ),
    "remove a field": ("DeviceState", drop_field("city"), "field otaflow.DeviceState.city"),
    "rename a field": (
        "Task",
        lambda s: field(s, "desc").update(name="description"),
        "field otaflow.Task.desc was removed",
    ),
    "reuse a removed name with another type": (
        "DeviceState",
        lambda s: field(s, "city").update(type="int", default=0),
        "cannot be read",
    ),
    "remove an enum symbol": (
        "TaskStatus",
        lambda s: s.__setitem__("symbols", s["symbols"][:-1]),
        "cannot be read",
    ),
}


@pytest.mark.parametrize("change", CHANGES, ids=str)
def test_the_check_refuses_what_would_lose_stored_records(change: str, tmp_path: Path) -> None:
    record_type, edit_schema, said = CHANGES[change]
    today = tmp_path / "schemas"
    shutil.copytree(SCHEMA_DIR, today, ignore=shutil.ignore_patterns("released"))
    edit(today, record_type, edit_schema)
    found = problems(today, release_dirs())
    if said is None:
        assert found == []
    else:
        assert found and all(said in line or "cannot be read" in line for line in found)
        assert any(said in line for line in found), found


def test_the_check_refuses_a_removed_record_type(tmp_path: Path) -> None:
    today = tmp_path / "schemas"
    shutil.copytree(SCHEMA_DIR, today, ignore=shutil.ignore_patterns("released"))
    (today / f"{NAMESPACE}.ControlModule.avsc").unlink()
    found = problems(today, release_dirs())
    assert any("ControlModule" in line and "gone" in line for line in found)
    module = {"product_key": "pk", "module_name": "m", "created_at": 1, "updated_at": 1}
    with pytest.raises(DecodeError, match="no longer a record type"):
        Codec(today, released=release_dirs()).decode(CODEC.encode("ControlModule", module))


def test_a_release_keeps_todays_schemas_once(tmp_path: Path) -> None:
    kept = release("9.9.9", released_dir=tmp_path)
    assert sorted(p.name for p in kept.iterdir()) == sorted(
        p.name for p in SCHEMA_DIR.glob(f"{NAMESPACE}.*.avsc")
    )
    with pytest.raises(ValueError, match="never changes"):
        release("9.9.9", released_dir=tmp_path)


def test_every_record_of_a_previous_release_reads_as_today(tmp_path: Path) -> None:
    """Every record type one release older (each without its last defaulted field)
    decodes through the codec as fastavro's resolution reads it: new fields defaulted."""
    previous_dir = previous_release(tmp_path / "previous")
    previous = Codec(previous_dir, released=[])
    upgraded = Codec(released=[previous_dir])
    oracle = Transcoder(previous_dir, upgraded)
    declared = {p.stem: json.loads(p.read_text()) for p in previous_dir.glob("*.avsc")}
    changed = 0
    for name in previous.names:
        old = previous.encode(name, sample(declared[f"{NAMESPACE}.{name}"], declared))
        changed += previous.schema(name).fingerprint != CODEC.schema(name).fingerprint
        assert upgraded.decode(old) == (name, oracle.today_reading(old))
        assert upgraded.decode_as(name, old) == oracle.today_reading(old)
    assert changed >= 25  # every record type with a defaulted field (or one nested)
    # Unknown to a codec that does not keep that release: the old code's failure.
    with pytest.raises(DecodeError, match="unknown schema fingerprint"):
        Codec(released=[]).decode(
            previous.encode("DeviceState", {"product_key": "p", "device_name": "d"})
        )


def test_an_old_device_state_leaves_the_byte_paths_for_the_resolving_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plain device state written before ``group_matches`` existed: the hand-written
    reader and both byte paths decline it (its fingerprint is not today's), the codec
    resolves it, and the next write is in today's schema, on the fast path again."""
    previous_dir = previous_release(tmp_path / "previous", {"DeviceState": ["group_matches"]})
    state = DeviceState("pk", "d1", online=True, modules={"default": "1.0"}, last_seen=5)
    old = Codec(previous_dir, released=[]).encode("DeviceState", state.to_record())
    assert plain_layout(old) is None
    version = read_version_report(
        CODEC.encode("DeviceReport", report_record("pk", "d1", "VERSION", 9, version="2.0"))
    )
    assert version is not None and apply_version(old, version) is None
    with pytest.raises(DecodeError, match="unknown schema fingerprint"):
        decode_device_state(old)  # what every release so far did: the worker stopped
    upgraded = Codec(released=[previous_dir])
    monkeypatch.setattr(device_avro, "codec", lambda: upgraded)
    assert decode_device_state(old) == state
    again = encode_device_state(decode_device_state(old))
    assert plain_layout(again) is not None and decode_device_state(again) == state
