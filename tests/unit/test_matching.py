"""Pure matching decisions: which dynamic batches match, in which order, and admission."""

from __future__ import annotations

from otaflow.domain.batches import Batch, BatchStatus
from otaflow.domain.devices import DeviceState
from otaflow.domain.match_cap import MATCH_CAP, may_match_again
from otaflow.domain.matching import admit, dynamic_candidates
from otaflow.domain.simulation import dynamic_batch, firmware, group_batch, make_batch
from otaflow.domain.tasks import Task, TaskStatus


def device(version: str | None = "1.0", module: str = "default") -> DeviceState:
    state = DeviceState("pk", "d1")
    if version is not None:
        state.modules[module] = version
    return state


def task(batch_id: str, status: TaskStatus, module: str = "default") -> Task:
    return Task(f"t-{batch_id}", batch_id, module, "2.0", status, 0, 0)


def ids(batches: list[Batch]) -> list[str]:
    return [b.batch_id for b in batches]


def candidates(
    batches: list[Batch],
    state: DeviceState,
    *,
    now: int = 1000,
    version_trigger: bool = True,
    member_of: set[str] | None = None,
) -> list[str]:
    return ids(
        dynamic_candidates(
            batches,
            state,
            "default",
            now,
            version_trigger=version_trigger,
            member_of=member_of or set(),
        )
    )


def test_precedence_group_based_first_then_most_recent() -> None:
    old_v = dynamic_batch("v-old", ["1.0"], at=10)
    new_v = dynamic_batch("v-new", ["1.0"], at=20)
    old_g = group_batch("g-old", "dg", at=5)
    new_g = group_batch("g-new", "dg2", at=15)
    found = candidates([old_v, new_v, old_g, new_g], device(), member_of={"dg", "dg2"})
    assert found == ["g-new", "g-old", "v-new", "v-old"]


def test_version_rules_destination_source_filter_and_differential() -> None:
    batches = [
        dynamic_batch("filter", ["1.0", "1.1"]),
        dynamic_batch("other", ["0.9"]),
        dynamic_batch("diff", fw=firmware("2.0", src_version="1.0", firmware_id="d")),
        dynamic_batch("diff-other", fw=firmware("2.0", src_version="0.9", firmware_id="e")),
    ]
    assert set(candidates(batches, device("1.0"))) == {"filter", "diff"}
    assert candidates(batches, device("2.0")) == []  # already on the destination
    assert candidates(batches, device(None)) == []  # never reported the module


def test_only_running_batches_with_an_active_strategy_and_the_right_module() -> None:
    batches = [
        dynamic_batch("stopped", ["1.0"], strategy_active=False),
        dynamic_batch("canceled", ["1.0"], status=BatchStatus.CANCELED),
        dynamic_batch("mcu", ["1.0"], fw=firmware(module="mcu")),
        dynamic_batch("ok", ["1.0"]),
    ]
    assert candidates(batches, device()) == ["ok"]


def test_dynamic_mode_2_only_from_creation_on() -> None:
    batch = dynamic_batch("m2", ["1.0"], at=5000, dynamic_mode=2)
    assert candidates([batch], device(), now=4999) == []
    assert candidates([batch], device(), now=5000) == ["m2"]


def test_version_based_needs_a_version_trigger_and_the_cap() -> None:
    batch = dynamic_batch("v", ["1.0"])
    state = device()
    assert candidates([batch], state, version_trigger=False) == []
    state.match_counts["v"] = MATCH_CAP - 1
    assert candidates([batch], state) == ["v"]
    state.match_counts["v"] = MATCH_CAP
    assert candidates([batch], state) == []
    assert may_match_again(MATCH_CAP - 1) and not may_match_again(MATCH_CAP)


def test_group_based_needs_membership_and_no_match_since_joining() -> None:
    batch = group_batch("g", "dg")
    state = device()
    assert candidates([batch], state, member_of=set()) == []
    assert candidates([batch], state, member_of={"dg"}, version_trigger=False) == ["g"]
    state.group_matches.append("g")
    assert candidates([batch], state, member_of={"dg"}) == []
    # Group-based batches have no cap.
    state.group_matches.clear()
    state.match_counts["g"] = 50
    assert candidates([batch], state, member_of={"dg"}) == ["g"]


def test_a_batch_holding_an_active_task_still_matches_and_outranks_older_ones() -> None:
    current = dynamic_batch("current", ["1.0"], at=20)
    older = dynamic_batch("older", ["1.0"], at=10)
    state = device()
    state.match_counts["current"] = MATCH_CAP  # capped, but its task is still active
    state.tasks.append(task("current", TaskStatus.QUEUED))
    assert candidates([current, older], state) == ["current", "older"]


def test_admission_single_module() -> None:
    plain = make_batch("new")
    override = make_batch("new2", overwrite_mode=2)
    state = device()
    assert admit(state, plain).admitted
    pending = task("old", TaskStatus.NOTIFIED)
    state.tasks.append(pending)
    assert not admit(state, plain).admitted
    decision = admit(state, override)
    assert decision.admitted and decision.cancels == (pending,)
    assert not admit(state, override, may_cancel=False).admitted
    pending.status = TaskStatus.IN_PROGRESS
    assert not admit(state, override).admitted  # in progress is never overridden


def test_admission_multi_module_replaces_only_the_same_modules_pending_task() -> None:
    batch = make_batch("m", fw=firmware(module="mcu"), multi_module=True)
    state = device()
    other = task("wifi", TaskStatus.IN_PROGRESS, module="wifi")
    same = task("old-mcu", TaskStatus.QUEUED, module="mcu")
    state.tasks += [other, same]
    decision = admit(state, batch)
    assert decision.admitted and decision.cancels == (same,)
    same.status = TaskStatus.IN_PROGRESS
    assert not admit(state, batch).admitted


def test_admission_multi_module_at_most_five_modules_at_once() -> None:
    batch = make_batch("m", fw=firmware(module="m5"), multi_module=True)
    state = device()
    state.tasks += [task(f"b{i}", TaskStatus.QUEUED, module=f"m{i}") for i in range(4)]
    assert admit(state, batch).admitted  # the fifth module
    state.tasks.append(task("b9", TaskStatus.CONFIRM, module="m9"))
    decision = admit(state, batch)
    assert not decision.admitted and "five" in decision.reason
