"""Device agent: records in -> ``PartitionEngine`` -> device states and effects out.

Consumes ``otaflow.device-events``: envelopes that each carry many device-scoped
records for one partition (reports from the batcher, releases from the rate agent,
batch and group controls, registrations, targets and task commands from the command
agent, ticks). Per envelope it decodes once, runs the pure ``PartitionEngine`` over
every item, then writes each changed device once and sends the effects. The agent
is thin: every decision lives in ``otaflow.domain``. A plain device's version report,
when the domain says it decides nothing on it, is applied to the stored bytes without
the engine (``otaflow.plain_reports``, through ``streams.envelope_store``).

Per partition it keeps in memory (rebuilt after a rebalance from the
``device-partition-meta`` table): the batches and groups it was told about, how far
it applied each source partition of ``ota.device.reports``, its event-time
watermark, and a heap of device deadlines (built on the first tick).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from otaflow.codec import HEADER_LEN, DecodeError, codec
from otaflow.domain.batches import Batch, BatchRegistry
from otaflow.domain.engine import Effects
from otaflow.domain.groups import Group, GroupRegistry
from otaflow.domain.open_tasks import OpenTaskWatch
from otaflow.domain.partition import DeadlineHeap, PartitionEngine
from otaflow.plain_reports import VersionReport, read_version_report
from streams import app as streams_app
from streams import observe, transactions
from streams.app import app, device_events, devices, partition_meta, settings
from streams.checkpoint import Checkpoint, Round
from streams.effects import EffectSender
from streams.envelope_store import EnvelopeStore
from streams.partition_scan import scan_partition
from streams.table_writer import TableWriter

CODEC = codec()
# Batcher items are DeviceReports: decoded straight by their schema (see ``apply``).
REPORT_HEADER = CODEC.schema("DeviceReport").header
decode_report = CODEC.schema("DeviceReport").coder.binary_decode

# Device states and the partition's progress are written once per envelope, each
# table in one RocksDB batch, with their changelog through librdkafka (see
# table_writer: Faust's per-key write was the cap); in what order a round's effects,
# states, progress and input offset become durable is ``streams.checkpoint``'s.
_checkpoint: Checkpoint | None = None


def checkpoint() -> Checkpoint:
    global _checkpoint
    if _checkpoint is None:
        # exactly_once: one transactional producer for the whole round.
        transaction = transactions.round_transaction(settings)
        producer = transaction.producer if transaction is not None else None
        _checkpoint = Checkpoint(
            EffectSender(settings, producer),
            TableWriter(devices, settings, producer),
            TableWriter(partition_meta, settings, producer),
            transaction,
        )
    return _checkpoint


def device_writer() -> TableWriter:
    writer = checkpoint().states
    assert isinstance(writer, TableWriter)
    return writer


def effect_sender() -> EffectSender:
    sender = checkpoint().effects
    assert isinstance(sender, EffectSender)
    return sender


# The partition progress's map of source offsets carries, under this key, the offset
# of the last envelope of otaflow.device-events applied (no source partition is -1;
# an older reader takes it for one and never looks it up).
ENVELOPE_OFFSET_KEY = "-1"


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


_views: dict[int, DevicePartition] = {}


def _meta_prefix(partition: int) -> bytes:
    return f"{partition}/".encode()


def partition_view(partition: int) -> DevicePartition:
    view = _views.get(partition)
    if view is not None:
        return view
    registry = BatchRegistry()
    groups = GroupRegistry()
    offsets: dict[int, int] = {}
    watermark = 0
    envelope_offset = -1
    for key, raw in scan_partition(partition_meta, partition, _meta_prefix(partition)):
        name, record = CODEC.decode(raw)
        if name == "Batch":
            registry.put(Batch.from_record(record))
        elif name == "GroupControl":
            groups.put(Group.from_control(record))
        elif name == "PartitionProgress" and key == f"{partition}/progress".encode():
            offsets = {int(p): offset for p, offset in record["source_offsets"].items()}
            envelope_offset = offsets.pop(int(ENVELOPE_OFFSET_KEY), -1)
            watermark = record["watermark"]
    view = _views[partition] = DevicePartition(
        partition, registry, groups, offsets, watermark, envelope_offset
    )
    return view


@app.on_partitions_revoked.connect
async def _forget_views(*args: Any, **kwargs: Any) -> None:
    # Another worker may own these partitions next; state is re-read on demand.
    _views.clear()


@app.on_partitions_assigned.connect
async def _forget_views_on_assign(*args: Any, **kwargs: Any) -> None:
    _views.clear()


class EnvelopeRun:
    """One envelope's worth of work over the partition's devices (``EnvelopeStore``)."""

    def __init__(self, view: DevicePartition) -> None:
        self.view = view
        self.fx = Effects()
        self.dead: list[tuple[str, str, bytes]] = []
        self.meta_dirty = False
        # Batches and groups the partition was told about: written with its progress.
        self.meta_writes: list[tuple[bytes, bytes | None]] = []
        partition = view.partition
        self.store = EnvelopeStore(
            device_writer().reader(partition),
            lambda prefix: scan_partition(devices, partition, prefix),
        )
        self.engine = PartitionEngine(
            view.registry,
            view.groups,
            self.store,
            view.deadlines,
            partition=partition,
            open_tasks=view.open_tasks,
        )
        # (product key, module) -> whether a version report can only be recorded:
        # asked once per pair and envelope (only reports come between the asks).
        self._nothing_to_decide: dict[tuple[bytes, bytes], bool] = {}

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
            self.meta_writes.append(
                (f"{partition}/batch/{batch_id}".encode(), CODEC.encode("Batch", record["batch"]))
            )
        elif name == "GroupControl":
            self.meta_writes.append((f"{partition}/group/{record['group_id']}".encode(), item))

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

    def progress(self) -> list[tuple[bytes, bytes | None]]:
        """The partition meta this round changed: batches, groups, then the progress."""
        view = self.view
        writes = self.meta_writes
        if self.meta_dirty:
            offsets = {str(p): o for p, o in view.source_offsets.items()}
            offsets[ENVELOPE_OFFSET_KEY] = view.envelope_offset
            progress = {"source_offsets": offsets, "watermark": view.watermark}
            writes = [
                *writes,
                (
                    f"{view.partition}/progress".encode(),
                    CODEC.encode("PartitionProgress", progress),
                ),
            ]
        return writes

    async def finish(self) -> None:
        view = self.view
        view.deadlines = self.engine.deadlines
        # The order in which this becomes durable (effects, states, progress, stores,
        # then the input offset) and why is streams.checkpoint's.
        round_checkpoint = checkpoint()
        round_checkpoint.begin()
        sender = effect_sender()
        # The byte path's task events first: a device it handled and the engine then
        # loaded (a later record of the envelope) has its later events in fx.
        sender.send_task_events(self.store.task_events)
        sender.send(self.fx, view.watermark)
        for source, reason, raw in self.dead:
            sender.dead_letter(source, reason, raw, view.watermark)
        round_checkpoint.commit(Round(view.partition, self.store.writes(), self.progress()))


async def process_envelope(partition: int, value: bytes, envelope_offset: int = -1) -> None:
    view = partition_view(partition)
    if 0 <= envelope_offset <= view.envelope_offset:
        # A replay of an envelope whose round is durable (its progress is the last thing
        # of a round made durable, streams.checkpoint): nothing to apply or send again.
        return
    run = EnvelopeRun(view)
    if envelope_offset >= 0:
        view.envelope_offset = envelope_offset
        run.meta_dirty = True
    try:
        envelope = CODEC.decode_as("DeviceEventBatch", value)
    except DecodeError as exc:
        source = f"{streams_app.device_events.get_topic_name()}/{partition}"
        run.dead.append((source, str(exc), value))
        await run.finish()
        run.release()
        return
    sources = envelope["source_partitions"]
    offsets = envelope["source_offsets"]
    applied = view.source_offsets
    apply = run.apply
    reports = 0
    for i, item in enumerate(envelope["items"]):
        if sources and (source_partition := sources[i]) >= 0:
            # Reports the batcher re-sent after a restart are skipped, not applied twice.
            offset = offsets[i]
            if offset <= applied.get(source_partition, -1):
                continue
            applied[source_partition] = offset
            run.meta_dirty = True
            apply(item, source_partition, offset)
            reports += 1
        else:
            apply(item, -1, -1)
    await run.finish()
    run.release()
    observe.applied(1, reports)  # per envelope: a metric per report would cost as much


@app.agent(device_events)
async def device_agent(stream: Any) -> None:
    async for event in stream.events():
        await process_envelope(event.message.partition, event.value, event.message.offset)
