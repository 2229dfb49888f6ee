"""ListOTATaskByJob shows each task's own timeout, not the batch's current one."""

from __future__ import annotations

from otaflow.api.views import TaskView
from otaflow.codec import codec
from otaflow.domain.simulation import Partition, dynamic_batch

T = 1_000_000


def test_each_task_shows_the_timeout_it_was_created_with() -> None:
    p = Partition()
    batch = dynamic_batch("V", ["1.0"], at=T, timeout_minutes=60)
    p.start(batch)
    p.version("old", "1.0", T + 1)  # created under a 60-minute timeout
    # UpdateOTAJob TimeoutInMinutes=0: tasks created from now on have none.
    cleared = batch.with_changes(timeout_minutes=None, updated_at=T + 2)
    p.control("UPDATE", cleared, T + 2)
    p.version("new", "1.0", T + 3)
    assert [t.timeout_minutes for t in p.state("old").tasks] == [60]
    assert [t.timeout_minutes for t in p.state("new").tasks] == [None]

    view = TaskView()
    view.apply_batch(cleared.to_record())
    for event in p.events:
        # Through the topic's bytes, as the view's consumer reads them.
        view.apply_task_event(codec().decode_as("TaskEvent", codec().encode("TaskEvent", event)))
    data, _ = view.answer("ListOTATaskByJob", {"JobId": "V"})
    shown = {row["DeviceName"]: row.get("Timeout") for row in data["SimpleOTATaskInfo"]}
    assert shown == {"old": "60", "new": None}


def test_an_event_written_before_events_carried_the_timeout_shows_the_batchs() -> None:
    p = Partition()
    batch = dynamic_batch("V", ["1.0"], at=T, timeout_minutes=30)
    p.start(batch)
    p.version("d1", "1.0", T + 1)
    (event,) = p.events
    del event["timeout_minutes"]  # an older producer: the schema's default (-1) applies
    decoded = codec().decode_as("TaskEvent", codec().encode("TaskEvent", event))
    assert decoded["timeout_minutes"] == -1
    view = TaskView()
    view.apply_batch(batch.to_record())
    view.apply_task_event(decoded)
    data, _ = view.answer("ListOTATaskByJob", {"JobId": "V"})
    assert data["SimpleOTATaskInfo"][0]["Timeout"] == "30"
