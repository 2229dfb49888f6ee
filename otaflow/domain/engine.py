"""The device engine: what one device-scoped event does to one device.

Pure Python over ``DeviceState`` and a ``BatchRegistry``; no Kafka. The device agent
feeds it batches of events for one partition and writes down the ``Effects`` it
collects: task events, tasks to queue for a push slot, notifications, and outcome
counts for the rate agent.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from otaflow.domain.batches import Batch, BatchKind, BatchRegistry
from otaflow.domain.devices import MINUTE_MS, DeviceState
from otaflow.domain.matching import admit, dynamic_candidates
from otaflow.domain.tasks import FAILURE_STEPS, Task, TaskStatus
from otaflow.partitioning import device_key

# Finished tasks kept in a device's state (older ones live on the task-events topic).
KEEP_FINISHED_TASKS = 8

Record = dict[str, Any]


def make_task_id(batch_id: str, key: str, match_number: int) -> str:
    """Deterministic, so replaying a batch of events after a crash makes the same ids."""
    digest = hashlib.blake2b(f"{batch_id}|{key}|{match_number}".encode(), digest_size=10)
    return digest.hexdigest()


@dataclass
class Effects:
    """What processing some events asks the outside world to do, in order."""

    task_events: list[tuple[str, Record]] = field(default_factory=list)
    queued: dict[str, list[Record]] = field(default_factory=lambda: defaultdict(list))
    notifications: list[tuple[str, Record]] = field(default_factory=list)
    succeeded: Counter[str] = field(default_factory=Counter)

    def task_changed(self, state: DeviceState, task: Task, now: int) -> None:
        self.task_events.append(
            (
                state.key,
                {
                    "task_id": task.task_id,
                    "batch_id": task.batch_id,
                    "product_key": state.product_key,
                    "device_name": state.device_name,
                    "module": task.module,
                    "src_version": task.src_version,
                    "dest_version": task.dest_version,
                    "status": task.status.value,
                    "previous_status": task.previous_status.value if task.previous_status else None,
                    "progress": task.progress,
                    "desc": task.desc,
                    "event_time": now,
                },
            )
        )

    def queue_push(self, state: DeviceState, task: Task) -> None:
        task.in_push_queue = True
        self.queued[task.batch_id].append(
            {
                "task_id": task.task_id,
                "product_key": state.product_key,
                "device_name": state.device_name,
            }
        )

    def notify(
        self,
        state: DeviceState,
        now: int,
        *,
        kind: str,
        task: Task | None = None,
        batch: Batch | None = None,
        reply_to: str | None = None,
    ) -> None:
        self.notifications.append(
            (
                state.key,
                {
                    "product_key": state.product_key,
                    "device_name": state.device_name,
                    "kind": kind,
                    "reply_to": reply_to,
                    "task_id": task.task_id if task else None,
                    "batch_id": task.batch_id if task else None,
                    "firmware": batch.firmware.to_record() if batch else None,
                    "ext_data": dict(batch.tags) if batch else {},
                    "event_time": now,
                },
            )
        )


class DeviceEngine:
    def __init__(self, batches: BatchRegistry) -> None:
        self.batches = batches

    # -- device reports -------------------------------------------------------------

    def on_report(self, state: DeviceState | None, report: Record, fx: Effects) -> DeviceState:
        if state is None:
            state = DeviceState(report["product_key"], report["device_name"])
        now = report["event_time"]
        kind = report["kind"]
        was_online = state.online
        state.last_seen = max(state.last_seen, now)
        if kind == "OFFLINE":
            state.online = False
            return state
        state.online = True
        module = report["module"] or "default"
        if kind == "VERSION":
            self._on_version(state, module, report["version"], now, fx)
        elif kind == "PROGRESS":
            self._on_progress(state, module, report["step"], report["desc"] or "", now, fx)
        elif kind == "FIRMWARE_GET":
            self._on_firmware_get(state, module, report["message_id"], now, fx)
        if not was_online:
            self._queue_waiting_pushes(state, fx)
        return state

    def _on_version(
        self, state: DeviceState, module: str, version: str | None, now: int, fx: Effects
    ) -> None:
        if version is None:
            return
        state.modules[module] = version
        # Success is decided by the version the device reports after updating.
        for task in list(state.active_tasks(module)):
            if task.status is not TaskStatus.CONFIRM and version == task.dest_version:
                task.progress = 100
                task.move(TaskStatus.SUCCEEDED, now, desc="")
                task.in_push_queue = False
                fx.task_changed(state, task, now)
                fx.succeeded[task.batch_id] += 1
        candidates = dynamic_candidates(
            self.batches.dynamic_for(state.product_key, module), state, module, version, now
        )
        for batch in candidates:
            if self._create_task(state, batch, now, fx, counted=True):
                break
        state.prune(KEEP_FINISHED_TASKS)

    def _on_progress(
        self, state: DeviceState, module: str, step: int | None, desc: str, now: int, fx: Effects
    ) -> None:
        task = state.current_task(
            module, frozenset({TaskStatus.NOTIFIED, TaskStatus.IN_PROGRESS, TaskStatus.QUEUED})
        )
        if task is None or step is None:
            return
        if task.first_progress_at is None:
            # The timeout counts from the first progress report, never reset by re-pushes.
            task.first_progress_at = now
        if step < 0:
            reason = FAILURE_STEPS.get(step, "update failed")
            task.move(TaskStatus.FAILED, now, desc=f"{reason}: {desc}" if desc else reason)
            task.in_push_queue = False
            self._schedule_retry(task, now)
            fx.task_changed(state, task, now)
            return
        step = min(step, 100)
        if task.status is TaskStatus.IN_PROGRESS and step == task.progress:
            return
        task.progress = step
        if task.status is TaskStatus.IN_PROGRESS:
            task.updated_at = now
            task.previous_status = TaskStatus.IN_PROGRESS
        else:
            task.move(TaskStatus.IN_PROGRESS, now, desc=desc or None)
            task.in_push_queue = False
        fx.task_changed(state, task, now)

    def _on_firmware_get(
        self, state: DeviceState, module: str, message_id: str | None, now: int, fx: Effects
    ) -> None:
        task = state.current_task(
            module, frozenset({TaskStatus.QUEUED, TaskStatus.NOTIFIED, TaskStatus.IN_PROGRESS})
        )
        batch = self.batches.get(task.batch_id) if task else None
        if task is None or batch is None:
            fx.notify(state, now, kind="PULL_REPLY", reply_to=message_id)
            return
        if task.status is TaskStatus.QUEUED:
            # A pull is answered at once; only proactive pushes are metered.
            task.move(TaskStatus.NOTIFIED, now)
            fx.task_changed(state, task, now)
        fx.notify(state, now, kind="PULL_REPLY", task=task, batch=batch, reply_to=message_id)

    # -- the rate agent's permission to push -----------------------------------------

    def on_release(self, state: DeviceState | None, release: Record, fx: Effects) -> None:
        if state is None:
            return
        task = state.task(release["task_id"])
        if task is None or task.status is not TaskStatus.QUEUED:
            return  # canceled, pulled or already pushed meanwhile: nothing to send
        task.in_push_queue = False
        if not state.online:
            return  # stays QUEUED; queued again when the device comes back
        batch = self.batches.get(task.batch_id)
        if batch is None:
            return
        now = release["event_time"]
        task.move(TaskStatus.NOTIFIED, now)
        fx.task_changed(state, task, now)
        fx.notify(state, now, kind="PUSH", task=task, batch=batch)

    # -- batches starting: the partition scans its devices -----------------------------

    def on_batch_start(self, state: DeviceState, batch: Batch, now: int, fx: Effects) -> None:
        """Match one existing device against a batch that just started."""
        if batch.product_key != state.product_key:
            return
        version = state.modules.get(batch.module)
        if batch.kind is BatchKind.DYNAMIC:
            if batch.dynamic_mode == 2 or version is None:
                return
            best = dynamic_candidates(
                self.batches.dynamic_for(state.product_key, batch.module),
                state,
                batch.module,
                version,
                now,
            )
            if best and best[0].batch_id == batch.batch_id:
                self._create_task(state, batch, now, fx, counted=True)
            return
        if state.active_task_for(batch.batch_id) is None and batch.accepts_version(version):
            self._create_task(state, batch, now, fx, counted=False)

    def on_cancel(
        self,
        state: DeviceState,
        batch_id: str,
        statuses: frozenset[TaskStatus],
        now: int,
        fx: Effects,
    ) -> None:
        """CancelOTATaskByJob: cancel this batch's tasks that are in one of ``statuses``."""
        for task in state.tasks:
            if task.batch_id == batch_id and task.status in statuses and not task.is_final:
                task.move(TaskStatus.CANCELED, now, desc="canceled by operator")
                task.in_push_queue = False
                task.retry_at = None
                fx.task_changed(state, task, now)

    # -- timers on event time -----------------------------------------------------------

    def on_tick(self, state: DeviceState, now: int, fx: Effects) -> None:
        for task in state.tasks:
            if (
                task.status in (TaskStatus.NOTIFIED, TaskStatus.IN_PROGRESS)
                and task.timeout_minutes is not None
                and task.first_progress_at is not None
                and now >= task.first_progress_at + task.timeout_minutes * MINUTE_MS
            ):
                # A timeout is final: it is never retried.
                task.move(TaskStatus.FAILED, now, desc="timeout")
                task.retry_at = None
                fx.task_changed(state, task, now)
            elif (
                task.status is TaskStatus.FAILED
                and task.retry_at is not None
                and now >= task.retry_at
            ):
                task.retries_left -= 1
                task.retry_at = None
                task.progress = 0
                task.first_progress_at = None
                task.move(TaskStatus.QUEUED, now, desc="retry")
                fx.task_changed(state, task, now)
                self._push_if_possible(state, task, fx)

    # -- helpers -------------------------------------------------------------------------

    def _create_task(
        self, state: DeviceState, batch: Batch, now: int, fx: Effects, *, counted: bool
    ) -> bool:
        admission = admit(state, batch)
        if not admission.admitted:
            return False
        for old in admission.cancels:
            old.move(TaskStatus.CANCELED, now, desc=f"overridden by batch {batch.batch_id}")
            old.in_push_queue = False
            fx.task_changed(state, old, now)
        matches = state.match_counts.get(batch.batch_id, 0) + 1
        if counted:
            state.match_counts[batch.batch_id] = matches
        task = Task(
            task_id=make_task_id(batch.batch_id, state.key, matches),
            batch_id=batch.batch_id,
            module=batch.module,
            dest_version=batch.dest_version,
            src_version=state.modules.get(batch.module),
            status=TaskStatus.CONFIRM if batch.need_confirm else TaskStatus.QUEUED,
            created_at=now,
            updated_at=now,
            timeout_minutes=batch.timeout_minutes,
            retries_left=batch.retry_count if batch.retry_interval_minutes is not None else 0,
        )
        state.tasks.append(task)
        fx.task_changed(state, task, now)
        self._push_if_possible(state, task, fx)
        return True

    def _push_if_possible(self, state: DeviceState, task: Task, fx: Effects) -> None:
        batch = self.batches.get(task.batch_id)
        if (
            batch is not None
            and batch.need_push
            and task.status is TaskStatus.QUEUED
            and state.online
            and not task.in_push_queue
        ):
            fx.queue_push(state, task)

    def _queue_waiting_pushes(self, state: DeviceState, fx: Effects) -> None:
        for task in state.tasks:
            self._push_if_possible(state, task, fx)

    def _schedule_retry(self, task: Task, now: int) -> None:
        batch = self.batches.get(task.batch_id)
        if batch is None or batch.retry_interval_minutes is None or task.retries_left <= 0:
            return
        task.retry_at = now + batch.retry_interval_minutes * MINUTE_MS


def new_device(product_key: str, device_name: str) -> DeviceState:
    return DeviceState(product_key, device_name)


__all__ = ["DeviceEngine", "Effects", "device_key", "make_task_id", "new_device"]
