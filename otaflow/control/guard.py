"""Safe rollouts in the control plane: abort/pause rules, resume, maintenance windows.

otaflow extras on the platform's operations (docs/openapi-ota.md, "Safe rollouts"):

- ``CreateOTAStaticUpgradeJob`` / ``CreateOTADynamicUpgradeJob`` / ``UpdateOTAJob`` take
  ``AbortRule.N.FailureKind|ThresholdPercent|MinFinished|Action|CohortBy`` and
  ``MaintenanceWindow.N`` (``Mon-Fri 02:00 120 Europe/Berlin``);
- the device partitions send each envelope's finished outcomes per cohort
  (``otaflow.CohortOutcomes``, an internal command); ``cohort_outcomes`` sums them under
  ``guard/{batchId}`` and fires the rules: PAUSE adds the cohort to the batch's
  ``paused_cohorts`` (a BatchControl UPDATE), CANCEL cancels the batch's pending tasks
  (CANCEL_TASKS) and pauses the whole batch; each firing is a ``RolloutTrigger`` on the
  public ``ota.rollout.triggers`` topic;
- ``ResumeOTAJob`` (``JobId``, optional ``Cohort``) resumes a paused cohort (or all);
  that cohort's counts start again from zero, so the rule watches the resumed pushes;
- ``QueryOTAJob`` shows ``AbortRules``, ``PausedCohorts``, ``RolloutTriggers`` and
  ``MaintenanceWindows``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from otaflow.control import errors as E
from otaflow.control.common import (
    ControlStore,
    OpsBase,
    Outcome,
    Record,
    opt_list,
    opt_str,
    req_str,
    str_list,
)
from otaflow.control.errors import ApiError, invalid
from otaflow.domain.abort_rules import (
    WHOLE_BATCH,
    AbortRule,
    RuleAction,
    RuleError,
    evaluate,
    parse_rules,
)
from otaflow.domain.maintenance import WindowError, parse_windows

TRIGGER_TOPIC = "ota.rollout.triggers"
# What a CANCEL rule cancels: every task not yet started (the console's "pending").
PENDING_STATUSES = ("CONFIRM", "QUEUED", "NOTIFIED")
COUNT_PREFIX = "count."


def safe_rollout_changes(p: Mapping[str, Any]) -> dict[str, Any]:
    """The Batch fields the safe-rollout parameters set (only those given)."""
    changes: dict[str, Any] = {}
    items = opt_list(p, "AbortRule")
    if items:
        try:
            changes["abort_rules"] = tuple(r.to_record() for r in parse_rules(items))
        except RuleError as exc:
            raise invalid(exc.param, exc.message) from None
    windows = str_list(p, "MaintenanceWindow")
    if windows:
        try:
            parse_windows(windows)
        except WindowError as exc:
            raise invalid("MaintenanceWindow", str(exc)) from None
        changes["maintenance_windows"] = tuple(windows)
    return changes


def counts_to_params(counts: Mapping[str, int]) -> dict[str, str]:
    """``cohort|OUTCOME`` counts as the flat parameters of a CohortOutcomes command."""
    return {f"{COUNT_PREFIX}{k}": str(v) for k, v in sorted(counts.items())}


def new_guard(batch_id: str) -> Record:
    return {"batch_id": batch_id, "counts": {}, "triggers": []}


class GuardOps(OpsBase):
    def guard(self, batch_id: str) -> Record:
        return self.store.get(f"guard/{batch_id}") or new_guard(batch_id)

    def cohort_outcomes(self, p: Mapping[str, str], request_id: str, now: int) -> Outcome:
        """A device partition's finished outcomes of one batch, per cohort; fire rules."""
        batch_id = p["batch_id"]
        record = self.store.get(f"batch/{batch_id}")
        if record is None:
            return Outcome()
        guard = self.guard(batch_id)
        counts = dict(guard["counts"])
        for name, value in p.items():
            if name.startswith(COUNT_PREFIX):
                key = name[len(COUNT_PREFIX) :]
                counts[key] = counts.get(key, 0) + int(value)
        guard = dict(guard, counts=counts)
        outcome = Outcome(writes={f"guard/{batch_id}": guard})
        rules = [AbortRule.from_record(r) for r in record.get("abort_rules") or ()]
        if not rules or record["status"] in ("CANCELED", "COMPLETED"):
            return outcome
        fired = evaluate(rules, counts, record.get("paused_cohorts") or ())
        if not fired:
            return outcome
        paused = list(record.get("paused_cohorts") or [])
        cancel = False
        triggers = list(guard["triggers"])
        for trigger in fired:
            cancel = cancel or trigger.rule.action is RuleAction.CANCEL
            cohort = WHOLE_BATCH if trigger.rule.action is RuleAction.CANCEL else trigger.cohort
            if cohort not in paused:
                paused.append(cohort)
            event = {
                "batch_id": batch_id,
                "product_key": record["product_key"],
                "kind": "TRIGGERED",
                "cohort": trigger.cohort,
                "rule": trigger.rule.to_record(),
                "counts": trigger.counts,
                "event_time": now,
            }
            triggers.append(event)
            outcome.public_records.append((TRIGGER_TOPIC, batch_id, "RolloutTrigger", event))
        guard["triggers"] = triggers
        updated = dict(record, paused_cohorts=paused, updated_at=now)
        if cancel and record["kind"] == "DYNAMIC":
            updated["strategy_active"] = False  # a canceled batch matches no new device
        action = "CANCEL_TASKS" if cancel else "UPDATE"
        statuses = list(PENDING_STATUSES) if cancel else []
        control = {
            "action": action,
            "batch": updated,
            "cancel_statuses": statuses,
            "event_time": now,
        }
        outcome.writes[f"batch/{batch_id}"] = updated
        outcome.controls.append(control)
        outcome.batches.append(updated)
        return outcome

    def _ResumeOTAJob(self, p: Mapping[str, Any], request_id: str, now: int) -> Outcome:
        """otaflow extra: resume a cohort (``Cohort``) or every cohort a rule paused."""
        record = self.batch(req_str(p, "JobId"))
        paused = list(record.get("paused_cohorts") or [])
        if record["status"] in ("CANCELED", "COMPLETED"):
            raise ApiError(E.JOB_NOT_IN_PROGRESS, f"The batch is {record['status']}.")
        if not paused:
            raise ApiError(E.JOB_NOT_IN_PROGRESS, "No cohort of the batch is paused.")
        cohort = opt_str(p, "Cohort")
        if cohort is not None and cohort not in paused:
            raise invalid("Cohort", f"is not paused; paused: {', '.join(paused)}")
        resumed = [cohort] if cohort is not None else paused
        guard = self.guard(record["batch_id"])
        # The resumed cohorts count afresh: the rule then watches the pushes made after.
        counts = {
            k: v
            for k, v in guard["counts"].items()
            if k.rsplit("|", 1)[0] not in resumed and WHOLE_BATCH not in resumed
        }
        triggers = list(guard["triggers"])
        outcome = Outcome(data={"JobId": record["batch_id"], "ResumedCohorts": resumed})
        for name in resumed:
            event = {
                "batch_id": record["batch_id"],
                "product_key": record["product_key"],
                "kind": "RESUMED",
                "cohort": name,
                "rule": None,
                "counts": {},
                "event_time": now,
            }
            triggers.append(event)
            outcome.public_records.append(
                (TRIGGER_TOPIC, record["batch_id"], "RolloutTrigger", event)
            )
        updated = dict(
            record, paused_cohorts=[c for c in paused if c not in resumed], updated_at=now
        )
        control = {"action": "UPDATE", "batch": updated, "cancel_statuses": [], "event_time": now}
        outcome.writes[f"batch/{record['batch_id']}"] = updated
        outcome.writes[f"guard/{record['batch_id']}"] = dict(
            guard, counts=counts, triggers=triggers
        )
        outcome.controls.append(control)
        outcome.batches.append(updated)
        return outcome


def rollout_fields(store: ControlStore, batch: Record) -> dict[str, Any]:
    """QueryOTAJob's safe-rollout fields (only those the batch uses)."""
    data: dict[str, Any] = {}
    rules = [AbortRule.from_record(r) for r in batch.get("abort_rules") or ()]
    if rules:
        data["AbortRules"] = {
            "AbortRule": [
                {
                    "FailureKind": r.failure_kind.value,
                    "ThresholdPercent": r.threshold_percent,
                    "MinFinished": r.min_finished,
                    "Action": r.action.value,
                    "CohortBy": r.cohort_by.value,
                }
                for r in rules
            ]
        }
    if batch.get("paused_cohorts"):
        data["PausedCohorts"] = {"Cohort": list(batch["paused_cohorts"])}
    if batch.get("maintenance_windows"):
        data["MaintenanceWindows"] = {"MaintenanceWindow": list(batch["maintenance_windows"])}
    triggers = (store.get(f"guard/{batch['batch_id']}") or {"triggers": []})["triggers"]
    if triggers:
        data["RolloutTriggers"] = {
            "RolloutTrigger": [
                {
                    "Kind": t["kind"],
                    "Cohort": t["cohort"],
                    "Counts": dict(t["counts"]),
                    "Rule": t["rule"],
                    "EventTime": t["event_time"],
                }
                for t in triggers
            ]
        }
    return data
