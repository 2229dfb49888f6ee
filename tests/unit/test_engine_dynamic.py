"""Dynamic batches: version- and group-based matching, the cap, precedence, updates, cancels."""

from __future__ import annotations

from otaflow.domain.batches import BatchStatus
from otaflow.domain.match_cap import MATCH_CAP
from otaflow.domain.simulation import (
    DAY,
    MINUTE,
    Partition,
    dynamic_batch,
    firmware,
    group_batch,
)

T = 9_000_000


def fail_current(p: Partition, dn: str, at: int) -> None:
    p.release(at)
    p.progress(dn, -1, at + 1)


def test_version_based_matches_existing_devices_and_later_reports() -> None:
    p = Partition()
    p.version("existing", "1.0", T)
    p.version("other", "1.5", T)
    p.start(dynamic_batch("V", ["1.0"], at=T + 1))
    assert p.tasks("existing") == [("V", "QUEUED")]
    assert p.tasks("other") == []
    p.version("activated", "1.0", T + 2)  # a newly activated device reports its version
    p.version("other", "1.0", T + 3)  # a device that now reports a matching version
    assert p.tasks("activated") == [("V", "QUEUED")]
    assert p.tasks("other") == [("V", "QUEUED")]


def test_dynamic_mode_2_only_versions_reported_after_creation() -> None:
    p = Partition()
    p.version("existing", "1.0", T)
    p.start(dynamic_batch("V2", ["1.0"], at=T + 1, dynamic_mode=2))
    assert p.tasks("existing") == []
    p.version("existing", "1.0", T + 2)  # reported again after creation
    assert p.tasks("existing") == [("V2", "QUEUED")]


def test_a_device_matches_a_version_based_batch_at_most_ten_times() -> None:
    p = Partition()
    p.start(dynamic_batch("V", ["1.0"], at=T))
    for i in range(MATCH_CAP + 2):
        p.version("d1", "1.0", T + i * 10)
        fail_current(p, "d1", T + i * 10 + 1)
    assert len({e["task_id"] for e in p.events}) == MATCH_CAP
    assert p.state("d1").match_counts["V"] == MATCH_CAP
    history = p.history("d1")
    p.version("d1", "1.0", T + 1000)  # the 11th matching report creates no task
    assert p.history("d1") == history
    # The cap is per batch: another batch on the same version still matches.
    p.start(dynamic_batch("W", ["1.0"], at=T + 2000, fw=firmware("3.0", firmware_id="f3")))
    assert p.tasks("d1")[-1] == ("W", "QUEUED")


def test_a_repeated_report_while_a_task_is_pending_does_not_count() -> None:
    p = Partition()
    p.start(dynamic_batch("V", ["1.0"], at=T))
    for i in range(20):
        p.version("d1", "1.0", T + i)
    assert p.state("d1").match_counts["V"] == 1
    assert p.tasks("d1") == [("V", "QUEUED")]


def test_precedence_group_based_first_then_the_most_recent() -> None:
    p = Partition()
    p.group("dg", T, expression="name like 'g-%'")
    p.start(dynamic_batch("old", ["1.0"], at=T + 1))
    p.start(dynamic_batch("new", ["1.0"], at=T + 2, fw=firmware("2.1", firmware_id="f21")))
    p.start(group_batch("grp", "dg", at=T + 0, fw=firmware("2.2", firmware_id="f22")))
    p.version("plain", "1.0", T + 3)
    p.version("g-1", "1.0", T + 3)
    assert p.tasks("plain") == [("new", "QUEUED")]
    assert p.tasks("g-1") == [("grp", "QUEUED")]


def test_the_top_batch_blocked_means_no_task_not_a_lower_batch() -> None:
    p = Partition()
    p.start(dynamic_batch("low", ["1.0"], at=T, overwrite_mode=2))
    p.version("d1", "1.0", T + 1)
    assert p.tasks("d1") == [("low", "QUEUED")]
    p.start(dynamic_batch("top", ["1.0"], at=T + 2, fw=firmware("3.0", firmware_id="f3")))
    # 'top' (mode 1) is blocked by the pending task; 'low' is not tried again.
    p.version("d1", "1.0", T + 3)
    assert p.tasks("d1") == [("low", "QUEUED")]
    assert p.state("d1").match_counts == {"low": 1}


def test_a_newer_batch_that_overrides_replaces_a_pending_task_of_an_older_one() -> None:
    p = Partition()
    p.start(dynamic_batch("old", ["1.0"], at=T))
    p.version("d1", "1.0", T + 1)
    p.start(
        dynamic_batch("new", ["1.0"], at=T + 2, overwrite_mode=2, fw=firmware("3", firmware_id="x"))
    )
    assert p.tasks("d1") == [("old", "CANCELED"), ("new", "QUEUED")]
    p.version("d1", "1.0", T + 3)  # 'new' is the current match: nothing changes
    assert p.tasks("d1") == [("old", "CANCELED"), ("new", "QUEUED")]


def test_group_based_members_at_start_and_devices_that_join_later() -> None:
    p = Partition()
    p.group("zj", T, expression="province = 'Zhejiang'")
    p.register("member", T, province="Zhejiang")
    p.version("member", "1.0", T)
    p.register("outsider", T, province="Jiangsu")
    p.version("outsider", "1.0", T)
    p.start(group_batch("G", "zj", at=T + 1))
    assert p.tasks("member") == [("G", "QUEUED")]
    assert p.tasks("outsider") == []
    p.register("outsider", T + 2, province="Zhejiang", action="UPDATE")  # joins the group
    assert p.tasks("outsider") == [("G", "QUEUED")]
    assert p.state("outsider").dynamic_groups == ["zj"]


def test_group_join_by_a_version_report_and_by_an_expression_change() -> None:
    p = Partition()
    p.group("mcu1", T, expression="ota_module.name = 'mcu' and ota_module.version = '1.0'")
    p.start(group_batch("G", "mcu1", at=T, fw=firmware("2.0", module="mcu", firmware_id="fm")))
    p.version("d1", "0.9", T + 1, module="mcu")
    assert p.tasks("d1") == []
    p.version("d1", "1.0", T + 2, module="mcu")  # now matches the expression: joins
    assert p.tasks("d1") == [("G", "QUEUED")]
    p.version("d2", "0.9", T + 3, module="mcu")
    p.group(
        "mcu1",
        T + 4,
        expression="ota_module.name = 'mcu' and ota_module.version in ('0.9', '1.0')",
    )
    assert p.tasks("d2") == [("G", "QUEUED")]


def test_group_join_on_another_module_triggers_the_batch_of_its_module() -> None:
    p = Partition()
    p.group("wifi2", T, expression="ota_module.name = 'wifi' and ota_module.version = '2'")
    p.version("d1", "1.0", T)  # default module on 1.0
    p.start(group_batch("G", "wifi2", at=T + 1))  # updates the default module
    assert p.tasks("d1") == []
    p.version("d1", "2", T + 2, module="wifi")
    assert p.tasks("d1") == [("G", "QUEUED")]


def test_failed_left_and_rejoined_is_matched_again_but_not_while_staying() -> None:
    p = Partition()
    p.group("zj", T, expression="province = 'Zhejiang'")
    p.register("d1", T, province="Zhejiang")
    p.version("d1", "1.0", T)
    p.start(group_batch("G", "zj", at=T + 1))
    fail_current(p, "d1", T + 2)
    assert p.tasks("d1") == [("G", "FAILED")]
    p.version("d1", "1.0", T + 10)  # still in the group: not matched again
    p.register("d1", T + 11, province="Zhejiang", action="UPDATE")
    assert p.tasks("d1") == [("G", "FAILED")]
    p.register("d1", T + 12, province="Jiangsu", action="UPDATE")  # leaves
    assert p.state("d1").dynamic_groups == [] and p.state("d1").group_matches == []
    p.register("d1", T + 13, province="Zhejiang", action="UPDATE")  # rejoins
    assert p.tasks("d1") == [("G", "FAILED"), ("G", "QUEUED")]
    assert len({e["task_id"] for e in p.events}) == 2


def test_group_based_differential_only_matches_its_source_version() -> None:
    p = Partition()
    p.group("all", T, expression="product_key = 'pk'")
    p.start(group_batch("G", "all", at=T, fw=firmware("2.0", src_version="1.0", firmware_id="d")))
    p.version("d1", "0.9", T + 1)
    assert p.tasks("d1") == []  # joined, but not on the package's source version
    p.version("d1", "1.0", T + 2)  # then reports it: matched
    assert p.tasks("d1") == [("G", "QUEUED")]


def test_deleted_dynamic_group_matches_no_new_device_and_keeps_tasks() -> None:
    p = Partition()
    p.group("zj", T, expression="province = 'Zhejiang'")
    p.register("d1", T, province="Zhejiang")
    p.version("d1", "1.0", T)
    p.start(group_batch("G", "zj", at=T + 1))
    p.group("zj", T + 2, expression="province = 'Zhejiang'", deleted=True)
    p.register("d2", T + 3, province="Zhejiang")
    p.version("d2", "1.0", T + 3)
    assert p.tasks("d2") == []
    assert p.tasks("d1") == [("G", "QUEUED")]


def test_adding_source_versions_matches_devices_already_on_them() -> None:
    p = Partition()
    p.version("on-10", "1.0", T)
    p.version("on-11", "1.1", T)
    p.version("on-12", "1.2", T)
    batch = dynamic_batch("V", ["1.0"], at=T + 1)
    p.start(batch)
    assert p.tasks("on-11") == []
    p.control("UPDATE", batch.with_changes(src_versions=("1.0", "1.1"), updated_at=T + 2), T + 2)
    assert p.tasks("on-11") == [("V", "QUEUED")]
    assert p.tasks("on-10") == [("V", "QUEUED")]  # untouched, no second task
    assert p.tasks("on-12") == []
    # Removing a version does not touch existing tasks.
    p.control("UPDATE", batch.with_changes(src_versions=("1.2",), updated_at=T + 3), T + 3)
    assert p.tasks("on-10") == [("V", "QUEUED")]
    assert p.tasks("on-12") == [("V", "QUEUED")]


def test_a_timeout_change_applies_to_new_tasks_only() -> None:
    p = Partition()
    batch = dynamic_batch("V", ["1.0"], at=T, timeout_minutes=10)
    p.start(batch)
    p.version("early", "1.0", T + 1)
    p.control("UPDATE", batch.with_changes(timeout_minutes=60), T + 2)
    p.version("late", "1.0", T + 3)
    p.release(T + 4)
    p.progress("early", 1, T + 5)
    p.progress("late", 1, T + 5)
    p.tick(T + 5 + 10 * MINUTE)
    assert p.tasks("early") == [("V", "FAILED")]
    assert p.tasks("late") == [("V", "IN_PROGRESS")]
    p.tick(T + 5 + 60 * MINUTE)
    assert p.tasks("late") == [("V", "FAILED")]


def test_cancel_strategy_stops_matching_and_leaves_tasks_alone() -> None:
    p = Partition()
    batch = dynamic_batch("V", ["1.0"], at=T)
    p.start(batch)
    p.version("d1", "1.0", T + 1)
    stopped = batch.with_changes(status=BatchStatus.CANCELED, strategy_active=False)
    p.control("CANCEL_STRATEGY", stopped, T + 2)
    p.version("d2", "1.0", T + 3)
    assert p.tasks("d2") == []
    # d1's task carries on: pushed, progressing, succeeding.
    p.release(T + 4)
    p.progress("d1", 50, T + 5)
    p.version("d1", "2.0", T + 6)
    assert p.history("d1") == ["QUEUED", "NOTIFIED", "IN_PROGRESS", "SUCCEEDED"]


def test_a_successful_device_is_not_matched_again_on_its_new_version() -> None:
    p = Partition()
    p.start(dynamic_batch("V", ["1.0"], at=T))
    p.version("d1", "1.0", T + 1)
    p.release(T + 2)
    p.version("d1", "2.0", T + 3)
    p.version("d1", "2.0", T + 4)
    assert p.tasks("d1") == [("V", "SUCCEEDED")]


def test_adding_a_version_does_not_rematch_devices_on_the_old_ones() -> None:
    p = Partition()
    batch = dynamic_batch("V", ["1.0"], at=T)
    p.start(batch)
    p.version("d1", "1.0", T + 1)
    p.version("d1", "1.1", T + 1, module="mcu")  # mentions 1.1, on another module
    fail_current(p, "d1", T + 2)
    p.control("UPDATE", batch.with_changes(src_versions=("1.0", "1.1")), T + 3)
    assert p.tasks("d1") == [("V", "FAILED")]
    assert p.state("d1").match_counts == {"V": 1}


def test_dynamic_mode_2_does_not_match_devices_already_on_added_versions() -> None:
    p = Partition()
    batch = dynamic_batch("V", ["1.0"], at=T, dynamic_mode=2)
    p.start(batch)
    p.version("d1", "1.1", T + 1)
    p.control("UPDATE", batch.with_changes(src_versions=("1.0", "1.1")), T + 2)
    assert p.tasks("d1") == []
    p.version("d1", "1.1", T + 3)
    assert p.tasks("d1") == [("V", "QUEUED")]


def test_a_canceled_timeout_applies_to_new_tasks_only() -> None:
    """UpdateOTAJob TimeoutInMinutes=0: tasks made after it have no timeout; earlier keep theirs."""
    p = Partition()
    batch = dynamic_batch("V", ["1.0"], at=T, timeout_minutes=10)
    p.start(batch)
    p.version("early", "1.0", T + 1)
    p.control("UPDATE", batch.with_changes(timeout_minutes=None), T + 2)
    p.version("late", "1.0", T + 3)
    p.release(T + 4)
    p.progress("early", 1, T + 5)
    p.progress("late", 1, T + 5)
    p.tick(T + 5 + 10 * MINUTE)
    assert p.tasks("early") == [("V", "FAILED")]
    p.tick(T + 5 + 30 * DAY)
    assert p.tasks("late") == [("V", "IN_PROGRESS")]
