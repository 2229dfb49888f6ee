"""What otaflow knows about one device: its module versions, presence and tasks."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from otaflow.device_keys import device_key
from otaflow.domain.tasks import ACTIVE, Task, TaskStatus


@dataclass(slots=True)
class DeviceState:
    product_key: str
    device_name: str
    online: bool = False
    modules: dict[str, str] = field(default_factory=dict)
    tasks: list[Task] = field(default_factory=list)
    match_counts: dict[str, int] = field(default_factory=dict)
    last_seen: int = 0
    registered: bool = False
    province: str | None = None
    city: str | None = None
    groups: list[str] = field(default_factory=list)
    dynamic_groups: list[str] = field(default_factory=list)
    # Group-based dynamic batches that matched the device since it last joined their
    # group; leaving the group clears them, so a device that rejoins is matched again.
    group_matches: list[str] = field(default_factory=list)
    # The table key, kept: it is asked for several times per report.
    key: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.key = device_key(self.product_key, self.device_name)

    def task(self, task_id: str) -> Task | None:
        for task in self.tasks:
            if task.task_id == task_id:
                return task
        return None

    def active_tasks(self, module: str | None = None) -> Iterator[Task]:
        for task in self.tasks:
            if task.status in ACTIVE and (module is None or task.module == module):
                yield task

    def active_task_for(self, batch_id: str) -> Task | None:
        for task in self.tasks:
            if task.batch_id == batch_id and task.status in ACTIVE:
                return task
        return None

    def current_task(self, module: str, statuses: frozenset[TaskStatus]) -> Task | None:
        """The device's task for ``module`` in one of ``statuses`` (most recent first)."""
        for task in reversed(self.tasks):
            if task.module == module and task.status in statuses:
                return task
        return None

    def has_task_of(self, batch_id: str) -> bool:
        return any(task.batch_id == batch_id for task in self.tasks)

    def prune(self, keep_final: int) -> None:
        """Drop the oldest finished tasks beyond ``keep_final`` so state stays small.

        Their history lives on the task-events topic; match counts stay.
        """
        if len(self.tasks) <= keep_final:
            return  # nothing to drop (checked first: this runs for every new task)
        final = [t for t in self.tasks if t.status not in ACTIVE]
        if len(final) <= keep_final:
            return
        drop = {id(t) for t in final[: len(final) - keep_final]}
        self.tasks = [t for t in self.tasks if id(t) not in drop]

    def to_record(self) -> dict[str, Any]:
        return {
            "product_key": self.product_key,
            "device_name": self.device_name,
            "online": self.online,
            "modules": self.modules,
            "tasks": [t.to_record() for t in self.tasks],
            "match_counts": self.match_counts,
            "last_seen": self.last_seen,
            "registered": self.registered,
            "province": self.province,
            "city": self.city,
            "groups": self.groups,
            "dynamic_groups": self.dynamic_groups,
            "group_matches": self.group_matches,
        }

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> DeviceState:
        return cls(
            product_key=rec["product_key"],
            device_name=rec["device_name"],
            online=rec["online"],
            modules=rec["modules"],
            tasks=[Task.from_record(t) for t in rec["tasks"]],
            match_counts=rec["match_counts"],
            last_seen=rec["last_seen"],
            registered=rec["registered"],
            province=rec["province"],
            city=rec["city"],
            groups=rec["groups"],
            dynamic_groups=rec["dynamic_groups"],
            group_matches=rec.get("group_matches", []),
        )


# -- the plain device ---------------------------------------------------------------------
# Most of a fleet: a device of one module (or none yet) with no match count, region or
# group, and no task. This is the one definition: the state encoder's compact layout
# (``otaflow.device_avro``; it also writes a plain device's tasks), the byte paths that
# read that layout back (``device_avro.plain_layout``: a plain device of one module with
# short strings) and splice reports and START outcomes into it (``otaflow.plain_reports``,
# ``otaflow.start_splicer``), and the engine's version-report shortcut
# (``DeviceEngine.on_report``) all ask these two functions or read the bytes they say.
# ``tests/unit/test_plain_devices.py`` checks the byte reader against them.


def plain_but_tasks(state: DeviceState) -> bool:
    """At most one module; no match count, region or group (tasks or not)."""
    return (
        len(state.modules) <= 1
        and not state.match_counts
        and state.province is None
        and state.city is None
        and not state.groups
        and not state.dynamic_groups
        and not state.group_matches
    )


def is_plain(state: DeviceState) -> bool:
    """A plain device: ``plain_but_tasks`` and no task."""
    return not state.tasks and plain_but_tasks(state)


MINUTE_MS = 60_000


def timeout_deadline(task: Task) -> int | None:
    """When the task's timeout expires: its first progress report plus the timeout.

    The first progress report of the task's first attempt: a retry keeps it (console doc:
    "the timer starts when the device first reports its update progress"), so retries
    run inside one timeout, never a fresh one each.
    """
    if task.timeout_minutes is None or task.first_progress_at is None:
        return None
    return task.first_progress_at + task.timeout_minutes * MINUTE_MS


def task_timer(task: Task) -> int | None:
    """When this task's own timer fires: its timeout, or its retry.

    A retried task waiting in the queue (QUEUED with a first progress report) times out
    too: the update has not completed within the period, whatever attempt it is on.
    """
    if task.status is TaskStatus.FAILED and task.retry_at is not None:
        return task.retry_at
    if task.status in (TaskStatus.QUEUED, TaskStatus.NOTIFIED, TaskStatus.IN_PROGRESS):
        return timeout_deadline(task)
    return None
