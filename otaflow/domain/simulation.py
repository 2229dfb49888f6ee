"""A device partition in memory: the real ``PartitionEngine`` without Kafka.

For tests, benchmarks and what-if tools. Records go in one at a time (each its own
envelope); effects are collected in order; the push queue is a FIFO that
``release`` empties like a rate agent with no limit.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Sequence
from typing import Any

from otaflow.device_keys import device_key
from otaflow.domain.batches import (
    Batch,
    BatchKind,
    BatchRegistry,
    BatchScope,
    BatchStatus,
    FirmwareOffer,
)
from otaflow.domain.deadlines import DeadlineHeap
from otaflow.domain.devices import DeviceState
from otaflow.domain.engine import KEEP_FINISHED_TASKS, Effects
from otaflow.domain.groups import GroupRegistry
from otaflow.domain.open_tasks import OpenTaskWatch
from otaflow.domain.partition_engine import MemoryDeviceStore, PartitionEngine

Record = dict[str, Any]
PK = "pk"
MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR


# -- the records the engine applies, as the agents send them ------------------------------
# (one builder each, shared by ``Partition`` and the real-Kafka test driver)


def report_record(pk: str, dn: str, kind: str, at: int, **fields: Any) -> Record:
    record: Record = {
        "product_key": pk,
        "device_name": dn,
        "kind": kind,
        "module": "default",
        "version": None,
        "step": None,
        "desc": None,
        "message_id": None,
        "event_time": at,
    }
    record.update(fields)
    return record


def control_record(action: str, batch: Batch, at: int, statuses: Iterable[str] = ()) -> Record:
    return {
        "action": action,
        "batch": batch.to_record(),
        "cancel_statuses": list(statuses),
        "event_time": at,
    }


def target_record(batch_id: str, pk: str, dn: str, at: int) -> Record:
    return {"batch_id": batch_id, "product_key": pk, "device_name": dn, "event_time": at}


def registration_record(
    pk: str,
    dn: str,
    at: int,
    *,
    province: str | None = None,
    city: str | None = None,
    groups: Sequence[str] = (),
    action: str = "REGISTER",
) -> Record:
    return {
        "product_key": pk,
        "device_name": dn,
        "action": action,
        "province": province,
        "city": city,
        "groups": list(groups),
        "event_time": at,
    }


def group_record(
    group_id: str,
    at: int,
    *,
    expression: str | None = None,
    parent_id: str | None = None,
    deleted: bool = False,
) -> Record:
    return {
        "group_id": group_id,
        "group_type": "DYNAMIC" if expression is not None else "STATIC",
        "name": group_id,
        "parent_id": parent_id,
        "expression": expression,
        "deleted": deleted,
        "event_time": at,
    }


def command_record(
    action: str,
    pk: str,
    dn: str,
    at: int,
    *,
    task_ids: Sequence[str] = (),
    batch_id: str | None = None,
    firmware_id: str | None = None,
) -> Record:
    return {
        "action": action,
        "product_key": pk,
        "device_name": dn,
        "task_ids": list(task_ids),
        "batch_id": batch_id,
        "firmware_id": firmware_id,
        "event_time": at,
    }


def firmware(
    version: str = "2.0",
    *,
    firmware_id: str | None = None,
    module: str = "default",
    src_version: str | None = None,
) -> FirmwareOffer:
    """A package; giving ``src_version`` makes it differential."""
    return FirmwareOffer(
        firmware_id=firmware_id or f"fw-{module}-{version}",
        version=version,
        size=1000,
        sign="0" * 64,
        file_path=f"{module}-{version}.bin",
        module=module,
        src_version=src_version,
        is_diff=src_version is not None,
    )


def make_batch(
    batch_id: str,
    *,
    at: int = 0,
    product_key: str = PK,
    fw: FirmwareOffer | None = None,
    kind: BatchKind = BatchKind.STATIC,
    scope: BatchScope = BatchScope.ALL,
    **fields: Any,
) -> Batch:
    status = BatchStatus.PLANNED if fields.get("schedule_start") else BatchStatus.IN_PROGRESS
    fields.setdefault("status", status)
    return Batch(
        batch_id=batch_id,
        product_key=product_key,
        firmware=fw or firmware(),
        kind=kind,
        scope=scope,
        created_at=at,
        updated_at=at,
        **fields,
    )


def dynamic_batch(batch_id: str, src_versions: Sequence[str] = (), **fields: Any) -> Batch:
    return make_batch(batch_id, kind=BatchKind.DYNAMIC, src_versions=tuple(src_versions), **fields)


def group_batch(batch_id: str, group_id: str, **fields: Any) -> Batch:
    return make_batch(
        batch_id,
        kind=BatchKind.DYNAMIC,
        scope=BatchScope.GROUP,
        group_id=group_id,
        group_type="DYNAMIC",
        **fields,
    )


class Partition:
    """One device partition with its batches, groups and devices, all in memory."""

    def __init__(self, keep_finished: int = KEEP_FINISHED_TASKS) -> None:
        self.batches = BatchRegistry()
        self.groups = GroupRegistry()
        self.store = MemoryDeviceStore()
        self.deadlines: DeadlineHeap | None = None
        self.keep_finished = keep_finished
        self.events: list[Record] = []
        self.notifications: list[Record] = []
        self.push_queue: deque[tuple[str, Record]] = deque()
        self.succeeded: Counter[str] = Counter()
        self.unsent: Counter[tuple[str, int]] = Counter()
        # Abort rules' counts not yet taken by a control plane (``take_outcomes``).
        self.outcomes: dict[str, Counter[str]] = {}
        self.last_effects: Effects = Effects()
        self.open_tasks = OpenTaskWatch()
        # (schema, record) the partition sent the control plane (PhasedCount, OpenTaskCount).
        self.control_reports: list[tuple[str, Record]] = []

    def apply(self, name: str, record: Record) -> Effects:
        engine = PartitionEngine(
            self.batches,
            self.groups,
            self.store,
            self.deadlines,
            self.keep_finished,
            open_tasks=self.open_tasks,
        )
        effects = Effects()
        engine.apply(name, record, effects)
        self.deadlines = engine.deadlines
        self.store.commit()
        self.events.extend(e for _, e in effects.task_events)
        self.notifications.extend(n for _, n in effects.notifications)
        for batch_id, tasks in effects.queued.items():
            self.push_queue.extend((batch_id, t) for t in tasks)
        self.succeeded.update(effects.succeeded)
        self.unsent.update(effects.unsent)
        for batch_id, counts in effects.outcomes.items():
            self.outcomes.setdefault(batch_id, Counter()).update(counts)
        self.control_reports.extend(effects.control_reports)
        self.last_effects = effects
        return effects

    # -- device reports --------------------------------------------------------------------

    def report(self, dn: str, kind: str, at: int, pk: str = PK, **fields: Any) -> Effects:
        return self.apply("DeviceReport", report_record(pk, dn, kind, at, **fields))

    def version(
        self, dn: str, version: str, at: int, module: str = "default", **kw: Any
    ) -> Effects:
        return self.report(dn, "VERSION", at, module=module, version=version, **kw)

    def progress(
        self,
        dn: str,
        step: int,
        at: int,
        module: str = "default",
        desc: str | None = None,
        **kw: Any,
    ) -> Effects:
        return self.report(dn, "PROGRESS", at, module=module, step=step, desc=desc, **kw)

    def ask(self, dn: str, at: int, module: str = "default", **kw: Any) -> Effects:
        return self.report(dn, "FIRMWARE_GET", at, module=module, message_id="42", **kw)

    def online(self, dn: str, at: int, **kw: Any) -> Effects:
        return self.report(dn, "ONLINE", at, **kw)

    def offline(self, dn: str, at: int, **kw: Any) -> Effects:
        return self.report(dn, "OFFLINE", at, **kw)

    # -- control ---------------------------------------------------------------------------

    def control(self, action: str, batch: Batch, at: int, statuses: Iterable[str] = ()) -> Effects:
        return self.apply("BatchControl", control_record(action, batch, at, statuses))

    def start(self, batch: Batch, at: int | None = None) -> Effects:
        return self.control("START", batch, batch.created_at if at is None else at)

    def target(self, batch_id: str, dn: str, at: int, pk: str = PK) -> Effects:
        return self.apply("BatchTarget", target_record(batch_id, pk, dn, at))

    def register(self, dn: str, at: int, *, pk: str = PK, **fields: Any) -> Effects:
        """``fields``: ``registration_record``'s (province, city, groups, action)."""
        return self.apply("DeviceRegistration", registration_record(pk, dn, at, **fields))

    def group(self, group_id: str, at: int, **fields: Any) -> Effects:
        """``fields``: ``group_record``'s (expression, parent_id, deleted)."""
        return self.apply("GroupControl", group_record(group_id, at, **fields))

    def command(self, action: str, dn: str, at: int, *, pk: str = PK, **fields: Any) -> Effects:
        """``fields``: ``command_record``'s (task_ids, batch_id, firmware_id)."""
        return self.apply("TaskCommand", command_record(action, pk, dn, at, **fields))

    def tick(self, at: int) -> Effects:
        return self.apply("Tick", {"event_time": at})

    def release(self, at: int, limit: int | None = None) -> int:
        """Release queued pushes in FIFO order (all, or ``limit``); returns how many."""
        n = 0
        while self.push_queue and (limit is None or n < limit):
            batch_id, task = self.push_queue.popleft()
            record = {"batch_id": batch_id, "event_time": at, **task}
            self.apply("TaskRelease", record)
            n += 1
        return n

    def take_outcomes(self) -> dict[str, Counter[str]]:
        """The abort rules' outcome counts since the last call (as the agent sends them)."""
        taken, self.outcomes = self.outcomes, {}
        return taken

    # -- reading ---------------------------------------------------------------------------

    def state(self, dn: str, pk: str = PK) -> DeviceState:
        state = self.store.load(device_key(pk, dn))
        self.store.commit()
        assert state is not None, f"no device {pk}/{dn}"
        return state

    def has_device(self, dn: str, pk: str = PK) -> bool:
        return device_key(pk, dn) in self.store.table

    def tasks(self, dn: str, pk: str = PK) -> list[tuple[str, str]]:
        """(batch id, status) of the device's tasks, oldest first."""
        return [(t.batch_id, t.status.value) for t in self.state(dn, pk).tasks]

    def history(self, dn: str | None = None, batch_id: str | None = None) -> list[str]:
        """The statuses of the task events, in order, filtered by device and batch."""
        return [
            e["status"]
            for e in self.events
            if (dn is None or e["device_name"] == dn)
            and (batch_id is None or e["batch_id"] == batch_id)
        ]

    def pushes(self, dn: str | None = None) -> list[Record]:
        return [
            n
            for n in self.notifications
            if n["kind"] == "PUSH" and (dn is None or n["device_name"] == dn)
        ]
