"""Which dynamic batch, if any, gives a device a new task, and what a new task displaces.

Pure decisions over a device's state and the batches its partition knows.

Dynamic matching, for one module of one device at event time ``now``:

1. A dynamic batch *matches* when it takes new tasks (running, strategy active), is
   for the module, accepts the module's reported version (destination skipped,
   differential source, source-version filter), DynamicMode 2 batches only from
   their creation on, and one of:
   - it already holds an active task of the device (it is the device's current match);
   - group-based: the device is in its dynamic group and has not been matched by it
     since it last joined the group (a device that failed, left and rejoined is
     matched again);
   - version-based: the trigger is a version report of this module (or the batch's
     own start or source-version update) and the batch matched the device fewer than
     10 times (``match_cap``).
2. Precedence: group-based before version-based, then the most recently created.
3. Only the first batch counts. If it already holds an active task, nothing happens;
   otherwise it gets a task if ``admit`` lets it. A lower batch is never tried
   instead: the device matches only its most recent batch.

``admit`` applies the in-progress, override and multi-module rules to a would-be task.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from otaflow.domain.batches import Batch
from otaflow.domain.devices import DeviceState
from otaflow.domain.match_cap import may_match_again
from otaflow.domain.schedule import takes_new_tasks
from otaflow.domain.tasks import PENDING, Task, TaskStatus

# A device updates at most five modules at once in multi-module mode.
MAX_PARALLEL_MODULES = 5


def precedence(batch: Batch) -> tuple[bool, int, str]:
    """Sort key, highest first: group-based, then most recently created."""
    return (batch.is_group_based, batch.created_at, batch.batch_id)


def dynamic_candidates(
    batches: Iterable[Batch],
    state: DeviceState,
    module: str,
    now: int,
    *,
    version_trigger: bool,
    member_of: frozenset[str] | set[str],
) -> list[Batch]:
    """The dynamic batches that match the device's ``module`` now, by precedence.

    ``member_of``: the dynamic groups the device is in now.
    """
    version = state.modules.get(module)
    matching = []
    for batch in batches:
        if not batch.is_dynamic or batch.module != module:
            continue
        if batch.product_key != state.product_key or not takes_new_tasks(batch, now):
            continue
        if not batch.accepts_version(version):
            continue
        if batch.dynamic_mode == 2 and now < batch.created_at:
            continue
        if state.active_task_for(batch.batch_id) is not None:
            matching.append(batch)
        elif batch.is_group_based:
            if batch.group_id in member_of and batch.batch_id not in state.group_matches:
                matching.append(batch)
        elif version_trigger and may_match_again(state.match_counts.get(batch.batch_id, 0)):
            matching.append(batch)
    matching.sort(key=precedence, reverse=True)
    return matching


@dataclass(frozen=True, slots=True)
class Admission:
    """Whether a new task for ``batch`` may be created, and which tasks it cancels."""

    admitted: bool
    cancels: tuple[Task, ...] = ()
    reason: str = ""


def admit(state: DeviceState, batch: Batch, *, may_cancel: bool = True) -> Admission:
    """Apply the in-progress, override and multi-module rules to a would-be task.

    - Multi-module batch: a task of the same module in progress blocks; five other
      modules updating block; otherwise the module's pending task is replaced.
    - Otherwise: any task in progress blocks; a pending task blocks unless the batch
      overrides (OverwriteMode 2), which cancels every pending task.

    ``may_cancel=False`` (retries, re-upgrades): admitted only if nothing is canceled.
    """
    active = list(state.active_tasks())
    if batch.multi_module:
        same_module = [t for t in active if t.module == batch.module]
        if any(t.status is TaskStatus.IN_PROGRESS for t in same_module):
            return Admission(False, reason="module update in progress")
        other_modules = {t.module for t in active if t.module != batch.module}
        if len(other_modules) >= MAX_PARALLEL_MODULES:
            return Admission(False, reason="five modules already updating")
        cancels = tuple(t for t in same_module if t.status in PENDING)
    else:
        if any(t.status is TaskStatus.IN_PROGRESS for t in active):
            return Admission(False, reason="another update in progress")
        pending = tuple(t for t in active if t.status in PENDING)
        if pending and batch.overwrite_mode != 2:
            return Admission(False, reason="device already has a pending task")
        cancels = pending
    if cancels and not may_cancel:
        return Admission(False, reason="device has another pending task")
    return Admission(True, cancels=cancels)
