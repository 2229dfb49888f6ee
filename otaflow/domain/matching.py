"""Which batch, if any, gives a device a new task.

Pure decisions over a device's state and the batches its partition knows:
- the scope and version rules of one batch (``batch_wants_device``),
- precedence among several dynamic batches (group-based first, then most recent),
- whether an existing task blocks, or is overridden by, a new one (override and
  multi-module rules).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from otaflow.domain.batches import Batch, BatchKind
from otaflow.domain.devices import DeviceState
from otaflow.domain.match_cap import may_match_again
from otaflow.domain.tasks import PENDING, Task, TaskStatus

# A device updates at most five modules at once in multi-module mode.
MAX_PARALLEL_MODULES = 5


def dynamic_candidates(
    batches: Iterable[Batch], state: DeviceState, module: str, version: str | None, at: int
) -> list[Batch]:
    """Dynamic batches that want this device after it reported ``version`` at ``at``.

    Ordered by precedence: group-based before version-based, then the most recent.
    """
    eligible = []
    for batch in batches:
        if batch.kind is not BatchKind.DYNAMIC or not batch.is_running:
            continue
        if not batch.strategy_active or batch.module != module:
            continue
        if batch.product_key != state.product_key or not batch.accepts_version(version):
            continue
        if batch.dynamic_mode == 2 and at < batch.created_at:
            continue
        if not batch.is_group_based and not may_match_again(
            state.match_counts.get(batch.batch_id, 0)
        ):
            continue
        if state.active_task_for(batch.batch_id) is not None:
            continue
        eligible.append(batch)
    eligible.sort(key=lambda b: (b.is_group_based, b.created_at, b.batch_id), reverse=True)
    return eligible


@dataclass(frozen=True, slots=True)
class Admission:
    """Whether a new task for ``batch`` may be created, and which tasks it cancels."""

    admitted: bool
    cancels: tuple[Task, ...] = ()
    reason: str = ""


def admit(state: DeviceState, batch: Batch) -> Admission:
    """Apply the in-progress, override and multi-module rules to a would-be task."""
    active = list(state.active_tasks())
    if batch.multi_module:
        same_module = [t for t in active if t.module == batch.module]
        if any(t.status is TaskStatus.IN_PROGRESS for t in same_module):
            return Admission(False, reason="module update in progress")
        other_modules = {t.module for t in active if t.module != batch.module}
        if len(other_modules) >= MAX_PARALLEL_MODULES:
            return Admission(False, reason="five modules already updating")
        # A new task for a module replaces that module's pending task.
        return Admission(True, cancels=tuple(t for t in same_module if t.status in PENDING))
    if any(t.status is TaskStatus.IN_PROGRESS for t in active):
        return Admission(False, reason="another update in progress")
    pending = [t for t in active if t.status in PENDING]
    if not pending:
        return Admission(True)
    if batch.overwrite_mode == 2:
        return Admission(True, cancels=tuple(pending))
    return Admission(False, reason="device already has a pending task")
