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
from streams import observe
from streams.app import app, device_events, devices, partition_meta, settings
from streams.device_envelopes import CODEC, DevicePartition, EnvelopeRun, meta_prefix
from streams.effects import EffectSender
from streams.envelope_store import EnvelopeStore
from streams.table_scan import scan_table_partition
from streams.table_writer import TableWriter

# Device states are written once per envelope in one RocksDB batch, with their
# changelog through librdkafka (see table_writer: Faust's per-key write was the cap).
_device_writer: TableWriter | None = None
_effect_sender: EffectSender | None = None


def device_writer() -> TableWriter:
    global _device_writer
    if _device_writer is None:
        _device_writer = TableWriter(devices, settings)
    return _device_writer


def effect_sender() -> EffectSender:
    global _effect_sender
    if _effect_sender is None:
        _effect_sender = EffectSender(settings)
    return _effect_sender


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


def _write_meta(key: bytes, value: bytes) -> None:
    partition_meta[key] = value


def envelope_run(view: DevicePartition) -> EnvelopeRun:
    partition = view.partition
    store = EnvelopeStore(
        device_writer().reader(partition),
        lambda prefix: scan_table_partition(devices, partition, prefix),
    )
    return EnvelopeRun(view, store, _write_meta)


async def finish(run: EnvelopeRun) -> None:
    view = run.view
    view.deadlines = run.engine.deadlines
    # Effects first, acknowledged, then the states that record them: a crash in
    # between replays the envelope, and the engine (deterministic task ids) sends
    # the same events again. The other order would lose them: the replay would
    # find the tasks already in the states and send nothing.
    sender = effect_sender()
    # The byte path's task events first: a device it handled and the engine then
    # loaded (a later record of the envelope) has its later events in fx.
    sender.send_task_events(run.store.task_events)
    sender.send(run.fx, view.watermark)
    for source, reason, raw in run.dead:
        sender.dead_letter(source, reason, raw, view.watermark)
    sender.flush()
    writes = run.store.writes()
    if writes:
        writer = device_writer()
        writer.write(view.partition, writes)
        # Acknowledged before this envelope is, so no committed offset outruns state.
        writer.flush()
    if run.meta_dirty:
        key, value = view.progress()
        partition_meta[key] = value


async def process_envelope(partition: int, value: bytes) -> None:
    view = partition_view(partition)
    try:
        envelope = CODEC.decode_as("DeviceEventBatch", value)
    except DecodeError as exc:
        sender = effect_sender()
        source = f"{streams_app.device_events.get_topic_name()}/{partition}"
        sender.dead_letter(source, str(exc), value, view.watermark)
        sender.flush()
        return
    run = envelope_run(view)
    reports = run.apply_envelope(envelope)
    await finish(run)
    run.release()
    observe.applied(1, reports)  # per envelope: a metric per report would cost as much


@app.agent(device_events)
async def device_agent(stream: Any) -> None:
    async for event in stream.events():
        await process_envelope(event.message.partition, event.value)
