"""The task lifecycle on real Kafka: override, multi-module, confirmation, and days of
event time (a retry after 24 hours, a timeout, a 7-day schedule) in seconds of wall time."""

from __future__ import annotations

import pytest

from otaflow.domain.simulation import DAY, HOUR, MINUTE, dynamic_batch, firmware, make_batch
from tests.integration.conftest import Otaflow
from tests.integration.engine_support import (
    FAST,
    T0,
    EngineDriver,
    S,
    check_task_view,
    devices_with,
    settle,
    task_statuses,
)

pytestmark = pytest.mark.integration


def test_override_multi_module_and_confirmation(otaflow: Otaflow) -> None:
    otaflow.start_worker()
    drive = EngineDriver(otaflow)
    reader = otaflow.task_events()

    # Override: mode 2 cancels a pending task, never one in progress; mode 1 keeps both.
    for dn in ("pending", "started"):
        drive.version("pkOvr", dn, "1.0", T0)
    drive.send()
    drive.start(make_batch("A", at=T0 + S, product_key="pkOvr", need_push=False))
    drive.report("pkOvr", "started", "FIRMWARE_GET", T0 + 2 * S, message_id="1")
    drive.progress("pkOvr", "started", 10, T0 + 3 * S)
    drive.send()
    drive.start(
        make_batch("B", at=T0 + 4 * S, product_key="pkOvr", overwrite_mode=2, fw=firmware("3.0"))
    )
    drive.start(make_batch("C", at=T0 + 5 * S, product_key="pkOvr", fw=firmware("4.0")))

    # Multi-module: two modules update at once; a new task for a module replaces its
    # pending task but not one in progress.
    for module in ("m1", "m2"):
        drive.version("pkMM", "mm", "1.0", T0, module=module)
    drive.send()
    for module in ("m1", "m2"):
        fw = firmware("2.0", module=module, firmware_id=f"f-{module}")
        drive.start(
            make_batch(f"M-{module}", at=T0 + S, product_key="pkMM", fw=fw, multi_module=True)
        )
    drive.report("pkMM", "mm", "FIRMWARE_GET", T0 + 2 * S, module="m1", message_id="2")
    drive.progress("pkMM", "mm", 20, T0 + 3 * S, module="m1")
    drive.send()
    for module in ("m1", "m2"):
        fw = firmware("3.0", module=module, firmware_id=f"n-{module}")
        drive.start(
            make_batch(f"N-{module}", at=T0 + 4 * S, product_key="pkMM", fw=fw, multi_module=True)
        )

    # App confirmation: CONFIRM until ConfirmOTATask, then pushed to the online device.
    drive.version("pkConf", "c1", "1.0", T0)
    drive.version("pkConf", "c2", "1.0", T0)
    drive.send()
    drive.start(make_batch("conf", at=T0 + S, product_key="pkConf", need_confirm=True, rate=FAST))
    drive.tick(T0 + MINUTE)
    drive.command("CONFIRM", "pkConf", "c1", T0 + 2 * MINUTE, batch_id="conf")
    drive.send()
    drive.tick(T0 + 3 * MINUTE)

    reader.wait_for(
        lambda v: (
            devices_with(v, "conf", "NOTIFIED") == {"c1"}
            and devices_with(v, "N-m2") == {"mm"}
            and devices_with(v, "B") == {"pending"}
        ),
        what="override, multi-module and confirmation",
    )
    events = settle(reader)
    assert task_statuses(events, "A") == {"pending": ["CANCELED"], "started": ["IN_PROGRESS"]}
    assert task_statuses(events, "B") == {"pending": ["QUEUED"]}
    assert devices_with(events, "C") == set()
    canceled = [e for e in events if e["batch_id"] == "A" and e["status"] == "CANCELED"]
    assert canceled[0]["desc"] == "overridden by batch B"

    assert task_statuses(events, "M-m1") == {"mm": ["IN_PROGRESS"]}
    assert task_statuses(events, "M-m2") == {"mm": ["CANCELED"]}
    assert devices_with(events, "N-m1") == set()
    assert task_statuses(events, "N-m2") == {"mm": ["QUEUED"]}

    assert task_statuses(events, "conf") == {"c1": ["NOTIFIED"], "c2": ["CONFIRM"]}
    notes = otaflow.notifications().wait_for(
        lambda v: any(n["device_name"] == "c1" and n["kind"] == "PUSH" for n in v), what="push"
    )
    assert not any(n["device_name"] == "c2" and n["kind"] == "PUSH" for n in notes)
    check_task_view(events)


def test_retry_after_24_hours_timeout_and_a_7_day_schedule(otaflow: Otaflow) -> None:
    otaflow.start_worker()
    drive = EngineDriver(otaflow)
    reader = otaflow.task_events()

    retry = dynamic_batch(
        "retry",
        ["1.0"],
        at=T0,
        product_key="pkRetry",
        retry_interval_minutes=24 * 60,
        retry_count=1,
        rate=FAST,
    )
    timeout = dynamic_batch(
        "timeout", ["1.0"], at=T0, product_key="pkTime", timeout_minutes=60, rate=FAST
    )
    start, end = T0 + 7 * DAY, T0 + 7 * DAY + HOUR
    for dn in ("s1", "s2", "s3"):
        drive.version("pkSched", dn, "1.0", T0)
    drive.send()
    scheduled = make_batch(
        "sched",
        at=T0 + S,
        product_key="pkSched",
        schedule_start=start,
        schedule_end=end,
        rate=FAST,
    )
    for batch in (retry, timeout, scheduled):
        drive.start(batch)
    drive.version("pkRetry", "r1", "1.0", T0 + S)
    drive.version("pkTime", "t1", "1.0", T0 + S)
    drive.tick(T0 + MINUTE)
    reader.wait_for(
        lambda v: (
            devices_with(v, "retry", "NOTIFIED") == {"r1"}
            and devices_with(v, "timeout", "NOTIFIED") == {"t1"}
        ),
        what="pushed",
    )
    failed_at = T0 + 2 * MINUTE
    drive.progress("pkRetry", "r1", -3, failed_at)
    drive.progress("pkTime", "t1", 10, failed_at)
    drive.tick(failed_at + DAY - S)  # a day later, less a second: no retry yet
    reader.wait_for(lambda v: devices_with(v, "timeout", "FAILED") == {"t1"}, what="timeout")
    assert task_statuses(settle(reader, 0.5), "retry") == {"r1": ["FAILED"]}
    drive.tick(failed_at + DAY)
    drive.tick(failed_at + DAY + MINUTE)
    reader.wait_for(
        lambda v: (
            [e["status"] for e in v if e["batch_id"] == "retry"][-2:] == ["QUEUED", "NOTIFIED"]
        ),
        what="retried after 24 hours",
    )
    drive.progress("pkRetry", "r1", -3, failed_at + DAY + 2 * MINUTE)
    drive.tick(failed_at + 3 * DAY)  # the one retry is used up

    # The 7-day schedule: tasks held since creation, pushed at the start, and what
    # has not started canceled at the end.
    drive.tick(start - S)
    events = settle(reader, 0.5)
    assert task_statuses(events, "sched") == {d: ["QUEUED"] for d in ("s1", "s2", "s3")}
    drive.tick(start)
    drive.tick(start + MINUTE)
    reader.wait_for(
        lambda v: devices_with(v, "sched", "NOTIFIED") == {"s1", "s2", "s3"}, what="7 days"
    )
    drive.progress("pkSched", "s1", 40, start + 2 * MINUTE)
    drive.tick(end)
    reader.wait_for(
        lambda v: devices_with(v, "sched", "CANCELED") == {"s2", "s3"}, what="schedule end"
    )
    events = settle(reader)
    assert task_statuses(events, "sched") == {
        "s1": ["IN_PROGRESS"],
        "s2": ["CANCELED"],
        "s3": ["CANCELED"],
    }
    assert [e["status"] for e in events if e["batch_id"] == "retry"] == [
        "QUEUED",
        "NOTIFIED",
        "FAILED",
        "QUEUED",
        "NOTIFIED",
        "FAILED",
    ]
    retried = [e for e in events if e["batch_id"] == "retry" and e["status"] == "QUEUED"][1]
    assert retried["event_time"] == failed_at + DAY and retried["desc"] == "retry"
    timed_out = [e for e in events if e["batch_id"] == "timeout" and e["status"] == "FAILED"]
    assert [e["desc"] for e in timed_out] == ["timeout"]
    assert timed_out[0]["event_time"] >= failed_at + HOUR
    sched_push = [e for e in events if e["batch_id"] == "sched" and e["status"] == "NOTIFIED"]
    assert min(e["event_time"] for e in sched_push) >= start
    check_task_view(events)


def test_a_scheduled_start_is_pushed_when_the_rate_agent_lags_behind(otaflow: Otaflow) -> None:
    """The device partitions reach the schedule's start before the rate agent's own ticks
    do (its ticks are late, or on another worker): the tasks queued at the start must be
    released at the start, not at the rate agent's older time, which the device agent
    would refuse as before the batch began (they were then never pushed)."""
    otaflow.start_worker()
    drive = EngineDriver(otaflow)
    reader = otaflow.task_events()
    start = T0 + DAY
    for dn in ("s1", "s2", "s3"):
        drive.version("pkLag", dn, "1.0", T0)
    drive.send()
    drive.start(make_batch("lag", at=T0 + S, product_key="pkLag", schedule_start=start, rate=FAST))
    drive.tick(start - S)
    reader.wait_for(lambda v: devices_with(v, "lag", "QUEUED") == {"s1", "s2", "s3"})
    assert task_statuses(settle(reader, 0.5), "lag") == {d: ["QUEUED"] for d in ("s1", "s2", "s3")}
    drive.tick(start, rate=False)  # the rate topic stays at start - 1 s
    reader.wait_for(
        lambda v: devices_with(v, "lag", "NOTIFIED") == {"s1", "s2", "s3"}, what="pushed"
    )
    notified = [e for e in settle(reader) if e["status"] == "NOTIFIED"]
    assert {e["event_time"] for e in notified} == {start}
