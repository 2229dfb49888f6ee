"""Device agent: records in -> ``PartitionEngine`` -> device states and effects out.

Consumes ``otaflow.device-events``: envelopes that each carry many device-scoped
records for one partition (reports from the batcher, releases from the rate agent,
batch and group controls, registrations, targets and task commands from the command
agent, ticks). Per envelope it decodes once, runs the pure ``PartitionEngine`` over
every item, then writes each changed device once and sends the effects. The agent
is thin: every decision lives in ``otaflow.domain``. A plain device's version report,
when the domain says it decides nothing on it, is applied to the stored bytes without
the engine (``otaflow.plain_reports``, through ``streams.envelope_store``). This
module only wires Faust to that work: the envelope's logic (offset de-duplication,
dispatch, the byte-path gate and its cache, the watermark) is
``streams.device_envelopes``, which imports no Faust and has unit tests.

Per partition it keeps in memory (rebuilt after a rebalance from the
``device-partition-meta`` table): the batches and groups it was told about, how far
it applied each source partition of ``ota.device.reports``, its event-time
watermark, and a heap of device deadlines (built on the first tick).
"""

from __future__ import annotations

from typing import Any

from otaflow.codec import DecodeError
from streams import app as streams_app
from streams import observe, transactions
from streams.app import app, device_events, devices, partition_meta, settings
from streams.checkpoint import Checkpoint, Round
from streams.device_envelopes import CODEC, DevicePartition, EnvelopeRun, meta_prefix
from streams.effects import EffectSender
from streams.envelope_store import EnvelopeStore
from streams.table_scan import scan_table_partition
from streams.table_writer import TableWriter

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


_views: dict[int, DevicePartition] = {}


def partition_view(partition: int) -> DevicePartition:
    view = _views.get(partition)
    if view is None:
        meta = scan_table_partition(partition_meta, partition, meta_prefix(partition))
        view = _views[partition] = DevicePartition.rebuild(partition, meta)
    return view


@app.on_partitions_revoked.connect
async def _forget_views(*args: Any, **kwargs: Any) -> None:
    # Another worker may own these partitions next; state is re-read on demand.
    _views.clear()


@app.on_partitions_assigned.connect
async def _forget_views_on_assign(*args: Any, **kwargs: Any) -> None:
    _views.clear()


class DeviceRound:
    """One envelope's run and the partition metadata it changed (batches and groups it
    was told about), written with its progress in the round's checkpoint."""

    def __init__(self, view: DevicePartition) -> None:
        partition = view.partition
        self.meta_writes: list[tuple[bytes, bytes | None]] = []
        store = EnvelopeStore(
            device_writer().reader(partition),
            lambda prefix: scan_table_partition(devices, partition, prefix),
        )
        self.run = EnvelopeRun(view, store, lambda k, v: self.meta_writes.append((k, v)))

    def progress(self) -> list[tuple[bytes, bytes | None]]:
        """The partition meta this round changed: batches, groups, then the progress."""
        if not self.run.meta_dirty:
            return self.meta_writes
        return [*self.meta_writes, self.run.view.progress()]

    async def finish(self) -> None:
        run = self.run
        view = run.view
        view.deadlines = run.engine.deadlines
        # The order in which this becomes durable (effects, states, progress, stores,
        # then the input offset) and why is streams.checkpoint's.
        round_checkpoint = checkpoint()
        round_checkpoint.begin()
        sender = effect_sender()
        # The byte path's task events first: a device it handled and the engine then
        # loaded (a later record of the envelope) has its later events in fx.
        sender.send_task_events(run.store.task_events, view.partition)
        sender.send_queued(run.store.queued, view.watermark)
        sender.send(run.fx, view.watermark, view.partition)
        for source, reason, raw in run.dead:
            sender.dead_letter(source, reason, raw, view.watermark)
        round_checkpoint.commit(Round(view.partition, run.store.writes(), self.progress()))


async def process_envelope(partition: int, value: bytes, envelope_offset: int = -1) -> None:
    view = partition_view(partition)
    if view.already_applied(envelope_offset):
        # A replay of an envelope whose round is durable: nothing to apply or send again.
        return
    device_round = DeviceRound(view)
    run = device_round.run
    try:
        envelope = CODEC.decode_as("DeviceEventBatch", value)
    except DecodeError as exc:
        source = f"{streams_app.device_events.get_topic_name()}/{partition}"
        run.start(envelope_offset)
        run.dead.append((source, str(exc), value))
        await device_round.finish()
        run.release()
        return
    reports = run.apply_envelope(envelope, envelope_offset)
    await device_round.finish()
    run.release()
    observe.applied(1, reports)  # per envelope: a metric per report would cost as much


@app.agent(device_events)
async def device_agent(stream: Any) -> None:
    async for event in stream.events():
        await process_envelope(event.message.partition, event.value, event.message.offset)
