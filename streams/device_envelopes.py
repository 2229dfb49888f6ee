"""The device agent's work on one envelope, without Faust (``streams.device_agent`` wires it).

Per envelope: skip the reports the batcher re-sent after a restart (offset
de-duplication per source partition), dispatch each item (a version report of a plain
device through the byte path, other reports straight to the engine, other records by
schema name, anything unexpected to the dead letters), move the partition's event-time
watermark, and say which partition metadata to write. The byte-path gate asks the
domain once per (product, module) and envelope whether a version report can only be
recorded (``DeviceEngine.decides_nothing_on_version``).

Nothing here imports Faust or aiokafka (``tests/unit/test_device_envelopes.py`` checks
it): the stores are given as callables, so the unit tests and the reference model
(``tests/unit/test_engine_model.py``) run the code the worker runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from otaflow.codec import HEADER_LEN, DecodeError, codec
from otaflow.domain.batches import Batch, BatchRegistry
from otaflow.domain.deadlines import DeadlineHeap
from otaflow.domain.engine import KEEP_FINISHED_TASKS, Effects
from otaflow.domain.groups import Group, GroupRegistry
from otaflow.domain.open_tasks import OpenTaskWatch
from otaflow.domain.partition_engine import PartitionEngine
from otaflow.plain_reports import VersionReport, read_version_report
from streams.envelope_store import EnvelopeStore

CODEC = codec()
# Batcher items are DeviceReports: decoded straight by their schema (see ``apply``).
REPORT_HEADER = CODEC.schema("DeviceReport").header
decode_report = CODEC.schema("DeviceReport").coder.binary_decode

# Records the partition engine applies (by schema name).
HANDLED = frozenset(
    {
        "DeviceReport",
        "TaskRelease",
        "BatchControl",
        "BatchTarget",
        "DeviceRegistration",
        "GroupControl",
        "TaskCommand",
        "Tick",
        "PhasedQuota",
        "OpenTaskProbe",
    }
)

# A write to the ``device-partition-meta`` table: key, value.
WriteMeta = Callable[[bytes, bytes], None]


def meta_prefix(partition: int) -> bytes:
    """The keys of one partition's metadata (batches, groups, progress)."""
    return f"{partition}/".encode()


def progress_key(partition: int) -> bytes:
    return f"{partition}/progress".encode()


# The partition progress's map of source offsets carries, under this key, the offset
# of the last envelope of otaflow.device-events applied (no source partition is -1;
# an older reader takes it for one and never looks it up).
ENVELOPE_OFFSET_KEY = "-1"


@dataclass
class DevicePartition:
    """What the agent keeps in memory for one partition it owns; rebuilt after a rebalance."""

    partition: int
    registry: BatchRegistry
    groups: GroupRegistry
    # Source partition of ota.device.reports -> the last offset applied from it.
    source_offsets: dict[int, int]
    watermark: int
    # The last envelope applied (its offset in otaflow.device-events); -1: none known.
    envelope_offset: int = -1
    deadlines: DeadlineHeap | None = None
    # Static batches to count again (otaflow.domain.open_tasks); a new one after a rebuild.
    open_tasks: OpenTaskWatch = field(default_factory=OpenTaskWatch)

    @classmethod
    def rebuild(cls, partition: int, meta: Iterable[tuple[bytes, bytes]]) -> DevicePartition:
        """From the partition's metadata entries (keys under ``meta_prefix(partition)``)."""
        registry = BatchRegistry()
        groups = GroupRegistry()
        offsets: dict[int, int] = {}
        watermark = 0
        envelope_offset = -1
        progress = progress_key(partition)
        for key, raw in meta:
            name, record = CODEC.decode(raw)
            if name == "Batch":
                registry.put(Batch.from_record(record))
            elif name == "GroupControl":
                groups.put(Group.from_control(record))
            elif name == "PartitionProgress" and key == progress:
                offsets = {int(p): offset for p, offset in record["source_offsets"].items()}
                envelope_offset = offsets.pop(int(ENVELOPE_OFFSET_KEY), -1)
                watermark = record["watermark"]
        return cls(partition, registry, groups, offsets, watermark, envelope_offset)

    def already_applied(self, envelope_offset: int) -> bool:
        """Is this envelope a replay of one whose round is durable? Its progress (which
        carries the envelope's offset) is the last thing of a round made durable
        (``streams.checkpoint``), so such an envelope has nothing to apply or send."""
        return 0 <= envelope_offset <= self.envelope_offset

    def progress(self) -> tuple[bytes, bytes]:
        """The metadata entry that records the applied offsets and the watermark."""
        return progress_key(self.partition), CODEC.encode(
            "PartitionProgress",
            {
                # An Avro map: its keys are strings.
                "source_offsets": {
                    **{str(p): o for p, o in self.source_offsets.items()},
                    ENVELOPE_OFFSET_KEY: self.envelope_offset,
                },
                "watermark": self.watermark,
            },
        )


class EnvelopeRun:
    """One envelope's worth of work over the partition's devices (``EnvelopeStore``).

    The caller sends ``fx``, ``dead`` and ``store.task_events``, writes
    ``store.writes()`` and, when ``meta_dirty``, ``view.progress()``; then ``release``.
    """

    def __init__(
        self,
        view: DevicePartition,
        store: EnvelopeStore,
        write_meta: WriteMeta,
        keep_finished: int = KEEP_FINISHED_TASKS,
    ) -> None:
        self.view = view
        self.store = store
        self.write_meta = write_meta
        self.fx = Effects()
        self.dead: list[tuple[str, str, bytes]] = []
        self.meta_dirty = False
        self.engine = PartitionEngine(
            view.registry,
            view.groups,
            store,
            view.deadlines,
            keep_finished,
            partition=view.partition,
            open_tasks=view.open_tasks,
        )
        # (product key, module) -> whether a version report can only be recorded:
        # asked once per pair and envelope (only reports come between the asks).
        self._nothing_to_decide: dict[tuple[bytes, bytes], bool] = {}

    # -- the envelope ---------------------------------------------------------------------

    def apply_envelope(self, envelope: dict[str, Any], envelope_offset: int = -1) -> int:
        """Apply a decoded ``DeviceEventBatch`` read at ``envelope_offset`` (-1: not
        known); returns how many reports it applied. The caller skips an envelope
        ``view.already_applied``."""
        self.start(envelope_offset)
        sources = envelope["source_partitions"]
        offsets = envelope["source_offsets"]
        applied = self.view.source_offsets
        apply = self.apply
        reports = 0
        for i, item in enumerate(envelope["items"]):
            if sources and (source_partition := sources[i]) >= 0:
                # Reports the batcher re-sent after a restart are skipped, not applied twice.
                offset = offsets[i]
                if offset <= applied.get(source_partition, -1):
                    continue
                applied[source_partition] = offset
                self.meta_dirty = True
                apply(item, source_partition, offset)
                reports += 1
            else:
                apply(item, -1, -1)
        self.view.deadlines = self.engine.deadlines
        return reports

    def start(self, envelope_offset: int) -> None:
        """The round's progress will record this envelope as the last one applied."""
        if envelope_offset >= 0:
            self.view.envelope_offset = envelope_offset
            self.meta_dirty = True

    # -- records ------------------------------------------------------------------------

    def apply(self, item: bytes, source_partition: int, offset: int) -> None:
        """Apply one item: a report the batcher copied from ``source_partition`` at
        ``offset``, or (``source_partition`` -1) a record another agent sent."""
        if item[:HEADER_LEN] == REPORT_HEADER:
            # Most items: a plain device's version report, applied in bytes.
            version = read_version_report(item)
            if version is not None and self._record_version(version):
                return
            # Other reports go straight to the engine (no schema lookup, no dispatch
            # by name).
            try:
                report = decode_report(item[HEADER_LEN:])
            except Exception as exc:  # cavro raises several types for corrupt bodies
                reason = f"corrupt DeviceReport body: {exc}"
                self.dead.append((self._source(source_partition, offset), reason, item))
                return
            self._saw(report["event_time"])
            self.engine.report(report, self.fx)
            self.engine.count_settling(report["event_time"], self.fx)
            return
        try:
            name, record = CODEC.decode(item)
        except DecodeError as exc:
            self.dead.append((self._source(source_partition, offset), str(exc), item))
            return
        if name not in HANDLED or (source_partition >= 0 and name != "DeviceReport"):
            # The public reports topic carries device reports only: a tick or a task
            # command produced there by mistake must not act on the engine.
            reason = f"unexpected record type {name}"
            self.dead.append((self._source(source_partition, offset), reason, item))
            return
        self._nothing_to_decide.clear()  # a batch or group may have changed
        now = record.get("event_time")
        if isinstance(now, int):
            self._saw(now)
        self.engine.apply(name, record, self.fx)
        partition = self.view.partition
        if name == "BatchControl":
            batch_id = record["batch"]["batch_id"]
            self.write_meta(
                f"{partition}/batch/{batch_id}".encode(), CODEC.encode("Batch", record["batch"])
            )
        elif name == "GroupControl":
            self.write_meta(f"{partition}/group/{record['group_id']}".encode(), item)

    def _record_version(self, report: VersionReport) -> bool:
        """The byte path, where the domain decides nothing on this version (see
        ``otaflow.plain_reports``); False when the engine must see the report."""
        _, _, product, module, _, now, _ = report
        nothing = self._nothing_to_decide.get((product, module))
        if nothing is None:
            # The module as written carries its length byte (short strings only).
            nothing = self.engine.engine.decides_nothing_on_version(
                product.decode(), module[1:].decode()
            )
            self._nothing_to_decide[(product, module)] = nothing
        if not nothing or not self.store.record_version(report):
            return False
        key = report[0].decode()
        # What the engine does for a report: the device is touched (a later record of
        # the envelope settles it again), and a device without tasks has no deadline.
        self.fx.touched.add(key)
        deadlines = self.engine.deadlines
        if deadlines is not None:
            deadlines.note(key, None)
        self._saw(now)
        return True

    def _saw(self, now: int) -> None:
        """A record at event time ``now`` was applied: the partition's time moves on."""
        if now > self.view.watermark:
            self.view.watermark = now
            self.meta_dirty = True

    def _source(self, source_partition: int, offset: int) -> str:
        """Where a dead-lettered item came from (built only for those)."""
        if source_partition >= 0:
            return f"reports/{source_partition}/{offset}"
        return f"device-events/{self.view.partition}"

    def release(self) -> None:
        """Drop the envelope's states and effects now.

        The partition engine refers to itself (its handler table), so it and the store
        it holds would wait for the cyclic collector, which the worker runs rarely (see
        ``streams.gc_tuning``), and the states with them.
        """
        self.store.clear()
        self.fx = Effects()
        self.dead.clear()
