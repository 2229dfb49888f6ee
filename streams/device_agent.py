"""Device agent: report in -> match -> task -> (queue for a push slot | notify).

Consumes ``otaflow.device-events``: envelopes that each carry many device-scoped
records for one partition (reports from the batcher, releases from the rate agent,
batch controls from the command agent, ticks). Per envelope it decodes once, runs
the pure ``DeviceEngine`` over every item, then writes each changed device once and
sends the effects. The agent is thin: every decision lives in ``otaflow.domain``.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from otaflow.codec import DecodeError, codec
from otaflow.domain.batches import Batch, BatchKind, BatchRegistry, BatchStatus
from otaflow.domain.devices import DeviceState
from otaflow.domain.engine import DeviceEngine, Effects
from otaflow.domain.tasks import TaskStatus
from otaflow.partitioning import device_key
from streams import app as streams_app
from streams.app import app, device_events, devices, partition_meta
from streams.effects import send_dead_letter, send_effects
from streams.partition_scan import scan_partition

CODEC = codec()


@dataclass
class DevicePartition:
    """What the agent keeps in memory for one partition it owns; rebuilt after a rebalance."""

    partition: int
    registry: BatchRegistry
    source_offsets: dict[str, int]
    watermark: int
    # Heap of (deadline, device key) with lazy invalidation against ``deadline_of``.
    deadlines: list[tuple[int, str]] | None = None
    deadline_of: dict[str, int] = field(default_factory=dict)

    def note_deadline(self, key: str, deadline: int | None) -> None:
        if self.deadlines is None:
            return
        if deadline is None:
            self.deadline_of.pop(key, None)
        elif self.deadline_of.get(key) != deadline:
            self.deadline_of[key] = deadline
            heapq.heappush(self.deadlines, (deadline, key))


_views: dict[int, DevicePartition] = {}


def _meta_prefix(partition: int) -> bytes:
    return f"{partition}/".encode()


def partition_view(partition: int) -> DevicePartition:
    view = _views.get(partition)
    if view is not None:
        return view
    registry = BatchRegistry()
    offsets: dict[str, int] = {}
    watermark = 0
    for key, raw in scan_partition(partition_meta, partition, _meta_prefix(partition)):
        name, record = CODEC.decode(raw)
        if name == "Batch":
            registry.put(Batch.from_record(record))
        elif name == "PartitionProgress" and key == f"{partition}/progress".encode():
            offsets = dict(record["source_offsets"])
            watermark = record["watermark"]
    view = _views[partition] = DevicePartition(partition, registry, offsets, watermark)
    return view


@app.on_partitions_revoked.connect
async def _forget_views(*args: Any, **kwargs: Any) -> None:
    # Another worker may own these partitions next; state is re-read on demand.
    _views.clear()


@app.on_partitions_assigned.connect
async def _forget_views_on_assign(*args: Any, **kwargs: Any) -> None:
    _views.clear()


class EnvelopeRun:
    """One envelope's worth of work: device states read once, written once."""

    def __init__(self, view: DevicePartition) -> None:
        self.view = view
        self.engine = DeviceEngine(view.registry)
        self.fx = Effects()
        self.states: dict[str, DeviceState | None] = {}
        self.dirty: set[str] = set()
        self.dead: list[tuple[str, str, bytes]] = []
        self.meta_dirty = False

    def load(self, key: str) -> DeviceState | None:
        if key in self.states:
            return self.states[key]
        raw = devices.get(key.encode())
        state = DeviceState.from_record(CODEC.decode_as("DeviceState", raw)) if raw else None
        self.states[key] = state
        return state

    def changed(self, state: DeviceState) -> None:
        self.states[state.key] = state
        self.dirty.add(state.key)

    def apply(self, item: bytes, source: str) -> None:
        try:
            name, record = CODEC.decode(item)
        except DecodeError as exc:
            self.dead.append((source, str(exc), item))
            return
        now = record.get("event_time")
        if isinstance(now, int) and now > self.view.watermark:
            self.view.watermark = now
            self.meta_dirty = True
        if name == "DeviceReport":
            key = device_key(record["product_key"], record["device_name"])
            self.changed(self.engine.on_report(self.load(key), record, self.fx))
        elif name == "TaskRelease":
            key = device_key(record["product_key"], record["device_name"])
            state = self.load(key)
            if state is not None:
                before = len(self.fx.task_events)
                self.engine.on_release(state, record, self.fx)
                if len(self.fx.task_events) != before or not state.online:
                    self.changed(state)
        elif name == "BatchControl":
            self.apply_control(record)
        elif name == "Tick":
            self.fire_timers(record["event_time"])
        else:
            self.dead.append((source, f"unexpected record type {name}", item))

    def apply_control(self, control: dict[str, Any]) -> None:
        batch = Batch.from_record(control["batch"])
        now = control["event_time"]
        self.view.registry.put(batch)
        partition_meta[f"{self.view.partition}/batch/{batch.batch_id}".encode()] = CODEC.encode(
            "Batch", batch.to_record()
        )
        action = control["action"]
        if action == "START" and batch.status is BatchStatus.IN_PROGRESS:
            if batch.kind is BatchKind.DYNAMIC and batch.dynamic_mode == 2:
                return
            self.for_each_device(
                batch.product_key, lambda s: self.engine.on_batch_start(s, batch, now, self.fx)
            )
        elif action == "CANCEL_TASKS":
            statuses = frozenset(TaskStatus(s) for s in control["cancel_statuses"])
            self.for_each_device(
                batch.product_key,
                lambda s: self.engine.on_cancel(s, batch.batch_id, statuses, now, self.fx),
            )

    def for_each_device(self, product_key: str, step: Callable[[DeviceState], None]) -> None:
        prefix = f"{product_key}/".encode()
        for key_bytes, raw in scan_partition(devices, self.view.partition, prefix):
            key = key_bytes.decode()
            state: DeviceState | None = self.states.get(key)
            if state is None:
                state = DeviceState.from_record(CODEC.decode_as("DeviceState", raw))
                self.states[key] = state
            before = len(self.fx.task_events)
            step(state)
            if len(self.fx.task_events) != before:
                self.changed(state)

    def fire_timers(self, now: int) -> None:
        view = self.view
        if view.deadlines is None:
            view.deadlines = []
            for key_bytes, raw in scan_partition(devices, view.partition):
                scanned = DeviceState.from_record(CODEC.decode_as("DeviceState", raw))
                deadline = scanned.next_deadline()
                if deadline is not None:
                    view.deadline_of[scanned.key] = deadline
                    view.deadlines.append((deadline, key_bytes.decode()))
            heapq.heapify(view.deadlines)
        while view.deadlines and view.deadlines[0][0] <= now:
            deadline, key = heapq.heappop(view.deadlines)
            if view.deadline_of.get(key) != deadline:
                continue  # stale entry: the device's timers moved since
            del view.deadline_of[key]
            state = self.load(key)
            if state is None:
                continue
            self.engine.on_tick(state, now, self.fx)
            self.changed(state)

    async def finish(self) -> None:
        view = self.view
        for key in self.dirty:
            state = self.states[key]
            if state is None:
                continue
            devices[key.encode()] = CODEC.encode("DeviceState", state.to_record())
            view.note_deadline(key, state.next_deadline())
        if self.meta_dirty:
            partition_meta[f"{view.partition}/progress".encode()] = CODEC.encode(
                "PartitionProgress",
                {"source_offsets": view.source_offsets, "watermark": view.watermark},
            )
        await send_effects(self.fx)
        for source, reason, raw in self.dead:
            await send_dead_letter(source, reason, raw, view.watermark)


async def process_envelope(partition: int, value: bytes) -> None:
    view = partition_view(partition)
    run = EnvelopeRun(view)
    try:
        envelope = CODEC.decode_as("DeviceEventBatch", value)
    except DecodeError as exc:
        await send_dead_letter(
            f"{streams_app.device_events.get_topic_name()}/{partition}",
            str(exc),
            value,
            view.watermark,
        )
        return
    sources = envelope["source_partitions"]
    offsets = envelope["source_offsets"]
    for i, item in enumerate(envelope["items"]):
        source_partition = sources[i] if sources else -1
        if source_partition >= 0:
            # Reports the batcher re-sent after a restart are skipped, not applied twice.
            sp = str(source_partition)
            offset = offsets[i]
            if offset <= view.source_offsets.get(sp, -1):
                continue
            view.source_offsets[sp] = offset
            run.meta_dirty = True
            source = f"reports/{source_partition}/{offset}"
        else:
            source = f"device-events/{partition}"
        run.apply(item, source)
    await run.finish()


@app.agent(device_events)
async def device_agent(stream: Any) -> None:
    async for event in stream.events():
        await process_envelope(event.message.partition, event.value)
