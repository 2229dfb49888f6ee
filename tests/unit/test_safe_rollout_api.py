"""Safe-rollout extras through the real ControlPlane: parameters, internal counts,
ResumeOTAJob and QueryOTAJob (in-memory control table)."""

from __future__ import annotations

import pytest

from otaflow.control.guard import counts_to_params
from tests.unit.test_control_plane import NOW, World
from tests.unit.test_control_plane import world as control_world


@pytest.fixture
def world() -> World:
    return control_world.__wrapped__()  # type: ignore[attr-defined]


RULE = {
    "AbortRule__1__FailureKind": "FAILED",
    "AbortRule__1__ThresholdPercent": "20.5",
    "AbortRule__1__MinFinished": "10",
    "AbortRule__1__CohortBy": "SRC_VERSION",
    "MaintenanceWindow__1": "Mon-Fri 02:00 120 Europe/Berlin",
}


def create(world: World, **extra: str) -> str:
    params = {"ProductKey": world.pk, "FirmwareId": world.fw, "TargetSelection": "ALL"}
    job: str = world.call("CreateOTAStaticUpgradeJob", **params, **RULE, **extra).data["JobId"]
    return job


def test_create_stores_rules_and_windows_and_query_shows_them(world: World) -> None:
    job = create(world)
    data = world.call("QueryOTAJob", JobId=job).data
    assert data["AbortRules"]["AbortRule"] == [
        {
            "FailureKind": "FAILED",
            "ThresholdPercent": "20.50",
            "MinFinished": 10,
            "Action": "PAUSE",
            "CohortBy": "SRC_VERSION",
        }
    ]
    assert data["MaintenanceWindows"] == {"MaintenanceWindow": [RULE["MaintenanceWindow__1"]]}
    assert "PausedCohorts" not in data


def test_bad_rule_or_window_is_refused_and_nothing_is_written(world: World) -> None:
    params = {"ProductKey": world.pk, "FirmwareId": world.fw, "TargetSelection": "ALL"}
    err = world.refused(
        "CreateOTAStaticUpgradeJob", **params, AbortRule__1__ThresholdPercent="12.345"
    )
    assert "AbortRule.1.ThresholdPercent" in err.message
    err = world.refused(
        "CreateOTAStaticUpgradeJob", **params, MaintenanceWindow__1="Mon 25:00 60 UTC"
    )
    assert "MaintenanceWindow" in err.message
    err = world.refused(
        "CreateOTAStaticUpgradeJob", **params, MaintenanceWindow__1="Mon 02:00 60 Mars/Base"
    )
    assert "time zone" in err.message


def test_counts_fire_the_rule_pause_the_cohort_and_resume_lifts_it(world: World) -> None:
    job = create(world)
    counts = {"SRC_VERSION=1.2|FAILED": 3, "SRC_VERSION=1.2|SUCCEEDED": 6}
    out = world.plane.handle(
        "otaflow.CohortOutcomes", {"batch_id": job, **counts_to_params(counts)}, "c1", NOW
    )
    world.store.apply(out.writes)
    assert not out.controls  # 9 finished: below the minimum of 10
    more = {"SRC_VERSION=1.2|SUCCEEDED": 1, "SRC_VERSION=1.0|FAILED": 1}
    out = world.plane.handle(
        "otaflow.CohortOutcomes", {"batch_id": job, **counts_to_params(more)}, "c2", NOW + 1
    )
    world.store.apply(out.writes)
    (control,) = out.controls
    assert control["action"] == "UPDATE"
    assert control["batch"]["paused_cohorts"] == ["SRC_VERSION=1.2"]
    (topic, key, schema, record) = out.public_records[0]
    assert (topic, key, schema) == ("ota.rollout.triggers", job, "RolloutTrigger")
    assert record["counts"] == {"FAILED": 3, "SUCCEEDED": 7}
    data = world.call("QueryOTAJob", JobId=job).data
    assert data["PausedCohorts"] == {"Cohort": ["SRC_VERSION=1.2"]}
    err = world.refused("ResumeOTAJob", JobId=job, Cohort="SRC_VERSION=9")
    assert err.code == "iot.common.InvalidFormattedParameter"
    resumed = world.call("ResumeOTAJob", JobId=job)
    assert resumed.data["ResumedCohorts"] == ["SRC_VERSION=1.2"]
    assert resumed.controls[0]["batch"]["paused_cohorts"] == []
    kinds = [
        t["Kind"]
        for t in world.call("QueryOTAJob", JobId=job).data["RolloutTriggers"]["RolloutTrigger"]
    ]
    assert kinds == ["TRIGGERED", "RESUMED"]


def test_update_sets_rules_on_a_running_batch(world: World) -> None:
    params = {"ProductKey": world.pk, "FirmwareId": world.fw, "TargetSelection": "ALL"}
    job = world.call("CreateOTAStaticUpgradeJob", **params).data["JobId"]
    out = world.call(
        "UpdateOTAJob",
        JobId=job,
        UpgradeType="STATIC",
        TargetSelection="ALL",
        MaximumPerMinute=100,
        AbortRule__1__ThresholdPercent="50",
        AbortRule__1__Action="CANCEL",
    )
    assert out.controls[0]["batch"]["abort_rules"][0]["action"] == "CANCEL"
