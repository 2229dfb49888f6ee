"""One device partition's work: records in, device changes and effects out. Pure.

The device agent hands every record of an envelope to ``PartitionEngine.apply``.
Device-scoped records (reports, releases, targets, registrations, task commands)
touch one device. Partition-wide records reach many:

- ``BatchControl`` START of a static ALL/REGIONAL/GROUP batch, or of a dynamic batch
  (unless DynamicMode 2): the partition matches *its own* devices of the product,
  so a start is spread over every partition and no worker scans the whole fleet;
  UPDATE that adds source versions to a version-based dynamic batch matches the
  devices on the added versions; CANCEL_TASKS cancels the batch's tasks.
- ``GroupControl``: a dynamic group's expression changed, so devices of the products
  whose live group-based batches use it may have joined (and get matched) or left.
- ``Tick``: the devices whose next deadline (timeout, retry, schedule start or end)
  has come are advanced to the tick's time.
- ``OpenTaskProbe``: the partition has seen all of a static batch's tasks; it counts
  the open ones and reports to the control plane, and again (throttled) whenever one
  of them becomes final (``otaflow.domain.open_tasks``): how a batch completes.

Scans read only the product's key prefix, and a ``DeviceStore`` decodes only the
devices whose encoded state contains the scan's needles (see ``scopes``): a batch
start or cancel costs a decode per *candidate* device, not per device.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any, Protocol

from otaflow.device_keys import device_key
from otaflow.domain import phased
from otaflow.domain.abort_rules import count_outcomes
from otaflow.domain.batches import Batch, BatchKind, BatchRegistry, BatchScope, BatchStatus
from otaflow.domain.deadlines import DeadlineHeap
from otaflow.domain.devices import DeviceState
from otaflow.domain.engine import KEEP_FINISHED_TASKS, DeviceEngine, Effects
from otaflow.domain.groups import Group, GroupRegistry
from otaflow.domain.open_tasks import OpenTaskWatch, count_tasks, is_open, report_id
from otaflow.domain.schedule import takes_new_tasks
from otaflow.domain.scopes import Needles, passes, scan_needles, scans_at_start, version_needles
from otaflow.domain.start_by_kind import PlainStart, applies_to
from otaflow.domain.tasks import TaskStatus

Record = dict[str, Any]

# Records that change a task only with a task event (or by settling it), so a batch's
# task counts stay known after them when they sent none (``OpenTaskWatch.counted``).
KEEPS_TASK_COUNTS = frozenset({"TaskRelease", "Tick", "OpenTaskProbe"})  # and DeviceReport


class DeviceStore(Protocol):
    """The partition's devices, as one envelope sees them (reads cached, writes deferred)."""

    def load(self, key: str) -> DeviceState | None: ...

    def put(self, state: DeviceState) -> None:
        """Keep this (new or changed) state; it is written when the envelope ends."""

    def delete(self, key: str) -> None: ...

    def scan(
        self, prefix: str, needles: Needles, start: PlainStart | None = None
    ) -> Iterator[DeviceState]:
        """Devices whose key starts with ``prefix`` and whose encoded state has the needles.

        States already loaded or put in this envelope are yielded as those objects.
        With ``start``, a store may apply that START's outcome to plain devices itself
        (``otaflow.domain.start_by_kind``) and yield only the others; ignoring it is correct.
        """


class PartitionEngine:
    def __init__(
        self,
        batches: BatchRegistry,
        groups: GroupRegistry,
        store: DeviceStore,
        deadlines: DeadlineHeap | None,
        keep_finished: int = KEEP_FINISHED_TASKS,
        partition: int = 0,
        open_tasks: OpenTaskWatch | None = None,
    ) -> None:
        # Which device partition this is (a phased START's count says where it is from).
        self.partition = partition
        self.batches = batches
        self.groups = groups
        self.store = store
        # Built on the first tick from a scan of the partition (see ``tick``).
        self.deadlines = deadlines
        # Static batches to count again (kept by the caller between envelopes).
        self.open_tasks = open_tasks if open_tasks is not None else OpenTaskWatch()
        self.engine = DeviceEngine(batches, groups, keep_finished)
        # Built once: apply() runs once per device report.
        self._handlers = {
            "DeviceReport": self.report,
            "TaskRelease": self.release,
            "BatchControl": self.batch_control,
            "BatchTarget": self.target,
            "DeviceRegistration": self.registration,
            "GroupControl": self.group_control,
            "TaskCommand": self.task_command,
            "Tick": self.tick,
            "PhasedQuota": self.phased_quota,
            "OpenTaskProbe": self.open_task_probe,
        }

    def apply(self, name: str, record: Record, fx: Effects) -> None:
        """Apply one record (by schema name); unknown names raise ``KeyError``."""
        if name == "DeviceReport":
            # Counts its own outcomes and forgets counts (the agent calls it directly).
            self.report(record, fx)
        else:
            counted = list(self.open_tasks.counted)
            seen = len(fx.task_events)
            self._handlers[name](record, fx)
            if len(fx.task_events) > seen:
                self._count_outcomes(fx, seen)
            if counted and (
                len(fx.task_events) > seen or fx.settling or name not in KEEPS_TASK_COUNTS
            ):
                # A task may have changed (each change sends a task event; a dropped
                # retry settles), or the record may add or remove tasks in other ways
                # (a START's own count is made after this snapshot): count by scan.
                for batch_id in counted:
                    self.open_tasks.counted.pop(batch_id, None)
        now = record.get("event_time")
        if isinstance(now, int):
            self.count_settling(now, fx)

    def _count_outcomes(self, fx: Effects, seen: int) -> None:
        """Finished outcomes of batches with abort rules, per cohort, for the control plane."""
        events = [
            (key, event)
            for key, event in fx.task_events[seen:]
            if event["status"] in ("SUCCEEDED", "FAILED", "CANCELED")
            and (batch := self.batches.get(event["batch_id"])) is not None
            and batch.abort_rules
        ]
        if events:
            for batch_id, counts in count_outcomes(events, self.store.load).items():
                fx.outcomes.setdefault(batch_id, Counter()).update(counts)

    def count_settling(self, now: int, fx: Effects) -> None:
        """After a record at ``now``: static batches a task of which became final are
        dirty; the dirty ones not counted for a while are counted now (``open_tasks``)."""
        if fx.settling:
            for batch_id in fx.settling:
                batch = self.batches.get(batch_id)
                if batch is not None and not batch.is_dynamic:
                    self.open_tasks.dirty.add(batch_id)
            fx.settling.clear()
        if self.open_tasks.dirty:
            for batch_id in self.open_tasks.due(now):
                self._report_open(batch_id, now, fx, probe=False)

    # -- one device ---------------------------------------------------------------------

    def _settle(self, state: DeviceState, now: int, fx: Effects) -> None:
        if state.key in fx.touched:
            self.store.put(state)
            if self.deadlines is not None:
                self.deadlines.note(state.key, self.engine.next_deadline(state, now))

    def report(self, record: Record, fx: Effects) -> None:
        key = device_key(record["product_key"], record["device_name"])
        seen = len(fx.task_events)
        state = self.engine.on_report(self.store.load(key), record, fx)
        self._settle(state, record["event_time"], fx)
        if len(fx.task_events) > seen:
            self._count_outcomes(fx, seen)
            self.open_tasks.counted.clear()  # a task changed: count by scan (apply)
        elif fx.settling:
            self.open_tasks.counted.clear()

    def release(self, record: Record, fx: Effects) -> None:
        state = self.store.load(device_key(record["product_key"], record["device_name"]))
        self.engine.on_release(state, record, fx)  # a missing device: an unsent release
        if state is not None:
            self._settle(state, record["event_time"], fx)

    def target(self, record: Record, fx: Effects) -> None:
        batch = self.batches.get(record["batch_id"])
        state = self.store.load(device_key(record["product_key"], record["device_name"]))
        if batch is None or state is None:
            return
        self.engine.on_target(state, batch, record["event_time"], fx)
        self._settle(state, record["event_time"], fx)

    def registration(self, record: Record, fx: Effects) -> None:
        key = device_key(record["product_key"], record["device_name"])
        before = self.store.load(key)
        after = self.engine.on_registration(before, record, fx)
        if after is None:
            if before is not None:
                self.store.delete(key)
                if self.deadlines is not None:
                    self.deadlines.note(key, None)
            return
        self._settle(after, record["event_time"], fx)

    def task_command(self, record: Record, fx: Effects) -> None:
        state = self.store.load(device_key(record["product_key"], record["device_name"]))
        if state is not None:
            self.engine.on_task_command(state, record, fx)
            self._settle(state, record["event_time"], fx)

    # -- many devices --------------------------------------------------------------------

    def _each(self, product_key: str, needles: Needles) -> Iterator[DeviceState]:
        yield from self.store.scan(f"{product_key}/", needles)

    def batch_control(self, record: Record, fx: Effects) -> None:
        batch = Batch.from_record(record["batch"])
        now = record["event_time"]
        old = self.batches.put(batch)
        action = record["action"]
        if action == "START":
            self._start(batch, now, fx)
        elif action == "UPDATE":
            self._update(old, batch, now, fx)
            if old is not None and set(old.paused_cohorts) - set(batch.paused_cohorts):
                self._resume(batch, now, fx)
        elif action == "CANCEL_TASKS":
            statuses = frozenset(TaskStatus(s) for s in record["cancel_statuses"])
            for state in self._each(batch.product_key, [frozenset({batch.batch_id.encode()})]):
                self.engine.on_cancel_tasks(state, batch.batch_id, statuses, now, fx)
                self._settle(state, now, fx)
        # CANCEL_STRATEGY: the registry now says the batch stopped matching; its tasks stay.

    def _start(self, batch: Batch, now: int, fx: Effects) -> None:
        if batch.scope is BatchScope.PHASED and not batch.is_dynamic:
            if takes_new_tasks(batch, now):
                count = sum(1 for _ in self._updatable(batch))
                report = {
                    "batch_id": batch.batch_id,
                    "partition": self.partition,
                    "eligible": count,
                    "event_time": now,
                }
                fx.control_reports.append(("PhasedCount", report))
            return
        if batch.kind is BatchKind.STATIC:
            if not scans_at_start(batch) or not takes_new_tasks(batch, now):
                return
            # Over the whole fleet, plain devices are decided once per kind (start_by_kind).
            start = (
                PlainStart(self.engine, batch, now, fx, self.deadlines)
                if applies_to(batch)
                else None
            )
            needles = scan_needles(batch, self.groups)
            open_, every = 0, 0
            for state in self.store.scan(f"{batch.product_key}/", needles, start):
                self.engine.on_static_start(state, batch, now, fx)
                self._settle(state, now, fx)
                for task in state.tasks:
                    if task.batch_id == batch.batch_id:
                        every += 1
                        open_ += is_open(task)
            if start is not None:
                every += start.tasks_started
                open_ += start.open_started
            # Every task of the batch here is on a device the scan saw: the devices that
            # miss its needles cannot have one (the START gives the batch its tasks; a
            # replayed START finds the devices as it left them).
            self.open_tasks.counted[batch.batch_id] = (open_, every)
            return
        if batch.dynamic_mode == 2 or not takes_new_tasks(batch, now):
            return  # only versions reported from now on
        versions = version_needles(batch)
        self._match_existing(batch, [versions] if versions is not None else [], now, fx)

    def _resume(self, batch: Batch, now: int, fx: Effects) -> None:
        """A paused cohort resumed: its devices' held tasks are queued for a push again."""
        for state in self._each(batch.product_key, [frozenset({batch.batch_id.encode()})]):
            self.engine.advance(state, now, fx)
            self._settle(state, now, fx)

    def _updatable(self, batch: Batch) -> Iterator[DeviceState]:
        """The partition's devices a phased batch could update (see ``domain.phased``)."""
        versions = version_needles(batch)
        needles = [versions] if versions is not None else []
        for state in self._each(batch.product_key, needles):
            if batch.accepts_version(state.modules.get(batch.module)):
                yield state

    def open_task_probe(self, record: Record, fx: Effects) -> None:
        """The plane sent everything that gives this partition the batch's tasks: count."""
        batch = self.batches.get(record["batch_id"])
        if batch is not None and not batch.is_dynamic:
            self._report_open(batch.batch_id, record["event_time"], fx, probe=True)

    def _report_open(self, batch_id: str, now: int, fx: Effects, *, probe: bool) -> None:
        batch = self.batches.get(batch_id)
        if batch is None:
            self.open_tasks.dirty.discard(batch_id)
            return
        known = self.open_tasks.counted.get(batch_id)
        if known is not None:
            open_, every = known
        else:
            states = self._each(batch.product_key, [frozenset({batch_id.encode()})])
            open_, every = count_tasks(states, batch_id)
        report = {
            "batch_id": batch_id,
            "partition": self.partition,
            "open": open_,
            "tasks": every,
            "probe": int(probe),
            "event_time": now,
            "report_id": report_id(batch_id, self.partition, now, probe),
        }
        fx.control_reports.append(("OpenTaskCount", report))
        self.open_tasks.reported(batch_id, now, every)

    def phased_quota(self, record: Record, fx: Effects) -> None:
        """The control plane's share of a phased batch for this partition: that many of
        its updatable devices, smallest rank first, get a task."""
        batch = self.batches.get(record["batch_id"])
        now = record["event_time"]
        if batch is None or record["quota"] <= 0 or not takes_new_tasks(batch, now):
            return
        states = {s.device_name: s for s in self._updatable(batch)}
        for name in phased.pick(batch.batch_id, states, record["quota"]):
            state = states[name]
            self.engine.on_target(state, batch, now, fx)
            self._settle(state, now, fx)

    def _update(self, old: Batch | None, batch: Batch, now: int, fx: Effects) -> None:
        """New source versions of a running version-based dynamic batch match at once."""
        if (
            old is None
            or not batch.is_dynamic
            or batch.is_group_based
            or batch.dynamic_mode == 2
            or not takes_new_tasks(batch, now)
        ):
            return
        added = frozenset(batch.src_versions) - frozenset(old.src_versions)
        if added:
            needles = [frozenset(v.encode() for v in added)]
            self._match_existing(batch, needles, now, fx, versions=added)

    def _match_existing(
        self,
        batch: Batch,
        needles: Needles,
        now: int,
        fx: Effects,
        versions: frozenset[str] | None = None,
    ) -> None:
        for state in self._each(batch.product_key, needles):
            self.engine.on_dynamic_start(state, batch, now, fx, versions=versions)
            self._settle(state, now, fx)

    def group_control(self, record: Record, fx: Effects) -> None:
        group = Group.from_control(record)
        old = self.groups.put(group)
        if group.group_type != "DYNAMIC":
            return  # static trees only matter when a static batch starts
        if old is not None and (old.expression, old.deleted) == (group.expression, group.deleted):
            return
        now = record["event_time"]
        products = sorted(
            {
                b.product_key
                for b in self.batches
                if b.is_dynamic and b.group_id == group.group_id and takes_new_tasks(b, now)
            }
        )
        for product_key in products:
            for state in self._each(product_key, []):
                self.engine.on_groups_changed(state, now, fx)
                self._settle(state, now, fx)

    def tick(self, record: Record, fx: Effects) -> None:
        now = record["event_time"]
        if not self.open_tasks.rebuilt:
            # A count lost with the process that owned the partition is sent again.
            self.open_tasks.rebuilt = True
            for batch in self.batches:
                if not batch.is_dynamic and batch.status in (
                    BatchStatus.PLANNED,
                    BatchStatus.IN_PROGRESS,
                ):
                    self.open_tasks.dirty.add(batch.batch_id)
        if self.deadlines is None:
            self.deadlines = DeadlineHeap()
            for scanned in self.store.scan("", []):
                # No lower bound: timers that fell due while nobody watched fire now.
                self.deadlines.note(scanned.key, self.engine.next_deadline(scanned, None))
        for key in self.deadlines.pop_due(now):
            state = self.store.load(key)
            if state is None:
                continue
            self.engine.advance(state, now, fx)
            self._settle(state, now, fx)
            if state.key not in fx.touched:
                self.deadlines.note(key, self.engine.next_deadline(state, now))


class MemoryDeviceStore:
    """A ``DeviceStore`` over a dict of encoded states, as the agent keeps them in RocksDB.

    For tests and tools: states are stored encoded (the real codec), so scans with
    needles behave exactly as they do over the table. ``commit()`` writes what an
    envelope changed, like the agent's end of envelope.
    """

    def __init__(self) -> None:
        from otaflow.device_avro import decode_device_state, encode_device_state

        self.encode = encode_device_state
        self.decode = decode_device_state
        self.table: dict[str, bytes] = {}
        self._cache: dict[str, DeviceState | None] = {}
        self._dirty: set[str] = set()
        self.decoded = 0

    def _decode(self, raw: bytes) -> DeviceState:
        self.decoded += 1
        return self.decode(raw)

    def load(self, key: str) -> DeviceState | None:
        if key not in self._cache:
            raw = self.table.get(key)
            self._cache[key] = self._decode(raw) if raw is not None else None
        return self._cache[key]

    def put(self, state: DeviceState) -> None:
        self._cache[state.key] = state
        self._dirty.add(state.key)

    def delete(self, key: str) -> None:
        self._cache[key] = None
        self._dirty.add(key)

    def scan(
        self, prefix: str, needles: Needles, start: PlainStart | None = None
    ) -> Iterator[DeviceState]:
        seen = set()
        for key in sorted(self.table):
            if not key.startswith(prefix):
                continue
            seen.add(key)
            if key in self._cache:
                cached = self._cache[key]
                if cached is not None:
                    yield cached
            elif passes(self.table[key], needles):
                yield self._decode(self.table[key])
        for key, extra in list(self._cache.items()):
            if extra is not None and key not in seen and key.startswith(prefix):
                yield extra

    def commit(self) -> None:
        for key in self._dirty:
            state = self._cache[key]
            if state is None:
                self.table.pop(key, None)
            else:
                self.table[key] = self.encode(state)
        self._dirty.clear()
        self._cache.clear()

    def states(self) -> dict[str, DeviceState]:
        return {key: self._decode(raw) for key, raw in self.table.items()}
