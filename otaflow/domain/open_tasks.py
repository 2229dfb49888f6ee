"""When a static batch is complete: every task final in every device partition. Pure.

A static batch's tasks are decided when it starts (its devices are matched, named or
picked then), but they live in the device partitions, so no one place sees them all.
Each partition counts the batch's *open* tasks itself and reports the count to the
control plane through the command topic (a ``Command`` ``otaflow.OpenTaskCount``, the
channel phased batches count on). A task is open unless it is final (succeeded,
failed, canceled) with nothing more to come: a failed task whose retry is still
pending is open, since the retry brings it back to the queue.

When to count (a count is a scan of the batch's devices, unless the START in this
partition counted them just before and nothing has changed them since: ``counted``):

* the plane sends each partition an ``OpenTaskProbe`` after everything that gives
  the partition its tasks (the START, a targeted batch's ``BatchTarget`` records, a
  phased batch's ``PhasedQuota``): the partition counts at once and says so
  (``probe``), so the plane knows that partition has seen all its tasks;
* whenever a task of the batch stops being open (a final status, a retry dropped or
  canceled), the batch is *dirty*; the partition counts again and reports, at most
  once per ``REPORT_EVERY_MS`` of event time per batch, or per ``MS_PER_TASK`` for
  each task the partition holds when that is longer (a count is a scan of the batch's
  devices, ~25 us each: a large batch must not be counted per envelope, and 1 ms of
  event time per task keeps the counting of a rollout near 2-3% of a partition's
  time). A dirty batch not yet reported is reported by a later record or tick;
* after the partition's in-memory watch is rebuilt (a restart, a rebalance), every
  static batch it knows as planned or running is dirty once (a count lost with the
  process is sent again).

Counts are absolute (not deltas), so a count sent twice or replayed is harmless. The
plane completes the batch when every partition has answered its probe, the latest
count of each is zero, and the batch has tasks at all (a count also says how many
tasks the partition holds): a batch that gave no device a task is not "done", it
updated nothing (``otaflow.control.jobs.JobOps.open_task_count``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from otaflow.domain.devices import DeviceState
from otaflow.domain.tasks import ACTIVE, Task, TaskStatus

#: At most one count per batch and partition in this much event time (but the probe's).
REPORT_EVERY_MS = 10_000
#: ... or in this much per task the partition held at its last count, when longer.
MS_PER_TASK = 1


def is_open(task: Task) -> bool:
    """Can the task still change: not final, or failed with a retry pending."""
    return task.status in ACTIVE or (task.status is TaskStatus.FAILED and task.retry_at is not None)


def count_tasks(states: Iterable[DeviceState], batch_id: str) -> tuple[int, int]:
    """(open tasks, all tasks) of the batch among ``states``."""
    open_, every = 0, 0
    for state in states:
        for task in state.tasks:
            if task.batch_id == batch_id:
                every += 1
                open_ += is_open(task)
    return open_, every


@dataclass
class OpenTaskWatch:
    """One partition's static batches to count again, kept in memory between envelopes."""

    dirty: set[str] = field(default_factory=set)
    # Batch id -> event time from which it may be counted again.
    next_count: dict[str, int] = field(default_factory=dict)
    # False until the first tick after the watch was made (see the module doc).
    rebuilt: bool = False
    # Batch id -> (open, all) tasks, as the partition's START counted them over the
    # devices it scanned, kept while no record since could have changed them
    # (``PartitionEngine.apply`` forgets them): the START's probe then needs no scan. A
    # START is followed by its probe; the probe's scan decoded every device that the
    # START had just given a task, which cost more than the START itself.
    counted: dict[str, tuple[int, int]] = field(default_factory=dict)

    def due(self, now: int) -> list[str]:
        """The dirty batches that may be counted at ``now`` (in id order)."""
        return sorted(b for b in self.dirty if now >= self.next_count.get(b, now))

    def reported(self, batch_id: str, now: int, tasks: int) -> None:
        self.dirty.discard(batch_id)
        wait = max(REPORT_EVERY_MS, tasks * MS_PER_TASK)
        self.next_count[batch_id] = max(now + wait, self.next_count.get(batch_id, now))


def report_id(batch_id: str, partition: int, now: int, probe: bool) -> str:
    """The count's command request id: a replayed envelope sends the same id (a no-op)."""
    return f"OpenTaskCount/{batch_id}/{partition}/{now}/{int(probe)}"
