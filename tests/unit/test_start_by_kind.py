"""A fleet-wide START applied to plain devices in bytes writes exactly what the engine
decides for each device: its state, its task event, its push-queue entry, its deadline."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otaflow.device_avro import encode_device_state, encode_queued_task, encode_task_event
from otaflow.domain.batches import Batch, BatchRegistry, BatchScope
from otaflow.domain.deadlines import DeadlineHeap
from otaflow.domain.devices import DeviceState
from otaflow.domain.engine import DeviceEngine, Effects
from otaflow.domain.simulation import PK, firmware, make_batch
from otaflow.domain.start_by_kind import UNCHANGED, PlainStart, applies_to
from otaflow.start_splicer import StartSplicer

NOW = 1_800_000_000_000
VERSIONS = st.sampled_from(["1.0", "1.1", "2.0", "é"])
MODULES = st.sampled_from(["default", "wifi"])


@st.composite
def batches(draw: st.DrawFn) -> Batch:
    src = draw(st.none() | VERSIONS)
    fw = firmware(
        draw(st.sampled_from(["2.0", "1.1"])),
        module=draw(MODULES),
        src_version=src if draw(st.booleans()) else None,
    )
    fields: dict[str, Any] = {
        "src_versions": tuple(draw(st.lists(VERSIONS, max_size=2))),
        "need_push": draw(st.booleans()),
        "need_confirm": draw(st.booleans()),
        "timeout_minutes": draw(st.none() | st.integers(1, 1440)),
        "multi_module": draw(st.booleans()),
        "overwrite_mode": draw(st.sampled_from([1, 2])),
        "tags": draw(st.sampled_from([{}, {"k": "v"}])),
    }
    if draw(st.booleans()):
        fields["retry_interval_minutes"] = draw(st.integers(1, 1440))
        fields["retry_count"] = draw(st.integers(0, 5))
    if draw(st.booleans()):
        fields["schedule_start"] = NOW + draw(st.integers(-60_000, 60_000))
        fields["schedule_end"] = fields["schedule_start"] + draw(st.integers(1, 10_000_000))
    return make_batch("B1", at=NOW - 1000, fw=fw, **fields)


devices = st.builds(
    DeviceState,
    product_key=st.just(PK),
    device_name=st.text(min_size=1, max_size=12).filter(lambda n: "/" not in n),
    online=st.booleans(),
    modules=st.dictionaries(MODULES, VERSIONS, min_size=1, max_size=1),
    last_seen=st.integers(0, NOW + 10**6) | st.integers(-(2**40), 2**40),
    registered=st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(batches(), st.lists(devices, min_size=1, max_size=6, unique_by=lambda d: d.device_name))
def test_a_fleet_start_in_bytes_is_what_the_engine_decides(
    batch: Batch, fleet: list[DeviceState]
) -> None:
    registry = BatchRegistry()
    registry.put(batch)
    engine = DeviceEngine(registry)

    # The engine, device by device (the object path).
    fx, heap = Effects(), DeadlineHeap()
    expected: dict[str, bytes] = {}
    for device in fleet:
        state = copy.deepcopy(device)
        engine.on_static_start(state, batch, NOW, fx)
        if state.key in fx.touched:
            expected[state.key] = encode_device_state(state)
            heap.note(state.key, engine.next_deadline(state, NOW))
    expected_events = [(k.encode(), encode_task_event(e)) for k, e in fx.task_events]

    # The same START in bytes.
    byte_fx, byte_heap = Effects(), DeadlineHeap()
    splicer = StartSplicer(PlainStart(engine, batch, NOW, byte_fx, byte_heap))
    written: dict[str, bytes] = {}
    for device in fleet:
        raw = encode_device_state(device)
        new = splicer.apply(device.key, raw)
        assert new is not None  # a plain device of short names: always in bytes
        if new is not raw:
            written[device.key] = new
    assert written == expected
    assert [(e["key"], e["value"]) for e in splicer.task_events] == expected_events
    # Push-queue entries: written in bytes by the splicer, none left in the effects.
    assert not byte_fx.queued
    assert splicer.queued == [encode_queued_task(t) for t in fx.queued.get(batch.batch_id, [])]
    assert set(fx.queued) <= {batch.batch_id}
    assert not byte_fx.notifications and not fx.notifications
    assert byte_heap._at == heap._at


def test_devices_that_are_not_plain_are_left_to_the_engine() -> None:
    batch = make_batch("B1", at=NOW - 1000, fw=firmware("2.0"))
    registry = BatchRegistry()
    registry.put(batch)
    engine = DeviceEngine(registry)
    splicer = StartSplicer(PlainStart(engine, batch, NOW, Effects(), None))
    plain = DeviceState(PK, "d1", online=True, modules={"default": "1.0"})
    assert splicer.apply(plain.key, encode_device_state(plain)) is not None
    for other in (
        DeviceState(PK, "d1", modules={"default": "1.0", "wifi": "1.0"}),
        DeviceState(PK, "d1", modules={"default": "1.0"}, groups=["g1"]),
        DeviceState(PK, "d1", modules={"default": "1.0"}, province="Zhejiang"),
        DeviceState(PK, "d1", modules={"default": "1.0"}, match_counts={"B0": 1}),
        DeviceState(PK, "d" * 64, modules={"default": "1.0"}),
        DeviceState(PK, "d1", modules={}),
        DeviceState("other", "d1", modules={"default": "1.0"}),  # not the batch's product
    ):
        assert splicer.apply(other.key, encode_device_state(other)) is None
    raw = encode_device_state(plain)
    for end in range(len(raw)):
        assert splicer.apply(plain.key, raw[:end]) is None  # damaged: never raises


def test_a_device_the_batch_does_not_take_is_left_as_it_is() -> None:
    batch = make_batch("B1", at=NOW - 1000, fw=firmware("2.0"), src_versions=("1.0",))
    registry = BatchRegistry()
    registry.put(batch)
    start = PlainStart(DeviceEngine(registry), batch, NOW, Effects(), None)
    assert start.outcome(True, "default", "0.9", False) is UNCHANGED
    device = DeviceState(PK, "d1", modules={"default": "0.9"})
    raw = encode_device_state(device)
    splicer = StartSplicer(start)
    assert splicer.apply(device.key, raw) is raw
    assert not splicer.task_events


def test_only_a_start_over_every_device_is_decided_by_kind() -> None:
    assert applies_to(make_batch("B1"))
    for scope in (BatchScope.REGIONAL, BatchScope.GROUP, BatchScope.TARGETED):
        batch = make_batch("B1", scope=scope)
        assert not applies_to(batch)
        with pytest.raises(ValueError):
            PlainStart(DeviceEngine(BatchRegistry()), batch, NOW, Effects(), None)
