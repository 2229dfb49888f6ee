"""Abort rules end to end on the real broker: outcomes counted by the device agent,
summed by the command agent, a pause on the public trigger topic, held pushes, resume."""

from __future__ import annotations

import pytest

from otaflow import topics
from tests.integration.conftest import Otaflow
from tests.integration.engine_support import T0
from tests.integration.rollout_support import create_package

pytestmark = pytest.mark.integration

MINUTE = 60_000


def test_a_failing_cohort_pauses_alone_and_resumes(otaflow: Otaflow) -> None:
    otaflow.start_worker()
    pk = "pkSafe"
    firmware_id = create_package(otaflow, pk)
    job_id = otaflow.call(
        "CreateOTADynamicUpgradeJob",
        T0,
        FirmwareId=firmware_id,
        ProductKey=pk,
        MaximumPerMinute=1000,
        **{
            "SrcVersion.1": "1.0",
            "SrcVersion.2": "1.2",
            "AbortRule.1.FailureKind": "FAILED",
            "AbortRule.1.ThresholdPercent": "30",
            "AbortRule.1.MinFinished": "10",
            "AbortRule.1.CohortBy": "SRC_VERSION",
        },
    )["JobId"]
    first = [(f"old{i}", "1.0") for i in range(10)] + [(f"new{i}", "1.2") for i in range(10)]
    for dn, version in first:
        otaflow.report(pk, dn, "VERSION", T0 + 1000, version=version)
    otaflow.flush()
    events = otaflow.task_events()
    events.wait_for(lambda v: sum(e["status"] == "QUEUED" for e in v) == 20, what="queued")
    otaflow.tick(T0 + 2000)
    events.wait_for(lambda v: sum(e["status"] == "NOTIFIED" for e in v) == 20, what="pushed")
    for dn, version in first:
        if version == "1.2":
            otaflow.report(pk, dn, "PROGRESS", T0 + 3000, step=-4, desc="bad flash")
        else:
            otaflow.report(pk, dn, "VERSION", T0 + 3000, version="2.0")
    otaflow.flush()
    triggers = otaflow.reader(topics.ROLLOUT_TRIGGERS).wait_for(
        lambda v: len(v) >= 1, what="a trigger"
    )
    assert triggers[0]["cohort"] == "SRC_VERSION=1.2" and triggers[0]["kind"] == "TRIGGERED"
    assert triggers[0]["counts"]["FAILED"] == 10
    job = otaflow.call("QueryOTAJob", T0 + 4000, JobId=job_id)
    assert job["PausedCohorts"] == {"Cohort": ["SRC_VERSION=1.2"]}

    # New devices: the 1.0 one is pushed, the 1.2 one waits.
    otaflow.report(pk, "late10", "VERSION", T0 + 5000, version="1.0")
    otaflow.report(pk, "late12", "VERSION", T0 + 5000, version="1.2")
    otaflow.flush()
    otaflow.tick(T0 + 6000)
    events.wait_for(
        lambda v: any(e["device_name"] == "late10" and e["status"] == "NOTIFIED" for e in v),
        what="late10 pushed",
    )
    otaflow.tick(T0 + 7000)
    otaflow.task_events().poll(1.0)
    late12 = [e["status"] for e in events.values() if e["device_name"] == "late12"]
    assert late12 == ["QUEUED"]

    otaflow.call("ResumeOTAJob", T0 + 8000, JobId=job_id)
    otaflow.tick(T0 + 9000)
    events.wait_for(
        lambda v: any(e["device_name"] == "late12" and e["status"] == "NOTIFIED" for e in v),
        what="late12 pushed after the resume",
    )
    kinds = [t["kind"] for t in otaflow.reader(topics.ROLLOUT_TRIGGERS).values()]
    assert kinds == ["TRIGGERED", "RESUMED"]


def test_a_batch_wide_pause_holds_the_rate_queue_and_resume_releases_it(otaflow: Otaflow) -> None:
    otaflow.start_worker()
    pk = "pkSafeAll"
    firmware_id = create_package(otaflow, pk)
    job_id = otaflow.call(
        "CreateOTADynamicUpgradeJob",
        T0,
        FirmwareId=firmware_id,
        ProductKey=pk,
        MaximumPerMinute=10,
        **{
            "SrcVersion.1": "1.0",
            "AbortRule.1.ThresholdPercent": "50",
            "AbortRule.1.MinFinished": "10",
        },
    )["JobId"]
    for i in range(30):
        otaflow.report(pk, f"d{i:02d}", "VERSION", T0 + 1000, version="1.0")
    otaflow.flush()
    events = otaflow.task_events()
    events.wait_for(lambda v: sum(e["status"] == "QUEUED" for e in v) == 30, what="queued")
    otaflow.tick_through(T0 + 2000, T0 + MINUTE - 1)  # the first minute: 10 pushes
    pushed = events.wait_for(
        lambda v: sum(e["status"] == "NOTIFIED" for e in v) == 10, what="10 pushed"
    )
    for e in pushed:
        if e["status"] == "NOTIFIED":
            otaflow.report(pk, e["device_name"], "PROGRESS", T0 + MINUTE, step=-1)
    otaflow.flush()
    otaflow.reader(topics.ROLLOUT_TRIGGERS).wait_for(lambda v: len(v) == 1, what="trigger")
    otaflow.tick_through(T0 + MINUTE, T0 + 3 * MINUTE - 1)  # two more minutes: nothing goes out
    otaflow.tick(T0 + 3 * MINUTE)
    otaflow.task_events().poll(1.0)
    assert sum(e["status"] == "NOTIFIED" for e in events.values()) == 10
    otaflow.call("ResumeOTAJob", T0 + 3 * MINUTE + 1, JobId=job_id)
    otaflow.tick_through(T0 + 3 * MINUTE + 1000, T0 + 4 * MINUTE - 1)
    after = events.wait_for(
        lambda v: sum(e["status"] == "NOTIFIED" for e in v) == 20, what="10 more after resume"
    )
    late = [e for e in after if e["status"] == "NOTIFIED"][10:]
    assert all(e["event_time"] > T0 + 3 * MINUTE for e in late)
