"""A static batch's START over plain devices, decided once per kind of device. Pure.

A START over the whole fleet (scope ALL) asks the engine the same question of every
device of the product. For a plain device (``devices.is_plain``, of one module) the
answer depends only on what the engine can see of it besides its name: online or
not, its module and version, registered or not. So the engine is run once per such
kind, on a prototype device, and its answer, the new task, the task event, whether
the task joins the push queue, the next deadline, is applied to every device of that
kind; only the task id (a hash of the device key) and the
names differ. ``streams.envelope_store`` applies it to the stored bytes
(``otaflow.start_splicer``), and ``tests/unit/test_start_by_kind.py`` checks that the
result is what the engine decides for each device itself.

Whatever the prototype's run does beyond one new task, a task event and at most one
push-queue entry (a cancel, a notification, a change to another field) makes that
kind go through the engine device by device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from otaflow.domain.batches import Batch, BatchScope
from otaflow.domain.deadlines import DeadlineHeap
from otaflow.domain.devices import DeviceState
from otaflow.domain.engine import BatchTaskIds, DeviceEngine, Effects
from otaflow.domain.open_tasks import is_open
from otaflow.domain.tasks import Task

Record = dict[str, Any]

# The prototype's name: '/' and the NUL cannot be in a platform device name.
PROTOTYPE_NAME = "\x00prototype"


@dataclass(frozen=True, slots=True)
class PlainOutcome:
    """What START does to a plain device of one kind. ``task`` None: nothing."""

    task: Task | None = None
    event: Record | None = None
    queued: bool = False
    deadline: int | None = None
    task_open: bool = False  # open_tasks.is_open(task)


UNCHANGED = PlainOutcome()


def applies_to(batch: Batch) -> bool:
    """Only a START over every device of the product: other scopes look at a device's
    region, groups or (dynamic groups) its name."""
    return not batch.is_dynamic and batch.scope is BatchScope.ALL


class PlainStart:
    def __init__(
        self,
        engine: DeviceEngine,
        batch: Batch,
        now: int,
        fx: Effects,
        deadlines: DeadlineHeap | None,
    ) -> None:
        if not applies_to(batch):
            raise ValueError(f"batch {batch.batch_id} is not a static batch over all devices")
        self.engine = engine
        self.batch = batch
        self.now = now
        self.fx = fx
        self.deadlines = deadlines
        self._outcomes: dict[tuple[bool, str, str, bool], PlainOutcome | None] = {}
        self._task_ids = BatchTaskIds(batch.batch_id)
        # The batch's tasks started here, and how many of them are open (open_tasks).
        self.tasks_started = 0
        self.open_started = 0

    def outcome(
        self, online: bool, module: str, version: str, registered: bool
    ) -> PlainOutcome | None:
        """START's outcome for a plain device of this kind; None: ask the engine per device."""
        kind = (online, module, version, registered)
        if kind not in self._outcomes:
            self._outcomes[kind] = self._decide(*kind)
        return self._outcomes[kind]

    def _decide(
        self, online: bool, module: str, version: str, registered: bool
    ) -> PlainOutcome | None:
        def prototype() -> DeviceState:
            return DeviceState(
                self.batch.product_key,
                PROTOTYPE_NAME,
                online=online,
                modules={module: version},
                registered=registered,
            )

        state, before = prototype(), prototype()
        fx = Effects()
        self.engine.on_static_start(state, self.batch, self.now, fx)
        if not state.tasks:
            nothing = not (fx.task_events or fx.queued or fx.notifications or fx.succeeded)
            return UNCHANGED if nothing and state == before else None
        if len(state.tasks) != 1:
            return None
        (task,) = state.tasks
        state.tasks = []
        queued = [entry for entries in fx.queued.values() for entry in entries]
        if (
            state != before  # only the new task may differ
            or len(fx.task_events) != 1
            or fx.notifications
            or fx.succeeded
            or len(queued) > 1
            or (queued and list(fx.queued) != [task.batch_id])
        ):
            return None
        state.tasks = [task]
        return PlainOutcome(
            task=task,
            event=fx.task_events[0][1],
            queued=bool(queued),
            deadline=self.engine.next_deadline(state, self.now),
            task_open=is_open(task),
        )

    def task_id_ascii(self, key: bytes) -> bytes:
        """The id of the task START gives the device whose key is ``key`` in UTF-8 (its
        first match), as ASCII bytes."""
        return self._task_ids.ascii(key, 1)

    def started(self, key: str, outcome: PlainOutcome) -> None:
        """Record the effects the engine would have for this device, but its task event
        and, when ``outcome.queued``, its push-queue entry (the caller writes both from
        the template, in bytes: ``Effects.queued`` would have the entry as
        ``{"task_id", "product_key", "device_name"}``, in the order of the devices)."""
        self.fx.touched.add(key)  # as the engine's task_changed does
        self.tasks_started += 1
        self.open_started += outcome.task_open
        if self.deadlines is not None:
            self.deadlines.note(key, outcome.deadline)
