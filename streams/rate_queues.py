"""The rate agent's work, without Faust (``streams.rate_agent`` wires it).

Keyed by batch: every batch has its own meter and FIFO queue of tasks (chunks of
``TasksQueued``, one per record received, under ``{batch}/{seq:012d}``), so a batch at
10 per minute never delays one at 10,000. The metering itself (windows, pacing,
variable steps) is ``otaflow.domain.rate``; this module keeps the queue and the meter
records, the partition's event-time watermark, and releases what the meter allows.

The tables are given as mappings and the sends as coroutines: nothing here imports
Faust or aiokafka (``tests/unit/test_rate_queues.py`` checks it).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from otaflow.codec import DecodeError, codec
from otaflow.device_keys import device_key
from otaflow.domain.rate import (
    MAX_CATCH_UP_MS,
    MeterState,
    change_config,
    record_release,
    record_success,
    record_unsent,
    releasable,
)
from otaflow.domain.rate_settings import from_settings, to_settings
from otaflow.domain.rate_windows import meter_time

CODEC = codec()

# Windows of push counts kept per batch for statistics (one hour of minutes).
KEEP_WINDOWS = 60

Table = MutableMapping[bytes, bytes]
# One partition's entries of the meter table.
ScanMeters = Callable[[int], Iterable[tuple[bytes, bytes]]]
# The device-events partition of a device key.
PartitionOf = Callable[[str], int]
# DeviceEventBatch envelopes by device-events partition; returns once all are acknowledged.
SendReleases = Callable[[dict[int, bytes]], Awaitable[None]]
# (source, reason, raw record, event time)
DeadLetter = Callable[[str, str, bytes, int], Awaitable[None]]


class BatchMeter:
    """A batch's meter and queue pointers, as the ``BatchMeter`` record stores them."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record
        config = from_settings(record["rate"])
        pending = from_settings(record["pending_rate"])
        self.state: MeterState | None = None
        if config is not None:
            self.state = MeterState(
                config=config,
                window=record["window"] if record["window"] >= 0 else None,
                released_in_window=record["released_in_window"],
                pushed_total=record["pushed_total"],
                succeeded_total=record["succeeded_total"],
                pending_config=pending,
                credit_units=record["credit_units"],
                credit_at_ms=record["credit_at_ms"],
                starved=record["starved"],
            )

    @classmethod
    def new(cls, batch_id: str, partition: int) -> BatchMeter:
        return cls(
            {
                "batch_id": batch_id,
                "partition": partition,
                "rate": None,
                "pending_rate": None,
                "window": -1,
                "released_in_window": 0,
                "pushed_total": 0,
                "succeeded_total": 0,
                "queue_head": 0,
                "queue_head_index": 0,
                "queue_tail": 0,
                "queued": 0,
                "canceled": False,
                "windows": {},
                "credit_units": 0,
                "credit_at_ms": 0,
                "starved": False,
                "maintenance_windows": [],
                "paused": False,
            }
        )

    @property
    def batch_id(self) -> str:
        return str(self.record["batch_id"])

    def encode(self) -> bytes:
        """The record with the meter's state, encoded for the table."""
        if self.state is not None:
            self.record.update(
                window=self.state.window if self.state.window is not None else -1,
                released_in_window=self.state.released_in_window,
                pushed_total=self.state.pushed_total,
                succeeded_total=self.state.succeeded_total,
                rate=to_settings(self.state.config),
                pending_rate=to_settings(self.state.pending_config),
                credit_units=self.state.credit_units,
                credit_at_ms=self.state.credit_at_ms,
                starved=self.state.starved,
            )
        return CODEC.encode("BatchMeter", self.record)


def chunk_key(batch_id: str, seq: int) -> bytes:
    return f"{batch_id}/{seq:012d}".encode()


class RateQueues:
    """The batches of the partitions this worker owns: their meters, queues and time."""

    def __init__(
        self,
        meters: Table,
        queue: Table,
        scan_meters: ScanMeters,
        partition_of: PartitionOf,
        send_releases: SendReleases,
        dead_letter: DeadLetter,
    ) -> None:
        self.meters = meters
        self.queue = queue
        self.scan_meters = scan_meters
        self.partition_of = partition_of
        self.send_releases = send_releases
        self.dead_letter = dead_letter
        # Partition -> its batches with queued tasks (rebuilt from the table on demand).
        self._active: dict[int, set[str]] = {}
        # Partition -> its event time: the latest event time seen on it.
        self.watermarks: dict[int, int] = defaultdict(int)
        # Batch -> its head chunk, decoded: (seq, tasks).
        self._head_chunks: dict[str, tuple[int, list[dict[str, Any]]]] = {}

    def forget(self) -> None:
        """After a rebalance: another worker may have changed what is cached."""
        self._active.clear()
        self._head_chunks.clear()

    def active_batches(self, partition: int) -> set[str]:
        active = self._active.get(partition)
        if active is None:
            active = self._active[partition] = set()
            for key, raw in self.scan_meters(partition):
                record = CODEC.decode_as("BatchMeter", raw)
                if record["queued"] > 0 and not record["canceled"]:
                    active.add(key.decode())
        return active

    def load_meter(self, batch_id: str, partition: int) -> BatchMeter:
        raw = self.meters.get(batch_id.encode())
        if raw is None:
            return BatchMeter.new(batch_id, partition)
        return BatchMeter(CODEC.decode_as("BatchMeter", raw))

    def save(self, meter: BatchMeter) -> None:
        self.meters[meter.batch_id.encode()] = meter.encode()

    # -- the queue ----------------------------------------------------------------------

    def enqueue(self, meter: BatchMeter, queued: dict[str, Any]) -> None:
        """A ``TasksQueued`` record joins the batch's queue as one chunk."""
        rec = meter.record
        self.queue[chunk_key(meter.batch_id, rec["queue_tail"])] = CODEC.encode(
            "TasksQueued", queued
        )
        rec["queue_tail"] += 1
        rec["queued"] += len(queued["tasks"])

    def pop_tasks(
        self, meter: BatchMeter, n: int, consumed: list[bytes] | None = None
    ) -> list[dict[str, Any]]:
        """Take up to ``n`` tasks from the head of the batch's queue (FIFO).

        With ``consumed``, the keys of the chunks used up are put there for the caller to
        delete once the releases are acknowledged, instead of deleted here.
        """
        rec = meter.record
        taken: list[dict[str, Any]] = []
        while len(taken) < n and rec["queue_head"] < rec["queue_tail"]:
            seq = rec["queue_head"]
            cached = self._head_chunks.get(meter.batch_id)
            if cached is None or cached[0] != seq:
                raw = self.queue.get(chunk_key(meter.batch_id, seq))
                tasks = CODEC.decode_as("TasksQueued", raw)["tasks"] if raw else []
                cached = self._head_chunks[meter.batch_id] = (seq, tasks)
            tasks = cached[1]
            start = rec["queue_head_index"]
            end = min(len(tasks), start + n - len(taken))
            taken.extend(tasks[start:end])
            if end >= len(tasks):
                if consumed is None:
                    del self.queue[chunk_key(meter.batch_id, seq)]
                else:
                    consumed.append(chunk_key(meter.batch_id, seq))
                self._head_chunks.pop(meter.batch_id, None)
                rec["queue_head"] = seq + 1
                rec["queue_head_index"] = 0
            else:
                rec["queue_head_index"] = end
        rec["queued"] = max(0, rec["queued"] - len(taken))
        return taken

    async def release_due(self, meter: BatchMeter, now: int) -> None:
        """Release what the meter allows at ``now``; the caller saves the meter after."""
        rec = meter.record
        if meter.state is None or rec["canceled"] or rec["queued"] <= 0:
            return
        # The meter counts minutes from the batch's start, not from the wall clock's minute.
        batch_time = meter_time(rec.get("maintenance_windows") or [], rec["origin"], now)
        if batch_time is None or rec.get("paused"):
            return  # outside the maintenance windows, or paused: its tasks wait in the queue
        # A live meter keeps at most MAX_CATCH_UP_MS of unused credit: after a stall (this
        # worker killed, ticks that stopped) the backlog drains at the rate's pace, not in
        # one burst for the seconds missed (issue 16).
        n = min(rec["queued"], releasable(meter.state, batch_time, catch_up_ms=MAX_CATCH_UP_MS))
        if n <= 0:
            return
        consumed: list[bytes] = []
        tasks = self.pop_tasks(meter, n, consumed)
        meter.state = record_release(
            meter.state,
            batch_time,
            len(tasks),
            queue_empty=rec["queued"] <= 0,
            catch_up_ms=MAX_CATCH_UP_MS,
        )
        window = str(batch_time // 60_000)
        windows = rec["windows"]
        windows[window] = windows.get(window, 0) + len(tasks)
        if len(windows) > KEEP_WINDOWS:
            for old in sorted(windows, key=int)[: len(windows) - KEEP_WINDOWS]:
                del windows[old]
        by_partition: dict[int, list[bytes]] = defaultdict(list)
        for task in tasks:
            key = device_key(task["product_key"], task["device_name"])
            release = {
                "batch_id": meter.batch_id,
                "task_id": task["task_id"],
                "product_key": task["product_key"],
                "device_name": task["device_name"],
                "event_time": now,
            }
            by_partition[self.partition_of(key)].append(CODEC.encode("TaskRelease", release))
        # The releases are acknowledged before the queue and the meter that record them
        # are written (the caller saves the meter after this): the table's changelog and
        # these sends share no transaction, and a worker killed with the queue's advance
        # delivered but not the releases left their tasks QUEUED for good (the replay
        # found them popped). A crash after the releases replays them; the device agent
        # counts the duplicates unsent.
        await self.send_releases(
            {
                partition: CODEC.encode("DeviceEventBatch", {"items": items})
                for partition, items in by_partition.items()
            }
        )
        for chunk in consumed:
            del self.queue[chunk]

    # -- records ------------------------------------------------------------------------

    async def process(self, partition: int, value: bytes) -> None:
        """One ``RateEvent`` from ``partition`` of the rate-events topic."""
        try:
            body_name, body = CODEC.decode_as("RateEvent", value)["body"]
        except DecodeError as exc:
            await self.dead_letter(
                f"rate-events/{partition}", str(exc), value, self.watermarks[partition]
            )
            return
        now = self.watermarks[partition] = max(self.watermarks[partition], body["event_time"])
        active = self.active_batches(partition)
        if body_name == "otaflow.Tick":
            for batch_id in sorted(active):
                meter = self.load_meter(batch_id, partition)
                await self.release_due(meter, now)
                if meter.record["queued"] <= 0:
                    active.discard(batch_id)
                self.save(meter)
            return
        batch_id = (
            body["batch_id"] if body_name != "otaflow.BatchControl" else body["batch"]["batch_id"]
        )
        meter = self.load_meter(batch_id, partition)
        rec = meter.record
        if body_name == "otaflow.TasksQueued":
            self.enqueue(meter, body)
        elif body_name == "otaflow.TaskOutcomes" and meter.state is not None:
            apply_outcomes(meter, body, now)
        elif body_name == "otaflow.BatchControl":
            self.apply_control(meter, body)
        await self.release_due(meter, now)
        if rec["queued"] > 0 and not rec["canceled"]:
            active.add(batch_id)
        else:
            active.discard(batch_id)
        self.save(meter)

    def apply_control(self, meter: BatchMeter, control: dict[str, Any]) -> None:
        rec = meter.record
        batch = control["batch"]
        action = control["action"]
        new_config = from_settings(batch["rate"])
        rec["maintenance_windows"] = list(batch.get("maintenance_windows") or [])
        # A rule paused the whole batch: keep its queue (a resume releases it, in order)
        # instead of releasing tasks the device agents would hold anyway.
        rec["paused"] = "*" in (batch.get("paused_cohorts") or ())
        if action == "START" and meter.state is None and new_config is not None:
            meter.state = MeterState.start(new_config)
            rec["origin"] = control["event_time"]
        elif action == "UPDATE" and meter.state is not None and new_config is not None:
            # The rate type is fixed at creation (the API refuses a change); a new
            # setting of the same type takes effect from the next window.
            meter.state = change_config(meter.state, new_config)
        elif action == "CANCEL_TASKS" and "QUEUED" in control["cancel_statuses"]:
            # The device side cancels the queued tasks; drop them here so they do not use
            # up push slots. Tasks queued later (a running dynamic batch) are pushed as usual.
            for seq in range(rec["queue_head"], rec["queue_tail"]):
                self.queue.pop(chunk_key(meter.batch_id, seq), None)
            self._head_chunks.pop(meter.batch_id, None)
            rec["queue_head"] = rec["queue_tail"]
            rec["queue_head_index"] = 0
            rec["queued"] = 0


def apply_outcomes(meter: BatchMeter, outcomes: dict[str, Any], now: int) -> None:
    """Successes move a rate counted on them; releases that sent nothing are taken back.

    Both at the rate agent's event time: the rate in force changes from that instant.
    """
    assert meter.state is not None
    rec = meter.record
    batch_time = max(0, now - rec["origin"])
    if outcomes["succeeded"]:
        meter.state = record_success(meter.state, outcomes["succeeded"], batch_time)
    unsent = outcomes.get("unsent", 0)
    if unsent:
        released_at = max(0, outcomes.get("released_at", 0) - rec["origin"])
        meter.state = record_unsent(meter.state, unsent, batch_time, released_at)
        window = str(released_at // 60_000)
        windows = rec["windows"]
        if window in windows:  # the statistics count offers sent, too
            windows[window] = max(0, windows[window] - unsent)
