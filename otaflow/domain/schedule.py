"""A batch's life on event time: when it takes new tasks, when its tasks may be pushed.

Scheduled static batches (``schedule_start``, optional ``schedule_end``) are created
``PLANNED``. Like the platform, otaflow selects their devices when the batch is
created: the tasks exist from then on, QUEUED (or CONFIRM) but *held* — not pushed
and not handed out to a device that asks — until ``schedule_start``. At
``schedule_end`` every task of the batch that has not started (CONFIRM, QUEUED,
NOTIFIED) is canceled; tasks in progress finish.

Both moments are event time: the device engine fires them when a device's record or
a tick carries a time at or past them, never on a worker's clock.
"""

from __future__ import annotations

from otaflow.domain.batches import Batch, BatchStatus
from otaflow.domain.tasks import PENDING, TaskStatus

# What a schedule's end cancels: the tasks whose update has not started.
NOT_STARTED = PENDING
SCHEDULE_ENDED = "schedule ended before the update started"


def has_started(batch: Batch, now: int) -> bool:
    """May the batch's tasks be pushed or handed out at ``now``?"""
    return batch.schedule_start is None or now >= batch.schedule_start


def has_ended(batch: Batch, now: int) -> bool:
    return batch.schedule_end is not None and now >= batch.schedule_end


def takes_new_tasks(batch: Batch, now: int) -> bool:
    """Can the batch give a device a new task at ``now``?

    Static: while planned or running and before its schedule's end. Dynamic: while
    running and its strategy is active (CancelOTAStrategyByJob stops it).
    """
    if batch.is_dynamic:
        return batch.status is BatchStatus.IN_PROGRESS and batch.strategy_active
    if batch.status not in (BatchStatus.PLANNED, BatchStatus.IN_PROGRESS):
        return False
    return not has_ended(batch, now)


def next_schedule_time(batch: Batch, status: TaskStatus, after: int) -> int | None:
    """The next schedule moment after ``after`` that concerns a task in ``status``."""
    times = []
    if (
        status is TaskStatus.QUEUED
        and batch.schedule_start is not None
        and batch.schedule_start > after
    ):
        times.append(batch.schedule_start)
    if status in NOT_STARTED and batch.schedule_end is not None and batch.schedule_end > after:
        times.append(batch.schedule_end)
    return min(times) if times else None
