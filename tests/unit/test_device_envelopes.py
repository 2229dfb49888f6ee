"""The device agent's envelope logic without Faust: offset de-duplication, dispatch and
dead letters, the byte-path gate and its cache, the watermark, the partition's metadata."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

from otaflow.codec import codec
from otaflow.device_avro import decode_device_state, encode_device_state
from otaflow.domain.devices import DeviceState
from otaflow.domain.simulation import (
    control_record,
    dynamic_batch,
    group_record,
    make_batch,
    report_record,
)
from streams.device_envelopes import DevicePartition, EnvelopeRun, meta_prefix
from streams.envelope_store import EnvelopeStore

CODEC = codec()


class Partition:
    """Partition 3's device table and metadata as dicts, and a run per envelope."""

    def __init__(self) -> None:
        self.devices: dict[bytes, bytes] = {}
        self.meta: dict[bytes, bytes] = {}
        self.view = DevicePartition.rebuild(3, [])
        # Reports the last envelope applied (a compiled EnvelopeRun takes no new attributes).
        self.reports = 0

    def _scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        return iter(sorted((k, v) for k, v in self.devices.items() if k.startswith(prefix)))

    def run(self) -> EnvelopeRun:
        store = EnvelopeStore(self.devices.get, self._scan)
        return EnvelopeRun(self.view, store, self.meta.__setitem__)

    def envelope(
        self, items: list[bytes], sources: list[int] | None = None, offsets: list[int] | None = None
    ) -> EnvelopeRun:
        run = self.run()
        self.reports = run.apply_envelope(
            {
                "items": items,
                "source_partitions": sources or [],
                "source_offsets": offsets or [],
            }
        )
        for key, raw in run.store.writes():
            if raw is None:
                self.devices.pop(key, None)
            else:
                self.devices[key] = raw
        if run.meta_dirty:
            self.meta.__setitem__(*self.view.progress())
        return run


def version(dn: str, v: str, at: int, module: str = "default") -> bytes:
    return CODEC.encode(
        "DeviceReport", report_record("pk", dn, "VERSION", at, module=module, version=v)
    )


def control(action: str, batch: Any, at: int) -> bytes:
    return CODEC.encode("BatchControl", control_record(action, batch, at))


def test_the_logic_modules_and_the_domain_import_neither_faust_nor_aiokafka() -> None:
    code = (
        "import sys, streams.device_envelopes, streams.rate_queues, streams.command_records, "
        "otaflow.domain.simulation; "
        "print(sorted(m for m in ('faust', 'aiokafka', 'mode') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_reports_the_batcher_sent_again_are_skipped_by_offset() -> None:
    p = Partition()
    p.envelope([version("d1", "1.0", 10), version("d2", "1.0", 11)], sources=[0, 1], offsets=[5, 7])
    assert p.reports == 2
    assert p.view.source_offsets == {0: 5, 1: 7}
    # A replay of offset 5 and 7, then a new one from partition 0 (offset 6).
    p.envelope(
        [version("d1", "9.9", 12), version("d2", "9.9", 13), version("d1", "2.0", 14)],
        sources=[0, 1, 0],
        offsets=[5, 7, 6],
    )
    assert p.reports == 1
    assert p.view.source_offsets == {0: 6, 1: 7}
    assert decode_device_state(p.devices[b"pk/d1"]).modules == {"default": "2.0"}
    assert decode_device_state(p.devices[b"pk/d2"]).modules == {"default": "1.0"}
    # The offsets survive a rebuild from the metadata written at the envelope's end.
    rebuilt = DevicePartition.rebuild(3, p.meta.items())
    assert (rebuilt.source_offsets, rebuilt.watermark) == ({0: 6, 1: 7}, 14)


def test_unexpected_and_corrupt_items_are_dead_lettered_with_their_source() -> None:
    p = Partition()
    tick = CODEC.encode("Tick", {"event_time": 50})
    corrupt = version("d1", "1.0", 10)[:-3] + b"\xff\xff\xff"
    run = p.envelope([tick, corrupt, b"not avro"], sources=[4, 4, -1], offsets=[1, 2, -1])
    sources = [(source, reason.split(":")[0]) for source, reason, _ in run.dead]
    assert sources[0] == ("reports/4/1", "unexpected record type Tick")
    assert sources[1] == ("reports/4/2", "corrupt DeviceReport body")
    assert sources[2][0] == "device-events/3"
    assert p.view.watermark == 0  # nothing was applied
    # A tick another agent sent is applied: the partition's time moves on.
    assert not p.envelope([tick], sources=[-1], offsets=[-1]).dead
    assert p.view.watermark == 50


def test_a_plain_devices_version_report_takes_the_byte_path() -> None:
    p = Partition()
    p.devices[b"pk/d1"] = encode_device_state(DeviceState("pk", "d1", modules={"default": "0.9"}))
    run = p.run()
    run.apply(version("d1", "1.0", 10), 0, 1)
    assert b"pk/d1" in run.store.spliced and not run.store.states
    assert run.fx.touched == {"pk/d1"}
    assert p.view.watermark == 10


def test_a_dynamic_batch_for_the_module_sends_the_report_to_the_engine() -> None:
    p = Partition()
    p.envelope([control("START", dynamic_batch("b1", ["1.0"]), 5)], sources=[-1])
    run = p.run()
    run.apply(version("d1", "1.0", 10), 0, 1)
    assert not run.store.spliced
    state = run.store.states["pk/d1"]
    assert state is not None and [t.batch_id for t in state.tasks] == ["b1"]
    # Another module of the product has no dynamic batch: the byte path again.
    run.apply(version("d2", "1.0", 11, module="other"), 0, 2)
    assert b"pk/d2" in run.store.spliced


def test_the_gates_cache_is_dropped_when_a_batch_arrives_in_the_envelope() -> None:
    p = Partition()
    run = p.run()
    run.apply(version("d1", "0.5", 10), 0, 1)  # byte path: no batch yet (now cached)
    assert b"pk/d1" in run.store.spliced
    run.apply(control("START", dynamic_batch("b1", ["1.0"]), 11), -1, -1)
    run.apply(version("d2", "1.0", 12), 0, 2)
    state = run.store.states.get("pk/d2")
    assert state is not None and [t.batch_id for t in state.tasks] == ["b1"]


def test_batches_and_groups_are_written_to_the_metadata_and_rebuilt() -> None:
    p = Partition()
    batch = make_batch("b7")
    p.envelope(
        [
            control("START", batch, 5),
            CODEC.encode("GroupControl", group_record("g1", 6, expression="x")),
        ],
        sources=[-1, -1],
    )
    assert set(p.meta) == {b"3/batch/b7", b"3/group/g1", b"3/progress"}
    assert all(key.startswith(meta_prefix(3)) for key in p.meta)
    rebuilt = DevicePartition.rebuild(3, p.meta.items())
    assert rebuilt.registry.get("b7") == batch
    assert rebuilt.groups.get("g1") is not None
    assert rebuilt.watermark == 6


def test_the_watermark_never_goes_back() -> None:
    p = Partition()
    p.envelope([version("d1", "1.0", 30), version("d2", "1.0", 20)], sources=[0, 0], offsets=[1, 2])
    assert p.view.watermark == 30
    run = p.envelope([version("d1", "1.1", 25)], sources=[0], offsets=[3])
    assert p.view.watermark == 30
    assert run.meta_dirty  # the offset moved, the watermark did not
