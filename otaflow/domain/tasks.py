"""The task state machine: the platform's statuses and the moves allowed between them.

    CONFIRM ──confirm──▶ QUEUED ──push/pull──▶ NOTIFIED ──progress──▶ IN_PROGRESS
       │                   │                      │                      │
       └──────cancel───────┴──────────────────────┴───────cancel─────────┤
                                                   new version reported ─┴─▶ SUCCEEDED
                                 failure step or timeout ──────────────────▶ FAILED

A timed-out task is FAILED with the reason in ``desc`` (the platform has no TIMEOUT
status). A FAILED task may be retried: it goes back to QUEUED with one retry fewer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class TaskStatus(StrEnum):
    CONFIRM = "CONFIRM"
    QUEUED = "QUEUED"
    NOTIFIED = "NOTIFIED"
    IN_PROGRESS = "IN_PROGRESS"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"


# Waiting for the device to start: what "override previous tasks" may cancel.
PENDING = frozenset({TaskStatus.CONFIRM, TaskStatus.QUEUED, TaskStatus.NOTIFIED})
FINAL = frozenset({TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELED})
ACTIVE = frozenset(TaskStatus) - FINAL

ALLOWED: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.CONFIRM: frozenset({TaskStatus.QUEUED, TaskStatus.CANCELED}),
    # A queued task can move on by itself: the device may already hold the package
    # (a retry, a re-upgrade) and report progress, a failure or its new version.
    TaskStatus.QUEUED: frozenset(
        {
            TaskStatus.NOTIFIED,
            TaskStatus.CANCELED,
            TaskStatus.IN_PROGRESS,
            TaskStatus.SUCCEEDED,
            TaskStatus.FAILED,
        }
    ),
    TaskStatus.NOTIFIED: frozenset(
        {TaskStatus.IN_PROGRESS, TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELED}
    ),
    TaskStatus.IN_PROGRESS: frozenset(
        {TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELED}
    ),
    # Retry (and ReupgradeOTATask) bring a failed task back to the queue; a re-upgrade
    # of a batch that needs confirmation brings it back to CONFIRM.
    TaskStatus.FAILED: frozenset({TaskStatus.QUEUED, TaskStatus.CONFIRM}),
    TaskStatus.CANCELED: frozenset({TaskStatus.QUEUED, TaskStatus.CONFIRM}),
    TaskStatus.SUCCEEDED: frozenset(),
}

# Progress steps below zero are failures, each with the platform's meaning.
FAILURE_STEPS = {
    -1: "update failed",
    -2: "download failed",
    -3: "verification failed",
    -4: "flashing failed",
}


class IllegalTransition(ValueError):
    pass


@dataclass(slots=True)
class Task:
    task_id: str
    batch_id: str
    module: str
    dest_version: str
    status: TaskStatus
    created_at: int
    updated_at: int
    src_version: str | None = None
    progress: int = 0
    desc: str = ""
    first_progress_at: int | None = None
    timeout_minutes: int | None = None
    retries_left: int = 0
    retry_at: int | None = None
    in_push_queue: bool = False
    # Not persisted: the status before the last move, for the task event.
    previous_status: TaskStatus | None = field(default=None, compare=False)

    @property
    def is_final(self) -> bool:
        return self.status in FINAL

    @property
    def is_pending(self) -> bool:
        return self.status in PENDING

    def move(self, to: TaskStatus, now: int, desc: str | None = None) -> None:
        if to not in ALLOWED[self.status]:
            raise IllegalTransition(f"task {self.task_id}: {self.status.value} -> {to.value}")
        self.previous_status = self.status
        self.status = to
        self.updated_at = now
        if desc is not None:
            self.desc = desc

    def to_record(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "batch_id": self.batch_id,
            "module": self.module,
            "src_version": self.src_version,
            "dest_version": self.dest_version,
            "status": self.status.value,
            "progress": self.progress,
            "desc": self.desc,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "first_progress_at": self.first_progress_at,
            "timeout_minutes": self.timeout_minutes,
            "retries_left": self.retries_left,
            "retry_at": self.retry_at,
            "in_push_queue": self.in_push_queue,
        }

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Task:
        return cls(
            task_id=rec["task_id"],
            batch_id=rec["batch_id"],
            module=rec["module"],
            dest_version=rec["dest_version"],
            status=TaskStatus(rec["status"]),
            created_at=rec["created_at"],
            updated_at=rec["updated_at"],
            src_version=rec["src_version"],
            progress=rec["progress"],
            desc=rec["desc"],
            first_progress_at=rec["first_progress_at"],
            timeout_minutes=rec["timeout_minutes"],
            retries_left=rec["retries_left"],
            retry_at=rec["retry_at"],
            in_push_queue=rec["in_push_queue"],
        )
