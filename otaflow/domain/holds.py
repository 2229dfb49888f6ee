"""Why a queued task may not be pushed now, beyond its batch's schedule. Pure.

Two holds, both otaflow extras (docs/openapi-ota.md, "Safe rollouts"):
- a paused cohort: an abort rule (``domain.abort_rules``) paused the cohort of the
  device's task, or the whole batch, until an operator resumes it;
- a closed maintenance window: the batch pushes only inside its recurring windows
  (``domain.maintenance``); outside them tasks wait in the queue.

The device engine asks ``push_hold`` before queuing a task for a push slot and again
when the rate agent releases it; ``next_open`` is a deadline, so a tick at a window's
opening queues the waiting tasks.
"""

from __future__ import annotations

from otaflow.domain.abort_rules import is_held
from otaflow.domain.batches import Batch
from otaflow.domain.devices import DeviceState
from otaflow.domain.maintenance import next_open as window_next_open
from otaflow.domain.maintenance import parse_windows
from otaflow.domain.tasks import Task

COHORT_PAUSED = "cohort paused"
WINDOW_CLOSED = "maintenance window closed"


def push_hold(batch: Batch, state: DeviceState, task: Task, now: int) -> str | None:
    """The reason the task may not be pushed at ``now`` (None: it may)."""
    if batch.paused_cohorts and is_held(batch.paused_cohorts, task.module, task.src_version, state):
        return COHORT_PAUSED
    if batch.maintenance_windows:
        windows = parse_windows(batch.maintenance_windows)
        if window_next_open(windows, now) != now:
            return WINDOW_CLOSED
    return None


def next_open(batch: Batch, now: int) -> int | None:
    """When a batch closed by its windows at ``now`` opens next (None: no windows)."""
    if not batch.maintenance_windows:
        return None
    return window_next_open(parse_windows(batch.maintenance_windows), now)
