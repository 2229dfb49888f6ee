"""``ExplainOTADevice`` (otaflow extra): the decision audit of one device, from the API's view.

The view holds what the public topics say: the batch definitions (``otaflow.batches``),
the device's module versions and presence (``ota.device.reports``) and its recent task
events (``ota.task.events``). From them it rebuilds the device's state and asks the
domain's ``explain_device``, which applies the engine's own rules. Two things the
view cannot see are said so: the registry's region and static groups (a REGIONAL or
static-group batch without a task says its scope is decided by the registry), and a
failed task's retry time (the engine's state holds it). The queue position counts the
batch's tasks still queued that the view saw before this one (the rate agent's queue
is FIFO in the order the device partitions queued them; across partitions this is an
estimate).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from otaflow.domain.batches import Batch, BatchScope
from otaflow.domain.devices import DeviceState
from otaflow.domain.explain import Reason, explain_device
from otaflow.domain.tasks import Task, TaskStatus

if TYPE_CHECKING:
    from otaflow.api.views import TaskView


def explain_from_view(view: TaskView, p: Mapping[str, Any], now: int) -> tuple[Any, dict[str, Any]]:
    product_key, device_name = view.device_from(p)
    key = (product_key, device_name)
    with view._lock:
        history = list(view.history.get(key, ()))
        task_ids = set(view.device_tasks.get(key, ()))
        latest = {t: view.jobs[view.task_batch[t]].tasks[t] for t in task_ids}
        batches = [
            Batch.from_record(b) for b in view.batches.values() if b["product_key"] == product_key
        ]
        queue_ahead: dict[str, int] = {}
        for row in latest.values():
            if row.event["status"] != "QUEUED":
                continue
            job = view.jobs[row.event["batch_id"]]
            ahead = 0
            for task_id, other in job.tasks.items():  # in the order the events came
                if task_id == row.event["task_id"]:
                    break
                ahead += other.event["status"] == "QUEUED"
            queue_ahead[row.event["batch_id"]] = ahead
        online = view.online.get(key, False)
        versions = dict(view.versions.get(key, {}))
    state = DeviceState(product_key, device_name, online=online, modules=versions)
    for row in sorted(latest.values(), key=lambda r: (r.created_at, r.event["task_id"])):
        e = row.event
        state.tasks.append(
            Task(
                task_id=e["task_id"],
                batch_id=e["batch_id"],
                module=e["module"],
                dest_version=e["dest_version"],
                status=TaskStatus(e["status"]),
                created_at=row.created_at,
                updated_at=e["event_time"],
                src_version=e["src_version"],
                progress=e["progress"],
                desc=e["desc"] or "",
            )
        )
    answers = explain_device(state, batches, now, history=history, queue_ahead=queue_ahead)
    by_id = {b.batch_id: b for b in batches}
    items = []
    for answer in answers:
        batch = by_id[answer.batch_id]
        if (
            answer.reason is Reason.OUT_OF_SCOPE
            and batch.scope in (BatchScope.REGIONAL, BatchScope.GROUP)
            and not batch.is_dynamic
        ):
            answer.detail = f"the {batch.scope.value} scope is decided by the device registry"
        items.append(answer.to_dict())
    return {"ProductKey": product_key, "DeviceName": device_name, "Explanations": items}, {}
