"""Task lifecycle in the device engine: statuses, pushes, progress, timeouts, retries, commands."""

from __future__ import annotations

import pytest

from otaflow.domain.simulation import (
    DAY,
    HOUR,
    MINUTE,
    Partition,
    dynamic_batch,
    firmware,
    make_batch,
)

T = 1_000_000


def started(**fields: object) -> Partition:
    """A partition with one version-based dynamic batch 'V' (1.0 -> 2.0)."""
    p = Partition()
    p.start(dynamic_batch("V", ["1.0"], at=T, **fields))
    return p


def test_online_device_is_queued_for_a_push_and_the_release_notifies_it() -> None:
    p = started()
    p.version("d1", "1.0", T + 1)
    assert p.tasks("d1") == [("V", "QUEUED")]
    assert [t["device_name"] for _, t in p.push_queue] == ["d1"]
    p.release(T + 2)
    assert p.tasks("d1") == [("V", "NOTIFIED")]
    push = p.pushes("d1")
    assert len(push) == 1 and push[0]["firmware"]["version"] == "2.0"
    assert p.history("d1") == ["QUEUED", "NOTIFIED"]


def test_offline_device_is_not_pushed_until_it_comes_back() -> None:
    p = started()
    p.version("d1", "1.0", T + 1)
    p.offline("d1", T + 2)
    p.release(T + 3)  # released while offline: stays queued, no push
    assert p.tasks("d1") == [("V", "QUEUED")] and p.pushes() == []
    assert not p.state("d1").tasks[0].in_push_queue
    p.online("d1", T + 4)
    assert len(p.push_queue) == 1
    p.release(T + 5)
    assert p.tasks("d1") == [("V", "NOTIFIED")]


def test_static_batch_over_offline_devices_queues_nothing_until_they_speak() -> None:
    p = Partition()
    p.version("d1", "1.0", T)
    p.offline("d1", T + 1)
    p.start(make_batch("S", at=T + 2))
    assert p.tasks("d1") == [("S", "QUEUED")] and not p.push_queue
    p.ask("d1", T + 3)  # asking brings it online and hands the task out at once
    assert p.tasks("d1") == [("S", "NOTIFIED")]
    reply = p.notifications[-1]
    assert reply["kind"] == "PULL_REPLY" and reply["task_id"] is not None


def test_a_device_that_asks_gets_its_pending_task_or_an_empty_reply() -> None:
    p = started(need_push=False)
    p.ask("d0", T + 1)
    assert p.notifications[-1]["task_id"] is None and p.notifications[-1]["reply_to"] == "42"
    p.version("d1", "1.0", T + 1)
    assert not p.push_queue  # no proactive push for this batch
    p.ask("d1", T + 2)
    assert p.tasks("d1") == [("V", "NOTIFIED")]
    p.ask("d1", T + 3)  # asking again while notified: the same task again
    replies = [n for n in p.notifications if n["device_name"] == "d1"]
    assert [r["task_id"] is not None for r in replies] == [True, True]
    assert p.history("d1") == ["QUEUED", "NOTIFIED"]


def test_app_confirmation_holds_the_task_until_confirmed() -> None:
    p = started(need_confirm=True)
    p.version("d1", "1.0", T + 1)
    assert p.tasks("d1") == [("V", "CONFIRM")] and not p.push_queue
    p.ask("d1", T + 2)
    assert p.notifications[-1]["task_id"] is None  # not handed out before confirmation
    p.version("d1", "2.0", T + 3)  # a CONFIRM task is not "succeeded" by a report
    assert p.tasks("d1") == [("V", "CONFIRM")]
    p.version("d1", "1.0", T + 4)
    task_id = p.state("d1").tasks[0].task_id
    p.command("CONFIRM", "d1", T + 5, task_ids=["other"])
    assert p.tasks("d1") == [("V", "CONFIRM")]
    p.command("CONFIRM", "d1", T + 6, task_ids=[task_id])
    assert p.tasks("d1") == [("V", "QUEUED")] and len(p.push_queue) == 1


def test_progress_steps_and_success_by_the_reported_version() -> None:
    p = started()
    p.version("d1", "1.0", T + 1)
    p.release(T + 2)
    for step in (1, 50, 50, 100):
        p.progress("d1", step, T + 3)
    events = [e for e in p.events if e["device_name"] == "d1"]
    assert [(e["status"], e["progress"]) for e in events] == [
        ("QUEUED", 0),
        ("NOTIFIED", 0),
        ("IN_PROGRESS", 1),
        ("IN_PROGRESS", 50),
        ("IN_PROGRESS", 100),
    ]
    assert p.tasks("d1") == [("V", "IN_PROGRESS")]  # 100% is not success yet
    p.version("d1", "2.0", T + 4)
    assert p.tasks("d1") == [("V", "SUCCEEDED")]
    assert p.succeeded["V"] == 1
    assert p.events[-1]["previous_status"] == "IN_PROGRESS"


@pytest.mark.parametrize(
    ("step", "desc", "expected"),
    [
        (-1, None, "update failed"),
        (-2, "http 500", "download failed: http 500"),
        (-3, None, "verification failed"),
        (-4, "bad block", "flashing failed: bad block"),
    ],
)
def test_failure_steps_fail_the_task_with_the_reason(
    step: int, desc: str | None, expected: str
) -> None:
    p = started()
    p.version("d1", "1.0", T + 1)
    p.release(T + 2)
    p.progress("d1", step, T + 3, desc=desc)
    assert p.tasks("d1") == [("V", "FAILED")]
    assert p.events[-1]["desc"] == expected


def test_timeout_counts_from_the_first_progress_and_is_not_reset_by_re_pushes() -> None:
    p = started(timeout_minutes=30, retry_interval_minutes=10, retry_count=5)
    p.version("d1", "1.0", T + 1)
    p.release(T + 2)
    p.tick(T + 60 * MINUTE)  # no progress yet: the timeout has not started
    assert p.tasks("d1") == [("V", "NOTIFIED")]
    first = T + 60 * MINUTE
    p.progress("d1", 5, first)
    for i in range(3):  # flapping connection: offered again (metered) each time it is back
        p.offline("d1", first + (i * 2 + 1) * MINUTE)
        p.online("d1", first + (i * 2 + 2) * MINUTE)
        p.release(first + (i * 2 + 2) * MINUTE)
    assert len(p.pushes("d1")) == 4
    p.progress("d1", 60, first + 20 * MINUTE)
    p.tick(first + 30 * MINUTE - 1)
    assert p.tasks("d1") == [("V", "IN_PROGRESS")]
    p.tick(first + 30 * MINUTE)
    assert p.tasks("d1") == [("V", "FAILED")]
    assert p.events[-1]["desc"] == "timeout"
    p.tick(first + DAY)  # a timeout is never retried, whatever the retry policy
    assert p.tasks("d1") == [("V", "FAILED")]
    assert p.state("d1").tasks[0].retry_at is None


def test_a_late_report_after_the_deadline_finds_the_task_timed_out() -> None:
    p = started(timeout_minutes=10)
    p.version("d1", "1.0", T + 1)
    p.release(T + 2)
    p.progress("d1", 5, T + 3)
    p.version("d1", "2.0", T + 3 + 11 * MINUTE)  # no tick in between: event time decides
    assert p.history("d1")[-1] == "FAILED"
    assert p.state("d1").tasks[0].desc == "timeout"


def test_retries_after_the_interval_up_to_the_count() -> None:
    p = started(retry_interval_minutes=24 * 60, retry_count=2)
    p.version("d1", "1.0", T)
    for attempt in range(3):
        at = T + attempt * 2 * DAY
        p.release(at)
        p.progress("d1", -2, at + 1)
        assert p.tasks("d1") == [("V", "FAILED")]
        p.tick(at + DAY - 1)
        assert p.tasks("d1") == [("V", "FAILED")]  # not before the interval
        p.tick(at + DAY + 1)
    assert p.history("d1") == ["QUEUED"] + ["NOTIFIED", "FAILED", "QUEUED"] * 2 + [
        "NOTIFIED",
        "FAILED",
    ]
    assert len({e["task_id"] for e in p.events}) == 1  # a retry is the same task
    assert p.state("d1").tasks[0].retries_left == 0


def test_retry_immediately_happens_at_the_failure() -> None:
    p = started(retry_interval_minutes=0, retry_count=1)
    p.version("d1", "1.0", T)
    p.release(T + 1)
    p.progress("d1", -1, T + 2)
    assert p.history("d1") == ["QUEUED", "NOTIFIED", "FAILED", "QUEUED"]
    assert len(p.push_queue) == 1  # and it goes back in line for a push


def test_reupgrade_requeues_failed_and_canceled_tasks_only() -> None:
    p = started(retry_interval_minutes=10, retry_count=1)
    p.version("d1", "1.0", T)
    p.release(T + 1)
    p.progress("d1", -3, T + 2)
    task_id = p.state("d1").tasks[0].task_id
    p.command("REUPGRADE", "d1", T + 3, task_ids=[task_id])
    task = p.state("d1").tasks[0]
    assert task.status.value == "QUEUED" and task.retries_left == 1 and task.retry_at is None
    p.command("REUPGRADE", "d1", T + 4, task_ids=[task_id])  # not failed: nothing
    assert p.history("d1")[-2:] == ["FAILED", "QUEUED"]
    p.command("CANCEL", "d1", T + 5, batch_id="V")
    p.command("REUPGRADE", "d1", T + 6, batch_id="V")
    assert p.history("d1")[-2:] == ["CANCELED", "QUEUED"]
    p.release(T + 7)
    p.version("d1", "2.0", T + 8)
    p.command("REUPGRADE", "d1", T + 9, task_ids=[task_id])  # succeeded stays succeeded
    assert p.tasks("d1") == [("V", "SUCCEEDED")]


def test_reupgrade_never_displaces_another_pending_task() -> None:
    p = started()
    p.version("d1", "1.0", T)
    p.release(T + 1)
    p.progress("d1", -1, T + 2)
    p.start(make_batch("S", at=T + 3, fw=firmware("3.0", firmware_id="f3"), overwrite_mode=2))
    assert p.tasks("d1") == [("V", "FAILED"), ("S", "QUEUED")]
    p.command("REUPGRADE", "d1", T + 4, batch_id="V")
    assert p.tasks("d1") == [("V", "FAILED"), ("S", "QUEUED")]


def test_cancel_by_device_cancels_queued_notified_in_progress_not_unconfirmed() -> None:
    p = Partition()
    p.version("d1", "1.0", T)
    p.version("d1", "1.0", T, module="mcu")
    p.start(make_batch("C", at=T + 1, need_confirm=True, multi_module=True))
    p.start(
        make_batch("M", at=T + 1, fw=firmware(module="mcu", firmware_id="fm"), multi_module=True)
    )
    p.start(make_batch("M2", at=T + 2, fw=firmware("9", module="mcu", firmware_id="f9")))
    assert sorted(p.tasks("d1")) == [("C", "CONFIRM"), ("M", "QUEUED")]
    p.command("CANCEL", "d1", T + 3, firmware_id="fm")
    p.command("CANCEL", "d1", T + 3, firmware_id="fw-default-2.0")
    assert sorted(p.tasks("d1")) == [("C", "CONFIRM"), ("M", "CANCELED")]
    assert p.events[-1]["desc"] == "canceled by operator"


def test_cancel_tasks_by_job_only_the_statuses_asked() -> None:
    p = Partition()
    p.start(make_batch("S", at=T, retry_interval_minutes=10, retry_count=1))
    for dn in ("queued", "notified", "progress", "failed"):
        p.version(dn, "1.0", T + 1)
    p.start(make_batch("S", at=T))
    p.start(make_batch("S", at=T))  # a replayed START creates nothing twice
    assert len(p.events) == 4
    p.offline("queued", T + 1)
    p.release(T + 2)  # the offline device stays QUEUED
    p.progress("progress", 10, T + 3)
    p.progress("failed", -1, T + 3)
    control = make_batch("S", at=T)
    p.control("CANCEL_TASKS", control, T + 4, statuses=["NOTIFIED", "QUEUED"])
    assert p.tasks("queued") == [("S", "CANCELED")]
    assert p.tasks("notified") == [("S", "CANCELED")]
    assert p.tasks("progress") == [("S", "IN_PROGRESS")]
    assert p.tasks("failed") == [("S", "FAILED")]
    assert p.state("failed").tasks[0].retry_at is None  # its queued retry went too
    p.tick(T + DAY)
    assert p.tasks("failed") == [("S", "FAILED")]


def test_override_mode_2_cancels_pending_tasks_never_one_in_progress() -> None:
    p = Partition()
    p.start(make_batch("A", at=T))
    for dn in ("confirm", "queued", "notified", "progress"):
        p.version(dn, "1.0", T + 1)
    p.start(make_batch("A", at=T))
    p.release(T + 2)
    p.offline("queued", T + 2)
    p.progress("progress", 5, T + 3)
    p.start(make_batch("B", at=T + 4, fw=firmware("3.0", firmware_id="f3"), overwrite_mode=2))
    assert p.tasks("notified") == [("A", "CANCELED"), ("B", "QUEUED")]
    assert p.tasks("progress") == [("A", "IN_PROGRESS")]
    cancel = [e for e in p.events if e["status"] == "CANCELED"]
    assert all(e["desc"] == "overridden by batch B" for e in cancel)
    # Mode 1 keeps whatever the device already has.
    p.start(make_batch("C", at=T + 5, fw=firmware("4.0", firmware_id="f4")))
    assert p.tasks("notified") == [("A", "CANCELED"), ("B", "QUEUED")]


def test_override_mode_2_cancels_an_unconfirmed_task() -> None:
    p = Partition()
    p.start(make_batch("A", at=T, need_confirm=True))
    p.version("d1", "1.0", T)
    p.start(make_batch("A", at=T, need_confirm=True))
    p.start(make_batch("B", at=T + 1, fw=firmware("3.0", firmware_id="f3"), overwrite_mode=2))
    assert p.tasks("d1") == [("A", "CANCELED"), ("B", "QUEUED")]


def test_multi_module_updates_modules_side_by_side_and_replaces_pending_ones() -> None:
    p = Partition()
    modules = ["m1", "m2", "m3", "m4", "m5", "m6"]
    for module in modules:
        p.version("d1", "1.0", T, module=module)
    for i, module in enumerate(modules):
        fw = firmware("2.0", module=module, firmware_id=f"f-{module}")
        p.start(make_batch(f"B-{module}", at=T + i, fw=fw, multi_module=True))
    statuses = dict(p.tasks("d1"))
    assert len(statuses) == 5 and "B-m6" not in statuses  # at most five modules at once
    p.release(T + 10)
    p.progress("d1", 10, T + 11, module="m1")
    # A new task for m1 cannot replace the one in progress; for m2 it replaces the pending one.
    p.start(
        make_batch(
            "N-m1", at=T + 12, fw=firmware("3", module="m1", firmware_id="n1"), multi_module=True
        )
    )
    p.start(
        make_batch(
            "N-m2", at=T + 12, fw=firmware("3", module="m2", firmware_id="n2"), multi_module=True
        )
    )
    statuses = dict(p.tasks("d1"))
    assert statuses["B-m1"] == "IN_PROGRESS" and "N-m1" not in statuses
    assert statuses["B-m2"] == "CANCELED" and statuses["N-m2"] == "QUEUED"
    # A progress report goes to the module's own task.
    p.progress("d1", -1, T + 13, module="m3")
    assert dict(p.tasks("d1"))["B-m3"] == "FAILED"
    assert dict(p.tasks("d1"))["B-m1"] == "IN_PROGRESS"


def test_deleting_a_device_cancels_its_tasks_and_forgets_it() -> None:
    p = started()
    p.register("d1", T)
    p.version("d1", "1.0", T + 1)
    p.register("d1", T + 2, action="DELETE")
    assert p.history("d1") == ["QUEUED", "CANCELED"]
    assert p.events[-1]["desc"] == "device deleted"
    assert not p.has_device("d1")
    p.register("ghost", T + 3, action="DELETE")  # unknown device: nothing
    assert not p.has_device("ghost")


def test_finished_tasks_are_pruned_but_active_ones_never() -> None:
    p = Partition(keep_finished=2)
    p.start(dynamic_batch("V", ["1.0"], at=T))
    p.version("d1", "1.0", T)
    for i in range(5):
        p.release(T + i * 10 + 1)
        p.progress("d1", -1, T + i * 10 + 2)
        p.version("d1", "1.0", T + i * 10 + 3)
    tasks = p.tasks("d1")
    assert tasks == [("V", "FAILED"), ("V", "FAILED"), ("V", "QUEUED")]
    assert p.state("d1").match_counts["V"] == 6


def test_unknown_devices_ignore_releases_targets_and_commands() -> None:
    p = started()
    p.release(T)
    p.target("V", "nobody", T)
    p.command("CONFIRM", "nobody", T, batch_id="V")
    p.apply(
        "TaskRelease",
        {
            "batch_id": "V",
            "task_id": "x",
            "product_key": "pk",
            "device_name": "nobody",
            "event_time": T,
        },
    )
    assert not p.has_device("nobody") and p.events == []


def test_hourly_retry_before_a_timeout_and_a_24_hour_retry_without_one() -> None:
    p = started(retry_interval_minutes=60, retry_count=5, timeout_minutes=24 * 60)
    p.version("d1", "1.0", T)
    p.release(T + 1)
    p.progress("d1", -4, T + 2)
    p.tick(T + 2 + HOUR)
    assert p.history("d1")[-1] == "QUEUED"


# -- issue 12: retries run inside the timeout, never after it ----------------------------------


def test_a_retry_does_not_restart_the_timeout() -> None:
    p = started(timeout_minutes=30, retry_interval_minutes=10, retry_count=5)
    p.version("d1", "1.0", T)
    p.release(T + 1)
    first = T + 2
    p.progress("d1", 5, first)  # the timeout starts here, once
    p.progress("d1", -2, first + 5 * MINUTE)
    p.tick(first + 15 * MINUTE)  # retried after 10 minutes
    assert p.tasks("d1") == [("V", "QUEUED")]
    p.release(first + 16 * MINUTE)
    p.progress("d1", 10, first + 17 * MINUTE)  # the retry's first progress report
    p.tick(first + 30 * MINUTE - 1)
    assert p.tasks("d1") == [("V", "IN_PROGRESS")]
    p.tick(first + 30 * MINUTE)  # 30 minutes after the FIRST progress, not after the retry's
    assert p.tasks("d1") == [("V", "FAILED")]
    assert p.events[-1]["desc"] == "timeout"
    assert p.state("d1").tasks[0].retry_at is None


def test_a_retried_task_still_waiting_in_the_queue_times_out() -> None:
    p = started(timeout_minutes=30, retry_interval_minutes=10, retry_count=5)
    p.version("d1", "1.0", T)
    p.release(T + 1)
    p.progress("d1", -1, T + 2)  # the failure is the first progress report
    p.tick(T + 2 + 10 * MINUTE)
    assert p.tasks("d1") == [("V", "QUEUED")]  # retried, never released again
    p.tick(T + 2 + 30 * MINUTE)
    assert p.tasks("d1") == [("V", "FAILED")]
    assert p.events[-1]["desc"] == "timeout"


def test_no_retry_is_scheduled_at_or_after_the_timeout() -> None:
    p = started(timeout_minutes=30, retry_interval_minutes=10, retry_count=5)
    p.version("d1", "1.0", T)
    p.release(T + 1)
    first = T + 2
    p.progress("d1", 5, first)
    p.progress("d1", -4, first + 20 * MINUTE)  # a retry would come exactly at the timeout
    task = p.state("d1").tasks[0]
    assert task.status.value == "FAILED" and task.retry_at is None
    p.tick(first + DAY)
    assert p.tasks("d1") == [("V", "FAILED")]
    assert p.history("d1")[-1] == "FAILED" and p.events[-1]["desc"] == "flashing failed"
    assert task.retries_left == 5  # no retry was spent


def test_a_retry_first_seen_after_the_timeout_is_dropped() -> None:
    """Event time decides: the first record after the failure comes after the timeout."""
    p = started(timeout_minutes=30, retry_interval_minutes=10, retry_count=5)
    p.version("d1", "1.0", T)
    p.release(T + 1)
    p.progress("d1", 5, T + 2)
    p.progress("d1", -1, T + 3)
    assert p.state("d1").tasks[0].retry_at == T + 3 + 10 * MINUTE
    p.tick(T + 2 + 45 * MINUTE)
    assert p.tasks("d1") == [("V", "FAILED")]
    assert p.history("d1") == ["QUEUED", "NOTIFIED", "IN_PROGRESS", "FAILED"]


# -- issue 12: "pushed" counts offers actually sent ---------------------------------------------


def test_releases_that_send_nothing_are_reported_back_as_unsent() -> None:
    p = started()
    for name in ("sent", "offline", "canceled", "pulled", "deleted"):
        p.version(name, "1.0", T)
    assert len(p.push_queue) == 5
    p.offline("offline", T + 1)
    p.command("CANCEL", "canceled", T + 1, batch_id="V")
    p.ask("pulled", T + 1)  # handed out on asking: the release finds it NOTIFIED
    p.register("deleted", T + 1, action="DELETE")
    assert p.release(T + 2) == 5
    assert [n["device_name"] for n in p.pushes()] == ["sent"]
    # One offer went out; four releases sent nothing, each reported with its release time.
    assert p.unsent == {("V", T + 2): 4}
    # The offline device's task waits for it and is released (and counted) again later.
    p.online("offline", T + 3)
    assert p.release(T + 4) == 1
    assert p.unsent == {("V", T + 2): 4} and len(p.pushes("offline")) == 1
