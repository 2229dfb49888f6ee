"""The partition engine: scans that decode only candidates, deadlines, envelopes."""

from __future__ import annotations

import pytest

from otaflow.domain.batches import BatchScope
from otaflow.domain.deadlines import DeadlineHeap
from otaflow.domain.engine import Effects
from otaflow.domain.partition_engine import MemoryDeviceStore, PartitionEngine
from otaflow.domain.simulation import DAY, HOUR, Partition, dynamic_batch, make_batch

T = 3_000_000


def big_fleet(p: Partition, n: int, version: str = "1.0", pk: str = "pk") -> None:
    for i in range(n):
        p.version(f"{pk}-d{i}", version, T, pk=pk)


def test_a_start_decodes_only_devices_that_mention_a_source_version() -> None:
    p = Partition()
    big_fleet(p, 50, "1.0")
    big_fleet(p, 5, "0.7", pk="pk")  # overwrites the first five with 0.7
    big_fleet(p, 40, "1.0", pk="other")
    p.store.decoded = 0
    p.start(make_batch("S", at=T + 1, src_versions=("0.7",)))
    assert len(p.events) == 5
    assert p.store.decoded == 5  # not the 45 others of pk, nor any of 'other'


def test_a_start_without_filter_reads_only_the_products_prefix() -> None:
    p = Partition()
    big_fleet(p, 10)
    big_fleet(p, 30, pk="other")
    p.store.decoded = 0
    p.start(make_batch("S", at=T + 1))
    assert len(p.events) == 10 and p.store.decoded == 10


def test_cancel_by_job_decodes_only_devices_with_a_task_of_the_batch() -> None:
    p = Partition()
    big_fleet(p, 30)
    p.start(make_batch("S", at=T + 1, scope=BatchScope.TARGETED))
    for i in range(3):
        p.target("S", f"pk-d{i}", T + 2)
    p.store.decoded = 0
    p.control("CANCEL_TASKS", make_batch("S", at=T + 1), T + 3, statuses=["QUEUED"])
    assert p.history() == ["QUEUED"] * 3 + ["CANCELED"] * 3
    assert p.store.decoded == 3


def test_regional_start_decodes_only_devices_of_the_region() -> None:
    p = Partition()
    for i in range(20):
        p.register(f"d{i}", T, province="Zhejiang" if i < 4 else "Jiangsu")
        p.version(f"d{i}", "1.0", T)
    p.store.decoded = 0
    p.start(make_batch("R", at=T + 1, scope=BatchScope.REGIONAL, region="Zhejiang"))
    assert len(p.events) == 4 and p.store.decoded == 4


def test_ticks_advance_only_devices_whose_deadline_came() -> None:
    p = Partition()
    p.start(dynamic_batch("V", ["1.0"], at=T, timeout_minutes=60))
    big_fleet(p, 20)
    p.release(T + 1)
    p.progress("pk-d3", 10, T + 2)
    p.tick(T + 3)  # builds the deadline heap (one full read, once)
    p.store.decoded = 0
    p.tick(T + 30 * 60_000)
    assert p.store.decoded == 0  # nobody due
    p.tick(T + 2 + HOUR)
    assert p.store.decoded == 1
    assert p.tasks("pk-d3") == [("V", "FAILED")]
    assert p.deadlines is not None and len(p.deadlines) == 0


def test_a_rebuilt_heap_fires_timers_that_fell_due_while_nobody_watched() -> None:
    p = Partition()
    p.start(dynamic_batch("V", ["1.0"], at=T, retry_interval_minutes=60, retry_count=1))
    p.version("d1", "1.0", T)
    p.release(T + 1)
    p.progress("d1", -1, T + 2)
    # A new worker takes the partition over: same table, no heap yet.
    p.deadlines = None
    p.tick(T + DAY)
    assert p.tasks("d1") == [("V", "QUEUED")]


def test_deadline_heap_keeps_the_last_note_per_device() -> None:
    heap = DeadlineHeap()
    heap.note("a", 10)
    heap.note("b", 5)
    heap.note("a", 3)
    heap.note("b", None)
    assert heap.pop_due(4) == ["a"]
    assert heap.pop_due(100) == []
    heap.note("c", 7)
    heap.note("c", 7)
    assert heap.pop_due(7) == ["c"] and len(heap) == 0


def test_one_envelope_sees_devices_it_created_before_a_start() -> None:
    store = MemoryDeviceStore()
    partition = Partition()
    engine = PartitionEngine(partition.batches, partition.groups, store, None)
    fx = Effects()
    engine.apply(
        "DeviceReport",
        {
            "product_key": "pk",
            "device_name": "new",
            "kind": "VERSION",
            "module": "default",
            "version": "1.0",
            "event_time": T,
        },
        fx,
    )
    control = {
        "action": "START",
        "batch": make_batch("S", at=T).to_record(),
        "cancel_statuses": [],
        "event_time": T,
    }
    engine.apply("BatchControl", control, fx)
    assert [e["status"] for _, e in fx.task_events] == ["QUEUED"]
    store.commit()
    state = store.load("pk/new")
    assert state is not None and state.tasks[0].batch_id == "S"


def test_unknown_record_names_are_refused() -> None:
    p = Partition()
    with pytest.raises(KeyError):
        p.apply("Firmware", {})


def test_state_round_trips_through_the_codec_with_everything_set() -> None:
    p = Partition()
    p.group("zj", T, expression="province = 'Zhejiang'")
    p.start(
        dynamic_batch(
            "V", ["1.0"], at=T, timeout_minutes=5, retry_interval_minutes=1, retry_count=1
        )
    )
    p.register("d1", T, province="Zhejiang", city="Hangzhou", groups=["g1"])
    p.version("d1", "1.0", T)
    from otaflow.domain.simulation import group_batch

    p.start(group_batch("G", "zj", at=T + 1, overwrite_mode=2))
    p.release(T + 2)
    p.progress("d1", 3, T + 3)
    state = p.state("d1")  # decoded from the encoded table
    assert state.province == "Zhejiang" and state.groups == ["g1"]
    assert state.dynamic_groups == ["zj"] and state.group_matches == ["G"]
    assert state.match_counts == {"V": 1, "G": 1}
    task = state.tasks[-1]
    assert task.first_progress_at == T + 3 and task.timeout_minutes is None
