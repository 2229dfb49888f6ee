"""Abort and pause rules per batch and per cohort, on event time: the real device engine
(``simulation.Partition``) and the real control-plane rules (``control.guard``) wired the
way the agents wire them, without Kafka."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from otaflow.control.common import DictStore, Outcome
from otaflow.control.errors import ApiError
from otaflow.control.guard import GuardOps, counts_to_params, rollout_fields
from otaflow.domain.abort_rules import (
    AbortRule,
    CohortBy,
    FailureKind,
    RuleAction,
    RuleError,
    evaluate,
    outcome_of,
    parse_rules,
)
from otaflow.domain.batches import Batch
from otaflow.domain.simulation import Partition, make_batch

T = 1_000_000
SECOND = 1000


class Plane(GuardOps):
    """The control plane's safe-rollout rules over an in-memory control table."""

    def __init__(self) -> None:
        self.table = DictStore()
        self.store = self.table
        self.published: list[dict[str, Any]] = []

    def apply(self, outcome: Outcome, partition: Partition) -> None:
        self.table.apply(outcome.writes)
        self.published.extend(r for _, _, _, r in outcome.public_records)
        for control in outcome.controls:
            partition.apply("BatchControl", control)

    def feed(self, partition: Partition, now: int) -> None:
        """What the device agent sends and the command agent applies: the counts."""
        for batch_id, counts in partition.take_outcomes().items():
            params = {"batch_id": batch_id, **counts_to_params(counts)}
            self.apply(self.cohort_outcomes(params, f"r{now}", now), partition)

    def batch_now(self, batch_id: str) -> dict[str, Any]:
        record = self.store.get(f"batch/{batch_id}")
        assert record is not None
        return record


def rule(**fields: Any) -> dict[str, Any]:
    base = AbortRule(FailureKind.ALL, 2500, 50, RuleAction.PAUSE, CohortBy.SRC_VERSION)
    return {**base.to_record(), **fields}


def fleet(batch: Batch, on_10: int = 200, on_12: int = 200) -> tuple[Partition, Plane]:
    p, plane = Partition(), Plane()
    for i in range(on_10):
        p.version(f"a{i:03d}", "1.0", T - 10)
    for i in range(on_12):
        p.version(f"b{i:03d}", "1.2", T - 10)
    plane.table.apply({f"batch/{batch.batch_id}": batch.to_record()})
    p.start(batch, T)
    return p, plane


def run(p: Partition, plane: Plane, seconds: int, per_second: int = 20) -> int:
    """Release ``per_second`` pushes a second; each pushed device answers within the
    second: 1.2 devices fail 3 in 10 (30 %), 1.0 devices succeed. Returns the time."""
    now = T
    for _ in range(seconds):
        now += SECOND
        before = len(p.pushes())
        p.release(now, per_second)
        for push in p.pushes()[before:]:
            dn = push["device_name"]
            if dn.startswith("b") and int(dn[1:]) % 10 < 3:
                p.progress(dn, -1, now + 1, desc="flash error")
            else:
                p.version(dn, "2.0", now + 1)
        plane.feed(p, now + 2)
    return now


def statuses(p: Partition, prefix: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for key, state in p.store.states().items():
        if key.split("/")[1].startswith(prefix):
            for task in state.tasks:
                out[task.status.value] = out.get(task.status.value, 0) + 1
    return out


def test_a_failing_12_cohort_pauses_alone_and_the_10_cohort_carries_on() -> None:
    batch = make_batch("B", at=T, abort_rules=(rule(),))
    p, plane = fleet(batch)
    run(p, plane, seconds=40)
    record = plane.batch_now("B")
    assert record["paused_cohorts"] == ["SRC_VERSION=1.2"]
    # The 1.0 cohort finished: every device updated.
    assert statuses(p, "a") == {"SUCCEEDED": 200}
    # The 1.2 cohort stopped soon after 50 finished: most of its tasks wait, unpushed.
    held = statuses(p, "b")
    assert held["QUEUED"] > 100
    assert held["FAILED"] + held["SUCCEEDED"] < 100
    (trigger,) = plane.published
    assert trigger["kind"] == "TRIGGERED" and trigger["cohort"] == "SRC_VERSION=1.2"
    finished = sum(trigger["counts"].values())
    assert finished >= 50
    assert trigger["counts"]["FAILED"] * 100 >= 25 * finished
    # QueryOTAJob shows it.
    data = rollout_fields(plane.store, record)
    assert data["PausedCohorts"] == {"Cohort": ["SRC_VERSION=1.2"]}
    assert data["RolloutTriggers"]["RolloutTrigger"][0]["Cohort"] == "SRC_VERSION=1.2"
    assert data["AbortRules"]["AbortRule"][0]["ThresholdPercent"] == "25.00"


def test_a_paused_cohort_pushes_nothing_even_when_its_device_comes_back_online() -> None:
    batch = make_batch("B", at=T, abort_rules=(rule(),))
    p, plane = fleet(batch)
    now = run(p, plane, seconds=40)
    waiting = [
        k.split("/")[1]
        for k, s in p.store.states().items()
        if k.split("/")[1].startswith("b") and s.tasks[0].status.value == "QUEUED"
    ]
    pushes = len(p.pushes())
    p.offline(waiting[0], now + 10)
    p.online(waiting[0], now + 20)
    p.tick(now + 30)
    p.release(now + 40)
    assert len(p.pushes()) == pushes


def test_a_cancel_rule_cancels_the_whole_batchs_pending_tasks() -> None:
    batch = make_batch("B", at=T, abort_rules=(rule(action="CANCEL", cohort_by="BATCH"),))
    p, plane = fleet(batch, on_10=0, on_12=400)
    run(p, plane, seconds=10)
    record = plane.batch_now("B")
    assert record["paused_cohorts"] == ["*"]
    states = statuses(p, "b")
    assert "QUEUED" not in states and "NOTIFIED" not in states
    assert states["CANCELED"] > 200
    assert plane.published[0]["rule"]["action"] == "CANCEL"


def test_resume_pushes_the_held_tasks_and_counts_the_cohort_afresh() -> None:
    batch = make_batch("B", at=T, abort_rules=(rule(),))
    p, plane = fleet(batch)
    now = run(p, plane, seconds=40)
    held = statuses(p, "b")["QUEUED"]
    outcome = plane._ResumeOTAJob({"JobId": "B", "Cohort": "SRC_VERSION=1.2"}, "resume", now)
    plane.apply(outcome, p)
    assert plane.batch_now("B")["paused_cohorts"] == []
    assert plane.published[-1]["kind"] == "RESUMED"
    guard = plane.store.get("guard/B")
    assert guard is not None
    assert not any(k.startswith("SRC_VERSION=1.2|") for k in guard["counts"])
    assert p.release(now + 5) == held  # every held task is queued for a push again
    # Nothing is paused any more: resuming again is refused with the platform's shape.
    with pytest.raises(ApiError):
        plane._ResumeOTAJob({"JobId": "B"}, "again", now + 6)


def test_rule_arithmetic_thresholds_minimum_and_kinds() -> None:
    r = AbortRule(FailureKind.TIMEOUT, 3050, 10, RuleAction.PAUSE, CohortBy.BATCH)
    assert not r.fires({"TIMEOUT": 3, "SUCCEEDED": 6})  # 9 finished: below the minimum
    assert not r.fires({"TIMEOUT": 3, "SUCCEEDED": 7})  # 30 % < 30.5 %
    assert r.fires({"TIMEOUT": 61, "SUCCEEDED": 139})  # 30.5 %
    assert not r.fires({"FAILED": 100, "SUCCEEDED": 1})  # another kind
    counts = {"*|FAILED": 5, "*|SUCCEEDED": 5}
    assert evaluate([r], counts, []) == []
    fired = evaluate([AbortRule(FailureKind.ALL, 5000, 10)], counts, [])
    assert [t.cohort for t in fired] == ["*"]
    assert evaluate([AbortRule(FailureKind.ALL, 5000, 10)], counts, ["*"]) == []


def test_outcomes_of_task_events() -> None:
    assert outcome_of({"status": "FAILED", "desc": "timeout"}) == "TIMEOUT"
    assert outcome_of({"status": "FAILED", "desc": "update failed"}) == "FAILED"
    assert outcome_of({"status": "SUCCEEDED"}) == "SUCCEEDED"
    rejected = {"status": "CANCELED", "previous_status": "CONFIRM", "desc": "canceled by operator"}
    assert outcome_of(rejected) == "REJECTED"
    assert outcome_of({"status": "CANCELED", "previous_status": "QUEUED", "desc": "x"}) is None


@pytest.mark.parametrize(
    ("item", "param"),
    [
        ({"ThresholdPercent": "0"}, "AbortRule.1.ThresholdPercent"),
        ({"ThresholdPercent": "12.345"}, "AbortRule.1.ThresholdPercent"),
        ({"ThresholdPercent": "101"}, "AbortRule.1.ThresholdPercent"),
        ({"ThresholdPercent": "10", "Action": "STOP"}, "AbortRule.1.Action"),
        ({"ThresholdPercent": "10", "CohortBy": "COLOR"}, "AbortRule.1.CohortBy"),
        ({"ThresholdPercent": "10", "MinFinished": "0"}, "AbortRule.1.MinFinished"),
        ({}, "AbortRule.1.ThresholdPercent"),
    ],
)
def test_bad_rules_are_refused_naming_the_parameter(item: Mapping[str, str], param: str) -> None:
    with pytest.raises(RuleError) as info:
        parse_rules([item])
    assert info.value.param == param


def test_rules_parse_with_defaults() -> None:
    (r,) = parse_rules([{"ThresholdPercent": "12.5", "CohortBy": "src_version"}])
    assert r == AbortRule(FailureKind.ALL, 1250, 1, RuleAction.PAUSE, CohortBy.SRC_VERSION)


def test_the_partition_counts_outcomes_of_reports_the_agent_hands_it_directly() -> None:
    from otaflow.domain.engine import Effects
    from otaflow.domain.partition_engine import PartitionEngine
    from otaflow.domain.simulation import report_record

    batch = make_batch("B", at=T, abort_rules=(rule(),))
    p, _ = fleet(batch, on_10=1, on_12=0)
    p.release(T + 1)
    engine = PartitionEngine(p.batches, p.groups, p.store, p.deadlines)
    fx = Effects()
    engine.report(report_record("pk", "a000", "VERSION", T + 2, version="2.0"), fx)
    assert fx.outcomes["B"]["SRC_VERSION=1.0|SUCCEEDED"] == 1
    assert fx.outcomes["B"]["*|SUCCEEDED"] == 1


def test_a_region_cohort_pauses_alone() -> None:
    by_region = rule(failure_kind="FAILED", cohort_by="REGION", min_finished=2)
    batch = make_batch("B", at=T, abort_rules=(by_region,))
    p, plane = Partition(), Plane()
    for i in range(3):
        for region in ("North", "South"):
            p.register(f"{region[0]}{i}", T - 20, province=region)
            p.version(f"{region[0]}{i}", "1.0", T - 10)
    plane.table.apply({"batch/B": batch.to_record()})
    p.start(batch, T)
    p.release(T + 1, limit=2)  # N0, N1 (the queue is in key order)
    for name in ("N0", "N1"):
        p.progress(name, -3, T + 2)
    for name in ("S0", "S1"):  # updated by themselves (a queued task may succeed)
        p.version(name, "2.0", T + 2)
    plane.feed(p, T + 3)
    assert plane.batch_now("B")["paused_cohorts"] == ["REGION=North"]
    p.release(T + 4)
    assert [n["device_name"] for n in p.pushes()] == ["N0", "N1", "S2"]
    assert p.tasks("N2") == [("B", "QUEUED")]


def test_unconfirmed_tasks_canceled_count_as_rejected() -> None:
    batch = make_batch("B", at=T, need_confirm=True, abort_rules=(rule(),))
    p, _ = fleet(batch, on_10=3, on_12=0)
    p.control("CANCEL_TASKS", batch, T + 1, ["CONFIRM"])
    assert p.take_outcomes()["B"]["*|REJECTED"] == 3


def test_cli_rule_and_window_flags_become_the_api_parameters() -> None:
    from otaflow.cli.safe_rollout import rule_params

    params = rule_params(["ALL:30:50:PAUSE:SRC_VERSION", "TIMEOUT:5.5:10"], ["* 01:00 60 UTC"])
    assert params == {
        "AbortRule.1.FailureKind": "ALL",
        "AbortRule.1.ThresholdPercent": "30",
        "AbortRule.1.MinFinished": "50",
        "AbortRule.1.Action": "PAUSE",
        "AbortRule.1.CohortBy": "SRC_VERSION",
        "AbortRule.2.FailureKind": "TIMEOUT",
        "AbortRule.2.ThresholdPercent": "5.5",
        "AbortRule.2.MinFinished": "10",
        "MaintenanceWindow.1": "* 01:00 60 UTC",
    }
    with pytest.raises(SystemExit):
        rule_params(["ALL:30"], None)
