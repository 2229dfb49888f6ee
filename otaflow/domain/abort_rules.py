"""Abort and pause rules of a batch, per batch or per cohort. Pure.

A rule watches the finished tasks of a batch — all of them, or one *cohort* at a time
(the devices on one source version, one module, one region, one group) — and fires
once the failures of its kind reach a percentage of the finished tasks, after a
minimum number of finished tasks:

    failures(kind) * 10_000 >= threshold_hundredths * finished   and   finished >= min_finished

A fired ``PAUSE`` holds the pushes of that cohort (``Batch.paused_cohorts``) until an
operator resumes it (``ResumeOTAJob``); a fired ``CANCEL`` cancels the whole batch's
pending tasks and stops it taking new ones. Each firing is a ``RolloutTrigger`` record
on the public ``ota.rollout.triggers`` topic.

Outcomes are counted from the task events the device engine writes (see
``outcome_of``), by the device partitions, and summed by the control plane, which
owns the batch definitions (``otaflow.control.guard``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

from otaflow.domain.devices import DeviceState

# The engine's descs of a timed-out and a canceled task (``engine``; repeated, not imported,
# so this module does not depend on the engine).
TIMEOUT_DESC = "timeout"
CANCELED_DESC = "canceled by operator"
# The whole batch, as a cohort: what a batch-wide rule and a CANCEL pause.
WHOLE_BATCH = "*"


class FailureKind(StrEnum):
    FAILED = "FAILED"  # a failure step reported by the device (-1..-4)
    TIMEOUT = "TIMEOUT"  # no success within the batch's timeout
    REJECTED = "REJECTED"  # the app refused to confirm (a CONFIRM task canceled)
    ALL = "ALL"  # any of the three


class RuleAction(StrEnum):
    PAUSE = "PAUSE"
    CANCEL = "CANCEL"


class CohortBy(StrEnum):
    BATCH = "BATCH"
    SRC_VERSION = "SRC_VERSION"
    MODULE = "MODULE"
    REGION = "REGION"
    GROUP = "GROUP"


# What one finished task counts as (``ALL`` is the sum of the three failure kinds).
OUTCOMES = ("SUCCEEDED", "FAILED", "TIMEOUT", "REJECTED")


class RuleError(ValueError):
    """A rule the API refuses; ``param`` names the parameter at fault."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param
        self.message = message


@dataclass(frozen=True, slots=True)
class AbortRule:
    failure_kind: FailureKind
    threshold_hundredths: int  # 30.5 % -> 3050
    min_finished: int
    action: RuleAction = RuleAction.PAUSE
    cohort_by: CohortBy = CohortBy.BATCH

    @property
    def threshold_percent(self) -> str:
        return f"{Decimal(self.threshold_hundredths) / 100:.2f}"

    def fires(self, counts: Mapping[str, int]) -> bool:
        """Do these counts of one cohort (``OUTCOMES`` keys) reach the rule?"""
        finished = sum(counts.get(o, 0) for o in OUTCOMES)
        if finished < self.min_finished or finished == 0:
            return False
        return failures(counts, self.failure_kind) * 10_000 >= self.threshold_hundredths * finished

    def to_record(self) -> dict[str, Any]:
        return {
            "failure_kind": self.failure_kind.value,
            "threshold_hundredths": self.threshold_hundredths,
            "min_finished": self.min_finished,
            "action": self.action.value,
            "cohort_by": self.cohort_by.value,
        }

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> AbortRule:
        return cls(
            failure_kind=FailureKind(rec["failure_kind"]),
            threshold_hundredths=int(rec["threshold_hundredths"]),
            min_finished=int(rec["min_finished"]),
            action=RuleAction(rec["action"]),
            cohort_by=CohortBy(rec["cohort_by"]),
        )


def failures(counts: Mapping[str, int], kind: FailureKind) -> int:
    if kind is FailureKind.ALL:
        return sum(counts.get(k, 0) for k in ("FAILED", "TIMEOUT", "REJECTED"))
    return counts.get(kind.value, 0)


def _enum(cls: type[StrEnum], value: Any, param: str) -> Any:
    try:
        return cls(str(value).upper())
    except ValueError:
        choices = " | ".join(m.value for m in cls)
        raise RuleError(param, f"must be one of {choices}") from None


def parse_rules(items: Iterable[Mapping[str, Any]], name: str = "AbortRule") -> list[AbortRule]:
    """``AbortRule.N.FailureKind/ThresholdPercent/MinFinished/Action/CohortBy`` (unflattened)."""
    rules = []
    for n, item in enumerate(items, start=1):
        prefix = f"{name}.{n}"
        if not isinstance(item, Mapping):
            raise RuleError(prefix, "must be given as fields (FailureKind, ThresholdPercent, ...)")
        kind = _enum(FailureKind, item.get("FailureKind") or "ALL", f"{prefix}.FailureKind")
        raw = item.get("ThresholdPercent")
        if raw is None:
            raise RuleError(f"{prefix}.ThresholdPercent", "is required")
        try:
            percent = Decimal(str(raw))
        except InvalidOperation:
            raise RuleError(f"{prefix}.ThresholdPercent", f"{raw!r} is not a number") from None
        exponent = percent.as_tuple().exponent
        if (
            not percent.is_finite()
            or not 0 < percent <= 100
            or (isinstance(exponent, int) and exponent < -2)
        ):
            raise RuleError(
                f"{prefix}.ThresholdPercent", "must be above 0 and at most 100, two decimals"
            )
        raw_min = item.get("MinFinished") or "1"
        try:
            min_finished = int(str(raw_min))
        except ValueError:
            raise RuleError(f"{prefix}.MinFinished", f"{raw_min!r} is not an integer") from None
        if not 1 <= min_finished <= 1_000_000_000:
            raise RuleError(f"{prefix}.MinFinished", "must be 1 or more")
        action = _enum(RuleAction, item.get("Action") or "PAUSE", f"{prefix}.Action")
        cohort_by = _enum(CohortBy, item.get("CohortBy") or "BATCH", f"{prefix}.CohortBy")
        rules.append(AbortRule(kind, int(percent * 100), min_finished, action, cohort_by))
    if len(rules) > 10:
        raise RuleError(name, "at most 10 rules per batch")
    return rules


# -- outcomes and cohorts -----------------------------------------------------------------


def outcome_of(event: Mapping[str, Any]) -> str | None:
    """What a task event counts as for the rules (None: not a finished outcome).

    A task retried after a failure counts each failure: the rule watches attempts, as a
    bad package fails again on retry. Operators' and schedules' cancels are not counted.
    """
    status, previous = event["status"], event.get("previous_status")
    if status == "SUCCEEDED":
        return "SUCCEEDED"
    if status == "FAILED":
        return "TIMEOUT" if event.get("desc") == TIMEOUT_DESC else "FAILED"
    if status == "CANCELED" and previous == "CONFIRM" and event.get("desc") == CANCELED_DESC:
        # The app refused to confirm: its CONFIRM task canceled (CancelUnconfirmedTask).
        return "REJECTED"
    return None


def cohort_of(
    cohort_by: CohortBy, module: str, src_version: str | None, state: DeviceState | None
) -> str:
    """The cohort key of a device's task, ``DIMENSION=value`` (``*`` for the batch)."""
    if cohort_by is CohortBy.BATCH:
        return WHOLE_BATCH
    if cohort_by is CohortBy.SRC_VERSION:
        value = src_version or ""
    elif cohort_by is CohortBy.MODULE:
        value = module
    elif cohort_by is CohortBy.REGION:
        value = "/".join(p for p in (state.province, state.city) if p) if state else ""
    else:
        # A device in several groups belongs to the cohort of its first group, by id.
        groups = sorted(state.groups) if state else []
        value = groups[0] if groups else ""
    return f"{cohort_by.value}={value}"


def cohorts_of(module: str, src_version: str | None, state: DeviceState | None) -> list[str]:
    """Every cohort a device's task belongs to (one per dimension)."""
    return [cohort_of(c, module, src_version, state) for c in CohortBy]


def is_held(
    paused: Iterable[str], module: str, src_version: str | None, state: DeviceState
) -> bool:
    """Is a task of this device in a paused cohort (or a paused batch)?"""
    paused = set(paused)
    if not paused:
        return False
    return bool(paused & set(cohorts_of(module, src_version, state)))


def count_outcomes(
    events: Iterable[tuple[str, Mapping[str, Any]]],
    state_of: Any = None,
) -> dict[str, Counter[str]]:
    """Per batch: ``"cohort|OUTCOME"`` -> count, over the events of one envelope.

    ``state_of(key)`` gives the device state for region and group cohorts (None: those
    cohorts are counted under an empty value).
    """
    out: dict[str, Counter[str]] = {}
    for key, event in events:
        outcome = outcome_of(event)
        if outcome is None:
            continue
        state = state_of(key) if state_of is not None else None
        counter = out.setdefault(event["batch_id"], Counter())
        for cohort in cohorts_of(event["module"], event.get("src_version"), state):
            counter[f"{cohort}|{outcome}"] += 1
    return out


@dataclass(frozen=True, slots=True)
class Trigger:
    rule: AbortRule
    cohort: str
    counts: dict[str, int]


def evaluate(
    rules: Iterable[AbortRule],
    counts: Mapping[str, int],
    already: Iterable[str],
) -> list[Trigger]:
    """The rules that fire on ``counts`` (``"cohort|OUTCOME"`` -> n) for cohorts not
    already stopped (``already``: cohort keys paused or canceled)."""
    by_cohort: dict[str, dict[str, int]] = {}
    for key, n in counts.items():
        cohort, outcome = key.rsplit("|", 1)
        by_cohort.setdefault(cohort, {})[outcome] = n
    stopped = set(already)
    fired: list[Trigger] = []
    for rule in rules:
        prefix = WHOLE_BATCH if rule.cohort_by is CohortBy.BATCH else f"{rule.cohort_by.value}="
        for cohort in sorted(by_cohort):
            if not (cohort == prefix or (cohort.startswith(prefix) and prefix != WHOLE_BATCH)):
                continue
            if cohort in stopped or WHOLE_BATCH in stopped:
                continue
            if rule.fires(by_cohort[cohort]):
                fired.append(Trigger(rule, cohort, dict(by_cohort[cohort])))
                stopped.add(WHOLE_BATCH if rule.action is RuleAction.CANCEL else cohort)
    return fired
