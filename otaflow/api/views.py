"""The API's read side for tasks: a view of ``ota.task.events`` kept by the API process.

One background consumer reads, from the beginning:

* ``ota.task.events`` — per batch, the latest status of each task, with counts per
  status and per source version (QueryOTAJob's ``Statistics``);
* ``otaflow.batches`` — each batch's firmware (task rows carry ``FirmwareId``);
* ``ota.device.reports`` — each device's latest module versions
  (ListOTAModuleVersionsByDevice, QueryDeviceDetail's ``FirmwareVersion``).

Answers are **eventually consistent** for tasks: a task created by a write answered
a moment ago shows up once the device engine has written its event and this consumer
has read it (normally well under a second). Batches follow their writes: the command
agent has the batch definition acknowledged by Kafka before it answers the create, and
a read that names a batch this view has not seen first catches up with the batch
topic (``TaskViewConsumer.catch_up``), so a batch is never ``JobNotExist`` right after
its create (it has zero tasks until the engine makes them). Everything here is rebuilt
from Kafka at start; nothing lives only in memory.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sortedcontainers import SortedList

from otaflow import topics
from otaflow.codec import DecodeError, codec
from otaflow.config import Settings
from otaflow.control.common import drop_none, opt_str, page, str_list, utc
from otaflow.control.errors import ApiError, invalid, missing
from otaflow.control.registry import iot_id
from otaflow.control.rules import job_status
from otaflow.kafka_security import kafka_client_config

VIEW_NOT_READY = "ServiceUnavailable.ViewNotReady"
UNFINISHED = ("CONFIRM", "QUEUED", "NOTIFIED", "IN_PROGRESS")
STATUSES = ("CONFIRM", "QUEUED", "NOTIFIED", "IN_PROGRESS", "SUCCEEDED", "FAILED", "CANCELED")
STAT_NAMES = {
    "CONFIRM": "Confirm",
    "QUEUED": "Queued",
    "NOTIFIED": "Notified",
    "IN_PROGRESS": "InProgress",
    "SUCCEEDED": "Succeeded",
    "FAILED": "Failed",
    "CANCELED": "Canceled",
}
#: Operations the view answers (the others go through the command agent).
VIEW_ACTIONS = frozenset(
    {
        "ListOTATaskByJob",
        "ListOTAUnfinishedTaskByDevice",
        "ListOTAJobByDevice",
        "ListOTAModuleVersionsByDevice",
        "ExplainOTADevice",  # otaflow extra (otaflow.api.explain_view)
    }
)
# Task events kept per device for ExplainOTADevice's evidence (older ones: the topic).
HISTORY_PER_DEVICE = 32


@dataclass
class TaskRow:
    event: dict[str, Any]
    created_at: int


#: A task's place in ListOTATaskByJob's order: creation time, then task id.
TaskOrder = tuple[int, str]


@dataclass
class BatchTasks:
    """One batch's tasks, with the indexes ListOTATaskByJob pages through: all tasks and
    the tasks of each status in creation order (a page of a 100,000-task batch costs
    O(log n + page), not a scan and a sort), and the task ids of each device name."""

    tasks: dict[str, TaskRow] = field(default_factory=dict)
    by_status: Counter[str] = field(default_factory=Counter)
    by_src: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    order: SortedList = field(default_factory=SortedList)
    order_by_status: dict[str, SortedList] = field(default_factory=lambda: defaultdict(SortedList))
    by_device_name: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    # NOTIFIED events seen: the batch's pushes so far (otaflow.metrics).
    pushes: int = 0


class TaskView:
    """Thread-safe state built from the topics; ``apply_*`` are public for unit tests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # (records read, records to read) while catching up after a start; None once
        # caught up. Views built by hand (unit tests) are ready at once.
        self.catching_up: tuple[int, int] | None = None
        self.batches: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, BatchTasks] = defaultdict(BatchTasks)
        self.task_batch: dict[str, str] = {}
        self.device_tasks: dict[tuple[str, str], set[str]] = defaultdict(set)
        self.versions: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
        self.iot_ids: dict[str, tuple[str, str]] = {}
        # The other way round: a task page shows each device's IotId, and deriving one
        # (a SHA-256 and 20 base-62 digits) costs more than the rest of its row.
        self.device_iot_ids: dict[tuple[str, str], str] = {}
        # ExplainOTADevice: each device's recent task events and whether it is online.
        self.history: dict[tuple[str, str], deque[dict[str, Any]]] = {}
        self.online: dict[tuple[str, str], bool] = {}
        # Reads every batch written so far into the view (set by TaskViewConsumer).
        self.catch_up: Callable[[], bool] | None = None

    def answers_at_once(self, action: str, p: Mapping[str, Any]) -> bool:
        """Whether ``answer`` needs no wait: every view read is an index lookup, but a
        task list of a batch the view has not seen first catches up with the batch topic
        (``knows_batch``), which waits on Kafka (milliseconds, seconds if it is away)."""
        if action != "ListOTATaskByJob":
            return True
        job_id = p.get("JobId")
        return isinstance(job_id, str) and self._has_batch(job_id)

    def _has_batch(self, batch_id: str) -> bool:
        with self._lock:
            return batch_id in self.batches or batch_id in self.jobs

    def knows_batch(self, batch_id: str) -> bool:
        """Has the view seen the batch? Unknown: catch up with the batch topic first."""
        if self._has_batch(batch_id):
            return True
        if self.catch_up is not None:
            self.catch_up()
        return self._has_batch(batch_id)

    # -- feeding ----------------------------------------------------------------------

    def apply_task_event(self, event: dict[str, Any]) -> None:
        with self._lock:
            batch_id = event["batch_id"]
            job = self.jobs[batch_id]
            task_id = event["task_id"]
            src = event["src_version"] or ""
            old = job.tasks.get(task_id)
            status = event["status"]
            if old is not None:
                job.by_status[old.event["status"]] -= 1
                job.by_src[old.event["src_version"] or ""][old.event["status"]] -= 1
                created = old.created_at
                if old.event["status"] != status:
                    job.order_by_status[old.event["status"]].discard((created, task_id))
                    job.order_by_status[status].add((created, task_id))
            else:
                created = event["event_time"]
                job.order.add((created, task_id))
                job.order_by_status[status].add((created, task_id))
                job.by_device_name[event["device_name"]].add(task_id)
            job.tasks[task_id] = TaskRow(event, created)
            job.by_status[status] += 1
            job.by_src[src][status] += 1
            if status == "NOTIFIED":
                job.pushes += 1
            self.task_batch[task_id] = batch_id
            key = (event["product_key"], event["device_name"])
            self.device_tasks[key].add(task_id)
            self.history.setdefault(key, deque(maxlen=HISTORY_PER_DEVICE)).append(event)
            self._remember_device(*key)

    def apply_batch(self, batch: dict[str, Any]) -> None:
        with self._lock:
            self.batches[batch["batch_id"]] = batch

    def apply_report(self, report: dict[str, Any]) -> None:
        if report["kind"] in ("OFFLINE", "ONLINE", "VERSION"):
            with self._lock:
                key = (report["product_key"], report["device_name"])
                self.online[key] = report["kind"] != "OFFLINE"
        if report["kind"] != "VERSION" or report["version"] is None:
            return
        with self._lock:
            key = (report["product_key"], report["device_name"])
            self.versions[key][report["module"] or "default"] = report["version"]
            self._remember_device(*key)

    def _remember_device(self, product_key: str, device_name: str) -> None:
        key = (product_key, device_name)
        if key in self.device_iot_ids or len(self.iot_ids) >= 5_000_000:
            return
        derived = iot_id(product_key, device_name)
        self.iot_ids.setdefault(derived, key)
        self.device_iot_ids[key] = derived

    def _iot_id(self, product_key: str, device_name: str) -> str:
        known = self.device_iot_ids.get((product_key, device_name))
        return known if known is not None else iot_id(product_key, device_name)

    # -- lookups used by the server -----------------------------------------------------

    def check_ready(self) -> None:
        """Refuse (503, ``ServiceUnavailable.ViewNotReady``) while the view has not yet
        read what its topics held when the API started: until then totals and task
        lists would be partial, which looks like data loss to the caller."""
        progress = self.catching_up
        if progress is not None:
            done, total = progress
            raise ApiError(
                VIEW_NOT_READY,
                "The task view is still reading the task events after a start "
                f"({done:,} of {total:,} records); retry in a few seconds.",
                503,
            )

    def task_ref(self, task_id: str) -> str:
        """``pk/dn/batch`` of a task, or '' when the view has not seen it."""
        with self._lock:
            batch_id = self.task_batch.get(task_id)
            if batch_id is None:
                return ""
            event = self.jobs[batch_id].tasks[task_id].event
            return f"{event['product_key']}/{event['device_name']}/{batch_id}"

    def statistics(self, batch_id: str) -> dict[str, Any]:
        with self._lock:
            job = self.jobs.get(batch_id)
            counts = Counter(job.by_status) if job else Counter()
            per_src = {k: Counter(v) for k, v in job.by_src.items()} if job else {}

        def shape(c: Counter[str]) -> dict[str, int]:
            out = {"Total": sum(c[s] for s in STATUSES)}
            out.update({STAT_NAMES[s]: c[s] for s in STATUSES})
            return out

        return {
            **shape(counts),
            "SrcVersions": [
                {"SrcVersion": src, **shape(c)}
                for src, c in sorted(per_src.items())
                if sum(c.values()) > 0
            ],
        }

    def module_versions(self, product_key: str, device_name: str) -> dict[str, str]:
        with self._lock:
            return dict(self.versions.get((product_key, device_name), {}))

    def device_from(self, p: Mapping[str, Any]) -> tuple[str, str]:
        found = opt_str(p, "IotId")
        if found:
            with self._lock:
                known = self.iot_ids.get(found)
            if known is None:
                raise ApiError("iot.device.DeviceNotExist", "The specified device does not exist.")
            return known
        product_key, device_name = opt_str(p, "ProductKey"), opt_str(p, "DeviceName")
        if not product_key:
            raise missing("ProductKey")
        if not device_name:
            raise missing("DeviceName")
        return str(product_key), str(device_name)

    # -- answers ----------------------------------------------------------------------

    def answer(self, action: str, p: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        """(Data, other top-level fields) of a view operation; raises ApiError."""
        handler = getattr(self, f"_{action}")
        result: tuple[Any, dict[str, Any]] = handler(p)
        return result

    def _task_info(
        self, row: TaskRow, module: bool, batch: dict[str, Any] | None
    ) -> dict[str, Any]:
        # Built key by key, leaving out what is None (as drop_none would): a page of 100
        # rows is most of a list call's cost, so no second pass over each row, and the
        # caller looks the batch up (``batch``: the row's, None if unknown) once a page.
        e = row.event
        product_key, device_name = e["product_key"], e["device_name"]
        info: dict[str, Any] = {"TaskId": e["task_id"], "JobId": e["batch_id"]}
        if batch:
            info["FirmwareId"] = batch["firmware"]["firmware_id"]
        info["ProductKey"] = product_key
        info["DeviceName"] = device_name
        info["IotId"] = self._iot_id(product_key, device_name)
        if (src := e["src_version"]) is not None:
            info["SrcVersion"] = src
        if (dest := e["dest_version"]) is not None:
            info["DestVersion"] = dest
        info["TaskStatus"] = e["status"]
        info["UtcCreate"] = utc(row.created_at)
        info["UtcModified"] = utc(e["event_time"])
        if module:
            if e["module"] is not None:
                info["ModuleName"] = e["module"]
            return info
        info["Progress"] = str(e["progress"])
        if e["desc"]:
            info["TaskDesc"] = e["desc"]
        # The task's own timeout (a batch's change applies to new tasks only); an
        # event written before events carried it (-1) shows the batch's.
        own = e.get("timeout_minutes", -1)
        timeout = (own or None) if own >= 0 else (batch["timeout_minutes"] if batch else None)
        if timeout is not None:
            info["Timeout"] = str(timeout)
        return info

    def _ListOTATaskByJob(self, p: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        job_id = opt_str(p, "JobId")
        if not job_id:
            raise missing("JobId")
        paging = page(p, 100)
        if paging.current * paging.size > 100_000:
            raise invalid("CurrentPage", "CurrentPage x PageSize must not exceed 100,000")
        status = opt_str(p, "TaskStatus")
        if status is not None and status not in STATUSES:
            raise invalid("TaskStatus", " | ".join(STATUSES))
        names = set(str_list(p, "DeviceNames"))
        if not self.knows_batch(job_id):
            raise ApiError("iot.ota.JobNotExist", "The specified update batch does not exist.")
        with self._lock:
            if job_id not in self.batches and job_id not in self.jobs:
                raise ApiError("iot.ota.JobNotExist", "The specified update batch does not exist.")
            job = self.jobs.get(job_id) or BatchTasks()
            order: Sequence[TaskOrder]
            if names:  # a few devices: their tasks only
                picked = [
                    (job.tasks[t].created_at, t)
                    for name in names
                    for t in job.by_device_name.get(name, ())
                    if status is None or job.tasks[t].event["status"] == status
                ]
                order = sorted(picked)
            elif status is None:
                order = job.order
            else:
                order = job.order_by_status.get(status) or []
            start = (paging.current - 1) * paging.size
            page_rows = [job.tasks[t] for _, t in order[start : start + paging.size]]
            batch = self.batches.get(job_id)
            infos = [self._task_info(r, False, batch) for r in page_rows]
            total = len(order)
        return {"SimpleOTATaskInfo": infos}, paging.top(total)

    def _ListOTAUnfinishedTaskByDevice(self, p: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        product_key, device_name = self.device_from(p)
        wanted = set(str_list(p, "TaskStatusList"))
        single = opt_str(p, "TaskStatus")
        if single:
            wanted.add(single)
        for status in wanted:
            if status not in UNFINISHED:
                raise invalid("TaskStatus", " | ".join(UNFINISHED))
        wanted = wanted or set(UNFINISHED)
        module = opt_str(p, "ModuleName")
        with self._lock:
            rows = []
            for task_id in self.device_tasks.get((product_key, device_name), ()):
                row = self.jobs[self.task_batch[task_id]].tasks[task_id]
                if row.event["status"] in wanted and (
                    module is None or row.event["module"] == module
                ):
                    rows.append(row)
            rows.sort(key=lambda r: (r.created_at, r.event["task_id"]))
            batches = self.batches
            infos = [self._task_info(r, True, batches.get(r.event["batch_id"])) for r in rows]
        return {"SimpleOTATaskInfo": infos}, {}

    def _ListOTAJobByDevice(self, p: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        firmware_id = opt_str(p, "FirmwareId")
        if not firmware_id:
            raise missing("FirmwareId")
        product_key, device_name = self.device_from(p)
        paging = page(p, 100)
        with self._lock:
            batch_ids = {
                self.task_batch[t] for t in self.device_tasks.get((product_key, device_name), ())
            }
            batches = [
                self.batches[b]
                for b in batch_ids
                if b in self.batches and self.batches[b]["firmware"]["firmware_id"] == firmware_id
            ]
        batches.sort(key=lambda b: (-b["created_at"], b["batch_id"]))
        now = int(time.time() * 1000)
        rows = [
            drop_none(
                {
                    "JobId": b["batch_id"],
                    "FirmwareId": firmware_id,
                    "ProductKey": b["product_key"],
                    # As QueryOTAJob says it: a schedule moves the status on.
                    "JobStatus": job_status(b, now),
                    "JobType": b.get("job_type") or "UPGRADE_FIRMWARE",
                    "SelectionType": b["kind"],
                    "TargetSelection": {
                        "TARGETED": "SPECIFIC",
                        "PHASED": "GRAY",
                        "REGIONAL": "REGION",
                    }.get(b["scope"], b["scope"]),
                    "Tags": {"OtaTagDTO": [{"Key": k, "Value": v} for k, v in b["tags"].items()]},
                    "UtcCreate": utc(b["created_at"]),
                    "UtcModified": utc(b["updated_at"]),
                    "UtcStartTime": utc(b["schedule_start"] or b["created_at"]),
                }
            )
            for b in paging.slice(batches)
        ]
        return {"SimpleOTAJobInfo": rows}, paging.top(len(batches))

    def _ExplainOTADevice(self, p: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        from otaflow.api.explain_view import explain_from_view

        return explain_from_view(self, p, int(time.time() * 1000))

    def _ListOTAModuleVersionsByDevice(self, p: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        product_key, device_name = self.device_from(p)
        paging = page(p, 200)
        versions = sorted(self.module_versions(product_key, device_name).items())
        rows = [
            {
                "ProductKey": product_key,
                "DeviceName": device_name,
                "IotId": iot_id(product_key, device_name),
                "ModuleName": module,
                "ModuleVersion": version,
            }
            for module, version in paging.slice(versions)
        ]
        return {"SimpleOTAModuleInfo": rows}, paging.top(len(versions))


class TaskViewConsumer:
    """Feeds a ``TaskView`` from Kafka in a daemon thread."""

    def __init__(self, settings: Settings, view: TaskView | None = None) -> None:
        from confluent_kafka import Consumer, TopicPartition

        self.view = view or TaskView()
        self.codec = codec()
        self.consumer = Consumer(
            {
                **kafka_client_config(settings.kafka_bootstrap),
                "group.id": f"{settings.app_id}-api-view-{uuid.uuid4()}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 20,
            }
        )
        assignments = []
        for spec in (topics.TASK_EVENTS, topics.BATCHES, topics.DEVICE_REPORTS):
            name = spec.full_name(settings)
            for partition in range(spec.partition_count(settings)):
                assignments.append(TopicPartition(name, partition, 0))
        # Where each partition ended when we started: the view answers only once it
        # has read that far (a restart must not answer 0, then 71,137, ... of 100,000).
        self._unread_at_start: dict[tuple[str, int], int] = {}
        for tp in assignments:
            low, high = self._offsets_of(tp)
            if high > low:
                self._unread_at_start[(tp.topic, tp.partition)] = high
        self._to_read = sum(self._unread_at_start.values())
        self._read = 0
        if self._unread_at_start:
            self.view.catching_up = (0, self._to_read)
        self.consumer.assign(assignments)
        self._names = {
            topics.TASK_EVENTS.full_name(settings): self.view.apply_task_event,
            topics.BATCHES.full_name(settings): self.view.apply_batch,
            topics.DEVICE_REPORTS.full_name(settings): self.view.apply_report,
        }
        self._batch_partitions = [
            TopicPartition(topics.BATCHES.full_name(settings), partition)
            for partition in range(topics.BATCHES.partition_count(settings))
        ]
        # Next offset to read per (topic, partition), and a condition to wait on it.
        self._positions: dict[tuple[str, int], int] = {}
        self._moved = threading.Condition()
        # Watermark queries come from the API's thread: a consumer of their own (no group).
        self._watermarks = Consumer(
            {"bootstrap.servers": settings.kafka_bootstrap, "group.id": "otaflow-api-watermarks"}
        )
        self.view.catch_up = self.catch_up
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="task-view", daemon=True)
        self._thread.start()

    def catch_up(self, timeout: float = 3.0) -> bool:
        """Wait until every batch written before this call is in the view (False: timed out).

        A read that names an unknown batch calls it: the batch may have been created a
        moment ago and not read yet. It blocks the caller for a few milliseconds.
        """
        deadline = time.monotonic() + timeout
        ends = {}
        for tp in self._batch_partitions:
            try:
                _, high = self._watermarks.get_watermark_offsets(tp, timeout=timeout, cached=False)
            except Exception:  # the broker is away: answer from what the view has
                return False
            ends[(tp.topic, tp.partition)] = high
        with self._moved:
            while any(self._positions.get(key, 0) < end for key, end in ends.items()):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._moved.wait(left)
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            messages = self.consumer.consume(500, 0.05)
            for msg in messages:
                if msg.error() is not None or msg.value() is None:
                    continue
                apply = self._names.get(msg.topic() or "")
                if apply is None:
                    continue
                try:
                    apply(self.codec.decode(msg.value() or b"")[1])
                except (DecodeError, KeyError, TypeError):
                    continue  # not ours to judge: the device agent dead-letters bad input
            if messages:
                with self._moved:
                    for msg in messages:
                        if msg.error() is None:
                            key = (msg.topic() or "", msg.partition() or 0)
                            self._positions[key] = (msg.offset() or 0) + 1
                    self._moved.notify_all()
            if self._unread_at_start:
                self._caught_up(len(messages))

    def _offsets_of(self, tp: Any) -> tuple[int, int]:
        from confluent_kafka import KafkaException

        for attempt in range(50):
            try:
                low, high = self.consumer.get_watermark_offsets(tp, timeout=10)
                return int(low), int(high)
            except KafkaException:
                if attempt == 49:
                    raise
                time.sleep(0.2)  # a just-created topic has no leader for a moment
        raise AssertionError("unreachable")

    def _caught_up(self, just_read: int) -> None:
        from confluent_kafka import TopicPartition

        self._read += just_read
        # The consumer's position (not the last offset seen): it moves past
        # transaction markers and compacted gaps too.
        positions = self.consumer.position([TopicPartition(t, p) for t, p in self._unread_at_start])
        for tp in positions:
            if tp.offset >= self._unread_at_start[(tp.topic, tp.partition)]:
                del self._unread_at_start[(tp.topic, tp.partition)]
        if self._unread_at_start:
            self.view.catching_up = (min(self._read, self._to_read), self._to_read)
        else:
            self.view.catching_up = None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.consumer.close()
        self._watermarks.close()
