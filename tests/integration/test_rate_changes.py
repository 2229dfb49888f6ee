"""Variable rates and live rate changes, through the real command and rate agents."""

from __future__ import annotations

from collections import Counter

import pytest

from otaflow.domain.rate import RateCondition, RateConfig, plan
from tests.integration.conftest import Otaflow
from tests.integration.engine_support import T0
from tests.integration.rollout_support import MINUTE, dynamic_batch, tick_minutes

pytestmark = pytest.mark.integration


def queue_devices(otaflow: Otaflow, pk: str, count: int) -> None:
    for i in range(count):
        otaflow.report(pk, f"d{i}", "VERSION", T0 + 100, version="1.0")
    otaflow.flush()
    otaflow.task_events().wait_for(
        lambda v: sum(e["status"] == "QUEUED" for e in v) == count, timeout=120, what="queued"
    )


def pushes_per_minute(otaflow: Otaflow, expected: int) -> Counter[int]:
    events = otaflow.task_events().wait_for(
        lambda v: sum(e["status"] == "NOTIFIED" for e in v) >= expected,
        timeout=180,
        what=f"{expected} notified",
    )
    return Counter((e["event_time"] - T0) // MINUTE for e in events if e["status"] == "NOTIFIED")


def test_console_variable_rate_example_runs_as_planned(otaflow: Otaflow) -> None:
    """Base 50, factor 2, max 10,000, +1 step per 1,000 pushed: 50, 100, 200, ... 10,000."""
    otaflow.start_worker()
    pk, devices = "pkVar", 9000
    dynamic_batch(
        otaflow,
        pk,
        RateType="variable",
        BaseRatePerMinute=50,
        IncrementalFactor="2",
        MaximumPerMinute=10000,
        RateIncreaseCondition="pushed",
        RateIncreaseThreshold=1000,
    )
    queue_devices(otaflow, pk, devices)
    expected = plan(RateConfig.variable(50, "2", 10000, 1000, RateCondition.PUSHED), devices)
    tick_minutes(otaflow, 0, expected.total_minutes - 1)
    per_minute = pushes_per_minute(otaflow, devices)
    # The agent pushes exactly what the plan (the same meter code) says, minute by minute.
    cumulative, achieved = 0, []
    for minute in range(expected.total_minutes):
        cumulative += per_minute[minute]
        achieved.append(cumulative)
    assert achieved == [m.pushed for m in expected.minutes]
    # The console doc's steps: 50/min for the first 1,000 (20 minutes), then 100/min ...
    assert [per_minute[m] for m in range(3)] == [50, 50, 50]
    assert per_minute[20] == 100
    # A speed, never a burst (issue 12): minute 37 runs 30 s at 400/min, 30 s at 800/min.
    assert [per_minute[m] for m in (36, 37, 38)] == [400, 600, 1_000]
    assert sum(per_minute.values()) == devices


def test_rate_change_while_updating_takes_effect_in_the_next_window(otaflow: Otaflow) -> None:
    otaflow.start_worker()
    pk = "pkChange"
    job_id = dynamic_batch(otaflow, pk, MaximumPerMinute=600)
    queue_devices(otaflow, pk, 1500)
    tick_minutes(otaflow, 0, 0)
    otaflow.task_events().wait_for(
        lambda v: sum(e["status"] == "NOTIFIED" for e in v) == 600, what="minute 0 at 600"
    )
    # Mid-minute 1, the operator lowers the rate; minute 1 keeps 600, minute 2 runs at 60.
    tick_minutes(otaflow, 1, 1)
    otaflow.call(
        "UpdateOTAJob",
        T0 + MINUTE + 30_000,
        JobId=job_id,
        UpgradeType="DYNAMIC",
        TargetSelection="ALL",
        MaximumPerMinute=60,
    )
    tick_minutes(otaflow, 2, 3)
    per_minute = pushes_per_minute(otaflow, 600 + 600 + 60 + 60)
    assert [per_minute[m] for m in range(4)] == [600, 600, 60, 60]
    changed_type = otaflow.control.call(
        "UpdateOTAJob",
        {
            "JobId": job_id,
            "UpgradeType": "DYNAMIC",
            "TargetSelection": "ALL",
            "MaximumPerMinute": "100",
            "RateType": "variable",
            "BaseRatePerMinute": "10",
            "IncrementalFactor": "2",
            "RateIncreaseThreshold": "10",
        },
        now_ms=T0 + 4 * MINUTE,
    )
    assert not changed_type.success
    assert changed_type.code == "iot.ota.RateTypeChangeNotAllowed"


def test_canceling_queued_tasks_frees_the_queue_for_later_matches(otaflow: Otaflow) -> None:
    otaflow.start_worker()
    pk = "pkCancelQ"
    job_id = dynamic_batch(otaflow, pk, MaximumPerMinute=10)
    queue_devices(otaflow, pk, 50)
    otaflow.call("CancelOTATaskByJob", T0 + 1000, JobId=job_id, CancelQueuedTask=True)
    events = otaflow.task_events()
    events.wait_for(lambda v: sum(e["status"] == "CANCELED" for e in v) == 50, what="canceled")
    # Devices matched after the cancel are pushed at the batch's rate, not stuck behind
    # (or instead of) the canceled ones.
    for i in range(5):
        otaflow.report(pk, f"late{i}", "VERSION", T0 + 2000, version="1.0")
    otaflow.flush()
    events.wait_for(lambda v: sum(e["status"] == "QUEUED" for e in v) == 55, what="late queued")
    tick_minutes(otaflow, 0, 0)
    notified = events.wait_for(
        lambda v: sum(e["status"] == "NOTIFIED" for e in v) >= 5, what="late pushed"
    )
    pushed = {e["device_name"] for e in notified if e["status"] == "NOTIFIED"}
    assert pushed == {f"late{i}" for i in range(5)}
