"""The device engine: what one device-scoped record does to one device.

Pure Python over ``DeviceState``, a ``BatchRegistry`` and a ``GroupRegistry``; no
Kafka. ``otaflow.domain.partition_engine`` feeds it the records of one partition (and the
devices a batch start or a tick concerns); the device agent writes down the
``Effects`` it collects: task events, tasks to queue for a push slot,
notifications, and success counts for the rate agent.

Time is data. Every entry point first *advances* the device to the record's event
time (``advance``): tasks of a schedule that ended and have not started are
canceled, timeouts and retries that fell due fire, and queued tasks that may now
be pushed are queued for a push slot. Ticks advance the devices whose next
deadline (``next_deadline``) has come.

Task lifecycle (statuses in ``otaflow.domain.tasks``):
- a new task is CONFIRM when its batch needs app confirmation, else QUEUED;
- QUEUED tasks of a batch that pushes are queued for a push slot while the device is
  online and the batch's schedule has started; the rate agent's release makes them
  NOTIFIED (a PUSH notification). A device that asks (firmware/get) gets its pending
  task at once, unmetered (QUEUED -> NOTIFIED);
- an offer can be lost (the device SDK connects with a clean session, a broker can
  restart), so a pushed task is offered again, through the rate agent like a first
  push (a re-offer waits for a push slot: ``in_push_queue`` on a NOTIFIED task), when
  the device connects (an ONLINE record, ``otaflow.edge.presence``), when it speaks
  after it was offline, and when it reports a version of the module while the task
  is NOTIFIED (it evidently runs without the update). Its status stays NOTIFIED;
- what ends a NOTIFIED task: progress (IN_PROGRESS, or FAILED for a step -1..-4),
  the destination version (SUCCEEDED), the end of its batch's schedule, a cancel
  (CancelOTATaskByJob with CancelNotifiedTask, CancelOTATaskByDevice), a newer batch
  that overrides it, the device's deletion. No timer does: the console starts the
  timeout at the first progress, so a device that never comes back keeps its task
  NOTIFIED until one of these (docs/edge.md);
- an OFFLINE record older than the last thing heard from the device is stale (two
  ingress instances may reorder them) and ignored; a device offline gets no push;
- progress 1..100 makes it IN_PROGRESS; the first progress report starts the
  timeout, which neither re-pushes nor retries reset; a step -1..-4 fails it with the
  platform's reason in ``desc``; a failure is retried after the batch's interval, up
  to its count, unless the retry would come at or after the timeout's expiry (then it
  stays FAILED with its reason); a timeout fails it for good (desc ``timeout``), a
  retried task waiting in the queue included;
- the device reporting the destination version makes it SUCCEEDED.
"""

from __future__ import annotations

import hashlib
from binascii import hexlify
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from otaflow.device_keys import device_key
from otaflow.domain.batches import Batch, BatchRegistry
from otaflow.domain.devices import MINUTE_MS, DeviceState, is_plain, task_timer, timeout_deadline
from otaflow.domain.groups import GroupRegistry
from otaflow.domain.holds import next_open, push_hold
from otaflow.domain.matching import admit, dynamic_candidates
from otaflow.domain.schedule import (
    NOT_STARTED,
    SCHEDULE_ENDED,
    has_ended,
    has_started,
    next_schedule_time,
    takes_new_tasks,
)
from otaflow.domain.scopes import in_static_scope
from otaflow.domain.tasks import ACTIVE, FAILURE_STEPS, FINAL, Task, TaskStatus

# Finished tasks kept in a device's state (older ones live on the task-events topic).
KEEP_FINISHED_TASKS = 8

TIMEOUT_DESC = "timeout"
CANCELED_BY_OPERATOR = "canceled by operator"
DEVICE_DELETED = "device deleted"

Record = dict[str, Any]

_PROGRESS_FROM = frozenset({TaskStatus.QUEUED, TaskStatus.NOTIFIED, TaskStatus.IN_PROGRESS})
_PULLABLE = _PROGRESS_FROM
_REPUSHED = frozenset({TaskStatus.NOTIFIED, TaskStatus.IN_PROGRESS})
_REOFFERED_ON_VERSION = frozenset({TaskStatus.NOTIFIED})
# A release pushes a QUEUED task (-> NOTIFIED) or offers a pushed one again.
_RELEASABLE = frozenset({TaskStatus.QUEUED}) | _REPUSHED
_CANCELABLE_BY_DEVICE = frozenset({TaskStatus.QUEUED, TaskStatus.NOTIFIED, TaskStatus.IN_PROGRESS})
_REUPGRADABLE = frozenset({TaskStatus.FAILED, TaskStatus.CANCELED})


def make_task_id(batch_id: str, key: str, match_number: int) -> str:
    """Deterministic, so replaying a batch of events after a crash makes the same ids."""
    digest = hashlib.blake2b(f"{batch_id}|{key}|{match_number}".encode(), digest_size=10)
    return digest.hexdigest()


class BatchTaskIds:
    """``make_task_id`` for one batch's many devices (a fleet-wide START): the batch's
    part of the hash is computed once and copied, 0.4 us a device instead of 1.0."""

    def __init__(self, batch_id: str) -> None:
        self._batch = hashlib.blake2b(f"{batch_id}|".encode(), digest_size=10)

    def ascii(self, key: bytes, match_number: int) -> bytes:
        """The id as ASCII bytes, from the key's UTF-8 (for writers of encoded records,
        which hold both in bytes)."""
        digest = self._batch.copy()
        digest.update(key)
        digest.update(b"|%d" % match_number)
        return hexlify(digest.digest())


@dataclass
class Effects:
    """What processing some records asks the outside world to do, in order.

    ``touched``: keys of the devices whose state changed (to be written once).
    ``unsent``: releases that sent no offer, by (batch id, the release's event time), for
    the rate agent: "pushed" counts devices actually sent an offer.
    """

    task_events: list[tuple[str, Record]] = field(default_factory=list)
    queued: dict[str, list[Record]] = field(default_factory=lambda: defaultdict(list))
    notifications: list[tuple[str, Record]] = field(default_factory=list)
    succeeded: Counter[str] = field(default_factory=Counter)
    touched: set[str] = field(default_factory=set)
    # (schema, record) for the control plane, through the command topic (PhasedCount).
    control_reports: list[tuple[str, Record]] = field(default_factory=list)
    unsent: Counter[tuple[str, int]] = field(default_factory=Counter)
    # Per batch with abort rules: finished outcomes per cohort, "cohort|OUTCOME" -> n
    # (``domain.abort_rules``), summed by the control plane.
    outcomes: dict[str, Counter[str]] = field(default_factory=dict)
    # Batches a task of which may have stopped being open (``otaflow.domain.open_tasks``).
    settling: set[str] = field(default_factory=set)

    def touch(self, state: DeviceState) -> None:
        self.touched.add(state.key)

    def task_changed(self, state: DeviceState, task: Task, now: int) -> None:
        self.touched.add(state.key)
        if task.status in FINAL:
            self.settling.add(task.batch_id)
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
                    # The task's own (a batch's timeout change applies to new tasks only).
                    "timeout_minutes": task.timeout_minutes or 0,
                },
            )
        )

    def queue_push(self, state: DeviceState, task: Task) -> None:
        self.touched.add(state.key)
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
    def __init__(
        self,
        batches: BatchRegistry,
        groups: GroupRegistry | None = None,
        keep_finished: int = KEEP_FINISHED_TASKS,
    ) -> None:
        self.batches = batches
        self.groups = groups if groups is not None else GroupRegistry()
        self.keep_finished = keep_finished

    # -- time ------------------------------------------------------------------------------

    def advance(self, state: DeviceState, now: int, fx: Effects) -> None:
        """Bring the device to event time ``now``: schedule ends, timers, waiting pushes."""
        if not state.tasks:
            return  # most reports: a device with nothing to update has no timers
        due: list[tuple[int, int, Task]] = []
        for i, task in enumerate(state.tasks):
            batch = self.batches.get(task.batch_id)
            if batch is not None and task.status in NOT_STARTED and has_ended(batch, now):
                self._move(state, task, TaskStatus.CANCELED, now, fx, SCHEDULE_ENDED)
                continue
            at = task_timer(task)
            if at is not None and at <= now:
                due.append((at, i, task))
        for _, _, task in sorted(due, key=lambda d: (d[0], d[1])):
            if task.status is TaskStatus.FAILED:
                self._retry(state, task, now, fx)
            else:
                # A timeout is final: it is never retried.
                task.retry_at = None
                self._move(state, task, TaskStatus.FAILED, now, fx, TIMEOUT_DESC)
        for task in state.tasks:
            self._push_if_possible(state, task, now, fx)

    def next_deadline(self, state: DeviceState, after: int | None) -> int | None:
        """The earliest event time after ``after`` (None: ever) at which ``advance`` acts."""
        if not state.tasks:
            return None  # most devices: no task, no timer
        floor = after if after is not None else -(2**63)
        deadline: int | None = None
        for task in state.tasks:
            times = [task_timer(task)]
            batch = self.batches.get(task.batch_id)
            if batch is not None and task.status in ACTIVE:
                times.append(next_schedule_time(batch, task.status, floor))
                if task.status is TaskStatus.QUEUED and batch.maintenance_windows:
                    # Held by a closed window: wake when the next one opens.
                    opens = next_open(batch, max(floor + 1, task.updated_at))
                    times.append(opens if opens is not None and opens > floor + 1 else None)
            for at in times:
                if at is not None and at > floor and (deadline is None or at < deadline):
                    deadline = at
        return deadline

    def _retry(self, state: DeviceState, task: Task, now: int, fx: Effects) -> None:
        task.retry_at = None
        batch = self.batches.get(task.batch_id)
        deadline = timeout_deadline(task)
        if (
            batch is None
            or has_ended(batch, now)
            or (deadline is not None and now >= deadline)  # no retry once timed out
            or state.active_task_for(task.batch_id) is not None
            or not admit(state, batch, may_cancel=False).admitted
        ):
            fx.touch(state)  # the retry is dropped: something else holds the device
            fx.settling.add(task.batch_id)
            return
        task.retries_left -= 1
        task.progress = 0
        # first_progress_at stays: a retry runs inside the first attempt's timeout.
        self._move(state, task, TaskStatus.QUEUED, now, fx, "retry")

    # -- device reports ----------------------------------------------------------------

    def on_report(self, state: DeviceState | None, report: Record, fx: Effects) -> DeviceState:
        if state is None:
            state = DeviceState(report["product_key"], report["device_name"])
        if report["kind"] == "VERSION" and self._nothing_to_decide(state, report):
            # Most reports at fleet scale: a device with no task, and no dynamic batch
            # that could match it, says its version. ``_on_report`` would reach the same
            # state through every check below; this skips them (tested as equivalent).
            fx.touch(state)
            state.last_seen = max(state.last_seen, report["event_time"])
            state.online = True
            version = report.get("version")
            if version is not None:
                state.modules[report.get("module") or "default"] = version
            return state
        return self._on_report(state, report, fx)

    def _nothing_to_decide(self, state: DeviceState, report: Record) -> bool:
        """A plain device (no task to move, no group to evaluate: ``devices.is_plain``),
        and no dynamic batch for the module: the byte path's condition, on objects."""
        return is_plain(state) and self.decides_nothing_on_version(
            state.product_key, report.get("module") or "default"
        )

    def decides_nothing_on_version(self, product_key: str, module: str) -> bool:
        """No batch could match a device of ``product_key`` on a version of ``module``:
        no dynamic batch for the module, no group-based batch for the product. A device
        without tasks or dynamic groups then only records a version report (online,
        last seen, the module's version); ``otaflow.plain_reports`` does that in bytes."""
        return not self.batches.group_based_for(product_key) and not self.batches.dynamic_for(
            product_key, module
        )

    def _on_report(self, state: DeviceState, report: Record, fx: Effects) -> DeviceState:
        now = report["event_time"]
        kind = report["kind"]
        self.advance(state, now, fx)
        fx.touch(state)
        was_online = state.online
        if kind == "OFFLINE":
            if now >= state.last_seen:
                state.online = False
            state.last_seen = max(state.last_seen, now)
            return state
        state.last_seen = max(state.last_seen, now)
        state.online = True
        module = report.get("module") or "default"
        if kind == "VERSION":
            self._on_version(state, module, report.get("version"), now, fx)
        elif kind == "PROGRESS":
            self._on_progress(state, module, report.get("step"), report.get("desc") or "", now, fx)
        elif kind == "FIRMWARE_GET":
            self._on_firmware_get(state, module, report.get("message_id"), now, fx)
        if kind == "ONLINE" or (not was_online and kind == "VERSION"):
            # A new connection: what was pushed on an earlier one may be lost.
            self._offer_again(state, now, fx, _REPUSHED)
        elif kind == "VERSION":
            # Still on its old version with an offer out: the offer did not arrive.
            self._offer_again(state, now, fx, _REOFFERED_ON_VERSION, module=module)
        self.advance(state, now, fx)
        state.prune(self.keep_finished)
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
                self._move(state, task, TaskStatus.SUCCEEDED, now, fx, "")
                fx.succeeded[task.batch_id] += 1
        self._match_dynamic(state, now, fx, version_module=module)

    def _on_progress(
        self, state: DeviceState, module: str, step: int | None, desc: str, now: int, fx: Effects
    ) -> None:
        task = self._current(state, module, _PROGRESS_FROM, now)
        if task is None or step is None:
            return
        if task.first_progress_at is None:
            # The timeout counts from the first progress report, never reset by re-pushes.
            task.first_progress_at = now
        if step < 0:
            reason = FAILURE_STEPS.get(step, "update failed")
            self._move(
                state, task, TaskStatus.FAILED, now, fx, f"{reason}: {desc}" if desc else reason
            )
            self._schedule_retry(task, now)
            return
        step = min(step, 100)
        if task.status is TaskStatus.IN_PROGRESS:
            if step == task.progress:
                return
            task.progress = step
            task.updated_at = now
            task.previous_status = TaskStatus.IN_PROGRESS
            fx.task_changed(state, task, now)
            return
        task.progress = step
        self._move(state, task, TaskStatus.IN_PROGRESS, now, fx, desc or None)

    def _on_firmware_get(
        self, state: DeviceState, module: str, message_id: str | None, now: int, fx: Effects
    ) -> None:
        task = self._current(state, module, _PULLABLE, now)
        batch = self.batches.get(task.batch_id) if task else None
        if task is None or batch is None:
            fx.notify(state, now, kind="PULL_REPLY", reply_to=message_id)
            return
        if task.status is TaskStatus.QUEUED:
            # A pull is answered at once; only proactive pushes are metered.
            self._move(state, task, TaskStatus.NOTIFIED, now, fx)
        fx.notify(state, now, kind="PULL_REPLY", task=task, batch=batch, reply_to=message_id)

    def _current(
        self, state: DeviceState, module: str, statuses: frozenset[TaskStatus], now: int
    ) -> Task | None:
        """The module's task in ``statuses`` whose batch's schedule has started."""
        for task in reversed(state.tasks):
            if task.module != module or task.status not in statuses:
                continue
            batch = self.batches.get(task.batch_id)
            if batch is not None and has_started(batch, now):
                return task
        return None

    def _offer_again(
        self,
        state: DeviceState,
        now: int,
        fx: Effects,
        statuses: frozenset[TaskStatus],
        module: str | None = None,
    ) -> None:
        """Queue the device's pushed tasks for another push slot (timeouts keep running)."""
        for task in state.tasks:
            if task.status not in statuses or task.in_push_queue:
                continue
            if module is not None and task.module != module:
                continue
            batch = self.batches.get(task.batch_id)
            if (
                batch is not None
                and batch.need_push
                and has_started(batch, now)
                and push_hold(batch, state, task, now) is None
            ):
                fx.queue_push(state, task)

    # -- the rate agent's permission to push -------------------------------------------

    def on_release(self, state: DeviceState | None, release: Record, fx: Effects) -> None:
        now = release["event_time"]
        if state is None:
            fx.unsent[(release["batch_id"], now)] += 1  # the device is gone
            return
        self.advance(state, now, fx)
        task = state.task(release["task_id"])
        if task is None or not task.in_push_queue or task.status not in _RELEASABLE:
            # canceled, pulled or already pushed meanwhile: nothing to send
            fx.unsent[(release["batch_id"], now)] += 1
            return
        task.in_push_queue = False
        fx.touch(state)
        batch = self.batches.get(task.batch_id)
        if not state.online or batch is None or not has_started(batch, now):
            fx.unsent[(release["batch_id"], now)] += 1
            return  # stays as it is; queued again when the device is back
        if push_hold(batch, state, task, now) is not None:
            # cohort paused or window closed: stays as it is, queued again later
            fx.unsent[(release["batch_id"], now)] += 1
            return
        if task.status is TaskStatus.QUEUED:
            self._move(state, task, TaskStatus.NOTIFIED, now, fx)
        fx.notify(state, now, kind="PUSH", task=task, batch=batch)

    # -- static batches ----------------------------------------------------------------

    def on_static_start(self, state: DeviceState, batch: Batch, now: int, fx: Effects) -> None:
        """A static batch (ALL, REGIONAL, GROUP) started: does it take this device?"""
        self.advance(state, now, fx)
        if in_static_scope(batch, state, self.groups):
            self._offer_static(state, batch, now, fx)

    def on_target(self, state: DeviceState | None, batch: Batch, now: int, fx: Effects) -> None:
        """A TARGETED batch named this device (``BatchTarget``), or a PHASED batch's share
        picked it (``PartitionEngine.phased_quota``)."""
        if state is None or batch.is_dynamic or batch.product_key != state.product_key:
            return  # the control plane names registered devices only
        self.advance(state, now, fx)
        self._offer_static(state, batch, now, fx)

    def _offer_static(self, state: DeviceState, batch: Batch, now: int, fx: Effects) -> None:
        if (
            takes_new_tasks(batch, now)
            and not state.has_task_of(batch.batch_id)
            and batch.accepts_version(state.modules.get(batch.module))
        ):
            self._create_task(state, batch, now, fx)

    # -- dynamic batches -----------------------------------------------------------------

    def on_dynamic_start(
        self,
        state: DeviceState,
        batch: Batch,
        now: int,
        fx: Effects,
        *,
        versions: frozenset[str] | None = None,
    ) -> None:
        """A dynamic batch started (or got new source ``versions``): match this device.

        With ``versions``, only a device whose module is on one of them is matched
        (adding source versions matches the devices on the added ones, no others).
        """
        self.advance(state, now, fx)
        if versions is not None and state.modules.get(batch.module) not in versions:
            return
        self._match_dynamic(state, now, fx, version_module=batch.module, only=batch)

    def on_groups_changed(self, state: DeviceState, now: int, fx: Effects) -> None:
        """A dynamic group's expression changed: the device may have joined or left it."""
        self.advance(state, now, fx)
        self._match_dynamic(state, now, fx, version_module=None)

    def _member_of(self, state: DeviceState, now: int, fx: Effects) -> set[str]:
        """Evaluate the groups of the product's live group-based batches; note joins/leaves.

        Leaving a group forgets which of its batches matched the device, so a device
        that rejoins is matched again. Groups no live batch uses are not evaluated.
        """
        group_based = self.batches.group_based_for(state.product_key)
        if not group_based and not state.dynamic_groups and not state.group_matches:
            return set()  # the common case: nothing to evaluate or forget
        live = {
            b.group_id for b in group_based if b.group_id is not None and takes_new_tasks(b, now)
        }
        member_of = {gid for gid in live if self.groups.is_member(gid, state)}
        for gid in sorted(member_of):
            if gid not in state.dynamic_groups:
                state.dynamic_groups.append(gid)  # joined
                fx.touch(state)
        for gid in list(state.dynamic_groups):
            if gid in live and gid not in member_of:
                state.dynamic_groups.remove(gid)  # left
                fx.touch(state)
        for batch_id in list(state.group_matches):
            batch = self.batches.get(batch_id)
            if batch is None or (batch.group_id in live and batch.group_id not in member_of):
                state.group_matches.remove(batch_id)
                fx.touch(state)
        return member_of

    def _match_dynamic(
        self,
        state: DeviceState,
        now: int,
        fx: Effects,
        *,
        version_module: str | None,
        only: Batch | None = None,
    ) -> None:
        """Give the device a task of its top-precedence dynamic batch, per module."""
        member_of = self._member_of(state, now, fx)
        if only is not None:
            modules = [only.module]
        else:
            wanted = {version_module} if version_module is not None else set()
            for batch in self.batches.group_based_for(state.product_key):
                if batch.group_id in member_of and takes_new_tasks(batch, now):
                    wanted.add(batch.module)
            modules = sorted(wanted)
        for module in modules:
            candidates = dynamic_candidates(
                self.batches.dynamic_for(state.product_key, module),
                state,
                module,
                now,
                version_trigger=module == version_module,
                member_of=member_of,
            )
            if not candidates:
                continue
            top = candidates[0]
            if only is not None and top.batch_id != only.batch_id:
                continue
            if state.active_task_for(top.batch_id) is None:
                self._create_task(state, top, now, fx)

    # -- operators' actions ---------------------------------------------------------------

    def on_cancel_tasks(
        self,
        state: DeviceState,
        batch_id: str,
        statuses: frozenset[TaskStatus],
        now: int,
        fx: Effects,
    ) -> None:
        """CancelOTATaskByJob: cancel this batch's tasks that are in one of ``statuses``."""
        self.advance(state, now, fx)
        for task in state.tasks:
            if task.batch_id != batch_id:
                continue
            if task.status in statuses and task.status in ACTIVE:
                self._move(state, task, TaskStatus.CANCELED, now, fx, CANCELED_BY_OPERATOR)
            elif (
                task.status is TaskStatus.FAILED
                and task.retry_at is not None
                and TaskStatus.QUEUED in statuses
            ):
                task.retry_at = None  # a retry waiting to be queued is canceled with the queue
                fx.touch(state)
                fx.settling.add(task.batch_id)

    def on_task_command(self, state: DeviceState | None, command: Record, fx: Effects) -> None:
        """ConfirmOTATask, ReupgradeOTATask, CancelOTATaskByDevice for one device."""
        if state is None:
            return
        now = command["event_time"]
        self.advance(state, now, fx)
        action = command["action"]
        for task in list(state.tasks):
            if not self._selected(task, command):
                continue
            if action == "CONFIRM" and task.status is TaskStatus.CONFIRM:
                self._move(state, task, TaskStatus.QUEUED, now, fx, "")
            elif action == "REUPGRADE" and task.status in _REUPGRADABLE:
                self._reupgrade(state, task, now, fx)
            elif action == "CANCEL" and task.status in _CANCELABLE_BY_DEVICE:
                self._move(state, task, TaskStatus.CANCELED, now, fx, CANCELED_BY_OPERATOR)
        self.advance(state, now, fx)

    def _selected(self, task: Task, command: Record) -> bool:
        if command.get("task_ids"):
            return task.task_id in command["task_ids"]
        batch_id = command.get("batch_id")
        firmware_id = command.get("firmware_id")
        if batch_id is None and firmware_id is None:
            return False
        if batch_id is not None and task.batch_id != batch_id:
            return False
        if firmware_id is not None:
            batch = self.batches.get(task.batch_id)
            return batch is not None and batch.firmware.firmware_id == firmware_id
        return True

    def _reupgrade(self, state: DeviceState, task: Task, now: int, fx: Effects) -> None:
        batch = self.batches.get(task.batch_id)
        if (
            batch is None
            or has_ended(batch, now)
            or state.active_task_for(task.batch_id) is not None
            or not admit(state, batch, may_cancel=False).admitted
        ):
            return
        task.progress = 0
        task.first_progress_at = None
        task.retry_at = None
        task.retries_left = batch.retry_count if batch.retry_interval_minutes is not None else 0
        # A batch that needs the app's confirmation asks again (CONFIRM), like a new task.
        to = TaskStatus.CONFIRM if batch.need_confirm else TaskStatus.QUEUED
        self._move(state, task, to, now, fx, "reupgrade")

    # -- the registry's word ----------------------------------------------------------------

    def on_registration(
        self, state: DeviceState | None, registration: Record, fx: Effects
    ) -> DeviceState | None:
        """REGISTER / UPDATE (region, static groups) or DELETE (returns None)."""
        now = registration["event_time"]
        if registration["action"] == "DELETE":
            if state is not None:
                self.advance(state, now, fx)
                for task in state.tasks:
                    if task.status in ACTIVE:
                        self._move(state, task, TaskStatus.CANCELED, now, fx, DEVICE_DELETED)
                fx.touch(state)
            return None
        if state is None:
            state = DeviceState(registration["product_key"], registration["device_name"])
        self.advance(state, now, fx)
        state.registered = True
        state.province = registration.get("province")
        state.city = registration.get("city")
        state.groups = list(registration.get("groups") or [])
        fx.touch(state)
        # A changed region or group list can make the device join a dynamic group.
        self._match_dynamic(state, now, fx, version_module=None)
        self.advance(state, now, fx)
        return state

    # -- helpers -----------------------------------------------------------------------------

    def _move(
        self,
        state: DeviceState,
        task: Task,
        to: TaskStatus,
        now: int,
        fx: Effects,
        desc: str | None = None,
    ) -> None:
        task.move(to, now, desc=desc)
        if to is not TaskStatus.QUEUED:
            task.in_push_queue = False
        if to is not TaskStatus.FAILED:
            task.retry_at = None
        fx.task_changed(state, task, now)

    def _create_task(self, state: DeviceState, batch: Batch, now: int, fx: Effects) -> bool:
        admission = admit(state, batch)
        if not admission.admitted:
            return False
        for old in admission.cancels:
            self._move(
                state, old, TaskStatus.CANCELED, now, fx, f"overridden by batch {batch.batch_id}"
            )
        for old in state.tasks:
            if old.batch_id == batch.batch_id and old.retry_at is not None:
                old.retry_at = None  # superseded by the new match
        number = 1
        if batch.is_dynamic:
            number = state.match_counts.get(batch.batch_id, 0) + 1
            state.match_counts[batch.batch_id] = number
            if batch.is_group_based:
                state.group_matches.append(batch.batch_id)
        task = Task(
            task_id=make_task_id(batch.batch_id, state.key, number),
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
        self._push_if_possible(state, task, now, fx)
        state.prune(self.keep_finished)
        return True

    def _push_if_possible(self, state: DeviceState, task: Task, now: int, fx: Effects) -> None:
        if task.status is not TaskStatus.QUEUED or task.in_push_queue or not state.online:
            return
        batch = self.batches.get(task.batch_id)
        if (
            batch is not None
            and batch.need_push
            and has_started(batch, now)
            and push_hold(batch, state, task, now) is None
        ):
            fx.queue_push(state, task)

    def _schedule_retry(self, task: Task, now: int) -> None:
        batch = self.batches.get(task.batch_id)
        if batch is None or batch.retry_interval_minutes is None or task.retries_left <= 0:
            return
        at = now + batch.retry_interval_minutes * MINUTE_MS
        deadline = timeout_deadline(task)
        if deadline is not None and at >= deadline:
            return  # console doc: "the system will not trigger a retry after the timeout"
        task.retry_at = at


def new_device(product_key: str, device_name: str) -> DeviceState:
    return DeviceState(product_key, device_name)


__all__ = ["BatchTaskIds", "DeviceEngine", "Effects", "device_key", "make_task_id", "new_device"]
