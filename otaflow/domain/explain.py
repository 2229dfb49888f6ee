"""Why a device was or was not matched, pushed, retried, canceled or left waiting. Pure.

``explain_device`` answers, for every batch of the device's product, with one
``Explanation``: a reason code, a sentence, the batch it lost to (precedence,
override), when it should be pushed (queue position under the rate and the
maintenance windows) and, as evidence, the device's task events of that batch (the
records of ``ota.task.events``). It is computed from the device's state and the batch
definitions with the engine's own rules (``scopes``, ``matching``, ``schedule``,
``holds``), so it cannot drift from what the engine does.

Reasons (``Reason``): a device with a task of the batch is explained by its task
(SUCCEEDED, PUSHED, QUEUED with its position, OFFLINE, SCHEDULED, WINDOW_CLOSED,
COHORT_PAUSED, AWAITING_CONFIRM, RETRY_PENDING, RETRIED, FAILED, TIMED_OUT, OVERRIDDEN,
CANCELED); one without by the first rule that keeps it out (BATCH_STOPPED,
OUT_OF_SCOPE, SOURCE_VERSION, MATCH_CAP, PRECEDENCE, BLOCKED) or WOULD_MATCH.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from otaflow.domain.batches import Batch, BatchScope
from otaflow.domain.devices import DeviceState
from otaflow.domain.groups import GroupRegistry
from otaflow.domain.holds import COHORT_PAUSED, push_hold
from otaflow.domain.maintenance import advance_open_time, next_open, parse_windows
from otaflow.domain.match_cap import may_match_again
from otaflow.domain.matching import admit, dynamic_candidates
from otaflow.domain.schedule import has_started, takes_new_tasks
from otaflow.domain.scopes import in_static_scope
from otaflow.domain.tasks import Task, TaskStatus

MINUTE_MS = 60_000
OVERRIDDEN_PREFIX = "overridden by batch "


class Reason(StrEnum):
    SUCCEEDED = "SUCCEEDED"
    PUSHED = "PUSHED"
    QUEUED = "QUEUED"
    OFFLINE = "OFFLINE"
    SCHEDULED = "SCHEDULED"
    WINDOW_CLOSED = "WINDOW_CLOSED"
    COHORT_PAUSED = "COHORT_PAUSED"
    AWAITING_CONFIRM = "AWAITING_CONFIRM"
    RETRY_PENDING = "RETRY_PENDING"
    RETRIED = "RETRIED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    OVERRIDDEN = "OVERRIDDEN"
    CANCELED = "CANCELED"
    BATCH_STOPPED = "BATCH_STOPPED"
    OUT_OF_SCOPE = "OUT_OF_SCOPE"
    SOURCE_VERSION = "SOURCE_VERSION"
    MATCH_CAP = "MATCH_CAP"
    PRECEDENCE = "PRECEDENCE"
    BLOCKED = "BLOCKED"
    WOULD_MATCH = "WOULD_MATCH"


@dataclass
class Explanation:
    batch_id: str
    reason: Reason
    detail: str
    task_id: str | None = None
    task_status: str | None = None
    other_batch: str | None = None
    expected_push_at: int | None = None
    queue_position: int | None = None
    evidence: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "JobId": self.batch_id,
            "Reason": self.reason.value,
            "Detail": self.detail,
            "TaskId": self.task_id,
            "TaskStatus": self.task_status,
            "OtherJobId": self.other_batch,
            "ExpectedPushTime": self.expected_push_at,
            "QueuePosition": self.queue_position,
            "Evidence": list(self.evidence),
        }


def push_rate_per_minute(batch: Batch) -> int | None:
    """The pushes a minute the batch is sure of: a constant rate, or a variable one's base."""
    rate = batch.rate
    if rate is None:
        return None
    return int(rate["max_rate"] if rate["kind"] == "constant" else rate["base_rate"] or 1)


def expected_push_time(batch: Batch, ahead: int, now: int) -> int | None:
    """When a task with ``ahead`` tasks before it in the queue is pushed, at the latest:
    at the batch's sure rate, counting only time inside its maintenance windows."""
    per_minute = push_rate_per_minute(batch)
    if per_minute is None or per_minute <= 0:
        return None
    minutes = ahead // per_minute  # the first ``per_minute`` go in the current minute
    return advance_open_time(parse_windows(batch.maintenance_windows), now, minutes * MINUTE_MS)


def explain_device(
    state: DeviceState,
    batches: Iterable[Batch],
    now: int,
    *,
    groups: GroupRegistry | None = None,
    history: Sequence[Mapping[str, Any]] = (),
    queue_ahead: Mapping[str, int] | None = None,
) -> list[Explanation]:
    """One explanation per batch of the device's product, oldest batch first.

    ``history``: the device's task events (``ota.task.events``), oldest first.
    ``queue_ahead``: per batch, how many tasks wait before this device's in the queue.
    """
    groups = groups if groups is not None else GroupRegistry()
    own = sorted(
        (b for b in batches if b.product_key == state.product_key),
        key=lambda b: (b.created_at, b.batch_id),
    )
    out = []
    for batch in own:
        events = [dict(e) for e in history if e["batch_id"] == batch.batch_id]
        tasks = [t for t in state.tasks if t.batch_id == batch.batch_id]
        if tasks:
            why = _by_task(state, batch, tasks[-1], now, queue_ahead or {})
        else:
            why = _without_task(state, batch, own, now, groups)
        why.evidence = events
        out.append(why)
    return out


def _by_task(
    state: DeviceState, batch: Batch, task: Task, now: int, queue_ahead: Mapping[str, int]
) -> Explanation:
    def said(reason: Reason, detail: str, **extra: Any) -> Explanation:
        return Explanation(batch.batch_id, reason, detail, task.task_id, task.status.value, **extra)

    status = task.status
    if status is TaskStatus.SUCCEEDED:
        return said(Reason.SUCCEEDED, f"updated from {task.src_version} to {task.dest_version}")
    if status in (TaskStatus.NOTIFIED, TaskStatus.IN_PROGRESS):
        return said(Reason.PUSHED, f"offered the package; {status.value.lower()}")
    if status is TaskStatus.CONFIRM:
        return said(Reason.AWAITING_CONFIRM, "waits for the app to confirm (NeedConfirm)")
    if status is TaskStatus.FAILED:
        if task.retry_at is not None:
            return said(
                Reason.RETRY_PENDING,
                f"failed ({task.desc}); retried at {task.retry_at}, "
                f"{task.retries_left} retries left",
                expected_push_at=task.retry_at,
            )
        if task.desc == "timeout":
            return said(Reason.TIMED_OUT, "no new version within the batch's timeout")
        return said(Reason.FAILED, f"failed: {task.desc}")
    if status is TaskStatus.CANCELED:
        if task.desc.startswith(OVERRIDDEN_PREFIX):
            other = task.desc[len(OVERRIDDEN_PREFIX) :]
            return said(
                Reason.OVERRIDDEN,
                f"canceled: batch {other} overrides pending tasks (OverwriteMode 2)",
                other_batch=other,
            )
        return said(Reason.CANCELED, f"canceled: {task.desc}")
    # QUEUED: why it is not pushed yet.
    retried = " (a retry)" if task.desc == "retry" else ""
    if not batch.need_push:
        return said(Reason.QUEUED, f"waits for the device to ask (NeedPush false){retried}")
    if not has_started(batch, now):
        return said(
            Reason.SCHEDULED,
            f"the batch's schedule starts at {batch.schedule_start}",
            expected_push_at=batch.schedule_start,
        )
    hold = push_hold(batch, state, task, now)
    if hold == COHORT_PAUSED:
        paused = ", ".join(batch.paused_cohorts)
        return said(
            Reason.COHORT_PAUSED, f"an abort rule paused {paused}; resume with ResumeOTAJob"
        )
    if hold is not None:
        opens = next_open(parse_windows(batch.maintenance_windows), now)
        return said(
            Reason.WINDOW_CLOSED,
            f"outside the batch's maintenance windows; the next opens at {opens}",
            expected_push_at=opens,
        )
    if not state.online:
        return said(Reason.OFFLINE, "the device is offline; pushed when it is back")
    reason = Reason.RETRIED if task.desc == "retry" else Reason.QUEUED
    ahead = queue_ahead.get(batch.batch_id)
    at = expected_push_time(batch, ahead, now) if ahead is not None else None
    where = f"{ahead} tasks ahead in the push queue" if ahead is not None else "in the push queue"
    return said(
        reason,
        f"waits for a push slot{retried}: {where}",
        expected_push_at=at,
        queue_position=ahead,
    )


def _without_task(
    state: DeviceState, batch: Batch, own: Sequence[Batch], now: int, groups: GroupRegistry
) -> Explanation:
    def said(reason: Reason, detail: str, other: str | None = None) -> Explanation:
        return Explanation(batch.batch_id, reason, detail, other_batch=other)

    if not takes_new_tasks(batch, now):
        return said(Reason.BATCH_STOPPED, f"the batch takes no new tasks ({batch.status.value})")
    if not batch.is_dynamic:
        if batch.scope in (BatchScope.TARGETED, BatchScope.PHASED):
            return said(
                Reason.OUT_OF_SCOPE, f"not among the devices the {batch.scope.value} batch named"
            )
        if not in_static_scope(batch, state, groups):
            return said(Reason.OUT_OF_SCOPE, f"outside the batch's {batch.scope.value} scope")
    elif batch.is_group_based and (
        batch.group_id is None or not groups.is_member(batch.group_id, state)
    ):
        return said(Reason.OUT_OF_SCOPE, f"not in the batch's dynamic group {batch.group_id}")
    version = state.modules.get(batch.module)
    if not batch.accepts_version(version):
        wanted = (
            batch.firmware.src_version
            if batch.firmware.is_diff
            else ", ".join(batch.src_versions) or "any"
        )
        return said(
            Reason.SOURCE_VERSION,
            f"module {batch.module} reports {version}; the batch takes {wanted} "
            f"to {batch.dest_version}",
        )
    if batch.is_dynamic and not batch.is_group_based:
        count = state.match_counts.get(batch.batch_id, 0)
        if not may_match_again(count):
            return said(Reason.MATCH_CAP, f"matched {count} times: the 10-match cap is reached")
        member_of = {
            b.group_id
            for b in own
            if b.is_group_based and b.group_id is not None and groups.is_member(b.group_id, state)
        }
        candidates = dynamic_candidates(
            [b for b in own if b.is_dynamic and b.module == batch.module],
            state,
            batch.module,
            now,
            version_trigger=True,
            member_of=member_of,
        )
        if candidates and candidates[0].batch_id != batch.batch_id:
            top = candidates[0]
            return said(
                Reason.PRECEDENCE,
                f"batch {top.batch_id} comes first (group-based first, then most recent)",
                top.batch_id,
            )
    admission = admit(state, batch)
    if not admission.admitted:
        holder = next(iter(state.active_tasks()), None)
        return said(
            Reason.BLOCKED,
            f"{admission.reason}",
            holder.batch_id if holder is not None else None,
        )
    return said(Reason.WOULD_MATCH, "fits the batch; matched on its next report or start")
