"""ListOTATaskByJob pages from the view's indexes; they must agree with a full scan."""

from __future__ import annotations

import random
from typing import Any

from otaflow.api.views import STATUSES, TaskView


def event(task: int, status: str, at: int) -> dict[str, Any]:
    return {
        "batch_id": "job1",
        "task_id": f"t{task:05d}",
        "product_key": "pk1",
        "device_name": f"dev-{task % 700:04d}",
        "module": "default",
        "src_version": "1.0",
        "dest_version": "2.0",
        "status": status,
        "progress": 0,
        "desc": None,
        "event_time": at,
    }


def test_pages_by_status_and_name_match_a_scan() -> None:
    rng = random.Random(16)
    view = TaskView()
    latest: dict[str, dict[str, Any]] = {}
    created: dict[str, int] = {}
    for step in range(6000):
        task = rng.randrange(2000)
        ev = event(task, rng.choice(STATUSES), rng.randrange(10_000) + step)
        view.apply_task_event(ev)
        created.setdefault(ev["task_id"], ev["event_time"])
        latest[ev["task_id"]] = ev
    for status in (None, *STATUSES):
        for names in (None, ["dev-0001", "dev-0002", "dev-0699"]):
            expected = sorted(
                (created[t], t)
                for t, e in latest.items()
                if (status is None or e["status"] == status)
                and (names is None or e["device_name"] in names)
            )
            params: dict[str, Any] = {"JobId": "job1", "PageSize": "50", "CurrentPage": "3"}
            if status:
                params["TaskStatus"] = status
            if names:
                params["DeviceNames"] = names
            data, top = view.answer("ListOTATaskByJob", params)
            assert top["Total"] == len(expected)
            got = [i["TaskId"] for i in data["SimpleOTATaskInfo"]]
            assert got == [t for _, t in expected[100:150]]
            assert all(
                status is None or i["TaskStatus"] == status for i in data["SimpleOTATaskInfo"]
            )
