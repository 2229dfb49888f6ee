"""Static batches: every scope, the version rules, and schedules on event time."""

from __future__ import annotations

from typing import Any

from otaflow.domain.batches import BatchScope, BatchStatus
from otaflow.domain.simulation import DAY, HOUR, MINUTE, Partition, firmware, make_batch

T = 5_000_000


def fleet(p: Partition, versions: dict[str, str], at: int = T) -> None:
    for dn, version in versions.items():
        p.version(dn, version, at)


def with_task(p: Partition, batch_id: str) -> set[str]:
    """Devices (of any product) that have a task of the batch."""
    return {e["device_name"] for e in p.events if e["batch_id"] == batch_id}


def test_all_devices_of_the_product_that_meet_the_criteria() -> None:
    p = Partition()
    fleet(p, {"a": "1.0", "b": "1.1", "on-dest": "2.0"})
    p.version("elsewhere", "1.0", T, pk="other")
    p.register("never-reported", T)
    p.start(make_batch("S", at=T + 1))
    assert with_task(p, "S") == {"a", "b"}
    task = p.state("a").tasks[0]
    assert (task.src_version, task.dest_version) == ("1.0", "2.0")


def test_source_version_filter_and_differential_package() -> None:
    p = Partition()
    fleet(p, {"a": "1.0", "b": "1.1", "c": "0.9"})
    p.start(make_batch("F", at=T + 1, src_versions=("1.0", "0.9")))
    assert with_task(p, "F") == {"a", "c"}
    q = Partition()
    fleet(q, {"a": "1.0", "b": "1.1", "c": "0.9"})
    q.start(make_batch("D", at=T + 1, fw=firmware("2.0", src_version="1.1")))
    assert with_task(q, "D") == {"b"}


def test_targeted_batch_takes_the_named_devices_only() -> None:
    p = Partition()
    fleet(p, {"a": "1.0", "b": "1.0", "c": "2.0"})
    batch = make_batch("T1", at=T + 1, scope=BatchScope.TARGETED)
    p.start(batch)
    assert with_task(p, "T1") == set()  # START alone matches nobody
    for dn in ("a", "c", "unknown"):
        p.target("T1", dn, T + 2)
    p.target("T1", "a", T + 3)  # named twice: one task
    assert with_task(p, "T1") == {"a"}
    assert len(p.history("a")) == 1
    assert not p.has_device("unknown")


def test_targeted_differential_only_its_source_version() -> None:
    p = Partition()
    fleet(p, {"a": "1.0", "b": "1.1"})
    p.start(make_batch("TD", at=T, scope=BatchScope.TARGETED, fw=firmware(src_version="1.1")))
    p.target("TD", "a", T + 1)
    p.target("TD", "b", T + 1)
    assert with_task(p, "TD") == {"b"}


def test_phased_batch_takes_the_devices_the_control_plane_picked() -> None:
    p = Partition()
    fleet(p, {f"d{i}": "1.0" for i in range(10)})
    p.start(make_batch("P", at=T + 1, scope=BatchScope.PHASED, phased_percent_thousandths=30000))
    for dn in ("d3", "d7", "d9"):
        p.target("P", dn, T + 2)
    assert with_task(p, "P") == {"d3", "d7", "d9"}


def test_regional_by_province_and_city() -> None:
    p = Partition()
    places = {
        "hz": ("Zhejiang", "Hangzhou"),
        "nb": ("Zhejiang", "Ningbo"),
        "nj": ("Jiangsu", "Nanjing"),
        "none": (None, None),
    }
    for dn, (province, city) in places.items():
        p.register(dn, T, province=province, city=city)
        p.version(dn, "1.0", T)
    p.start(make_batch("R1", at=T + 1, scope=BatchScope.REGIONAL, region="Zhejiang"))
    assert with_task(p, "R1") == {"hz", "nb"}
    q = Partition()
    for dn, (province, city) in places.items():
        q.register(dn, T, province=province, city=city)
        q.version(dn, "1.0", T)
    q.start(make_batch("R2", at=T + 1, scope=BatchScope.REGIONAL, region="Zhejiang", city="Ningbo"))
    assert with_task(q, "R2") == {"nb"}


def test_static_group_includes_every_subgroup_transitively() -> None:
    p = Partition()
    p.group("root", T)
    p.group("child", T, parent_id="root")
    p.group("grandchild", T, parent_id="child")
    p.group("sibling", T)
    for dn, groups in {
        "in-root": ["root"],
        "in-child": ["child"],
        "in-grandchild": ["sibling", "grandchild"],
        "in-sibling": ["sibling"],
        "nowhere": [],
    }.items():
        p.register(dn, T, groups=groups)
        p.version(dn, "1.0", T)
    p.start(make_batch("G", at=T + 1, scope=BatchScope.GROUP, group_id="root", group_type="STATIC"))
    assert with_task(p, "G") == {"in-root", "in-child", "in-grandchild"}
    p.start(
        make_batch(
            "G2",
            at=T + 2,
            scope=BatchScope.GROUP,
            group_id="child",
            group_type="STATIC",
            fw=firmware("2.0", firmware_id="f2"),
            overwrite_mode=2,
        )
    )
    assert with_task(p, "G2") == {"in-child", "in-grandchild"}


def test_static_batch_over_a_dynamic_group_takes_its_members_at_start() -> None:
    p = Partition()
    p.group("dg", T, expression="name like 'cam-%' and ota_module.version = '1.0'")
    fleet(p, {"cam-1": "1.0", "cam-2": "1.1", "door-1": "1.0"})
    p.start(make_batch("SD", at=T + 1, scope=BatchScope.GROUP, group_id="dg", group_type="DYNAMIC"))
    assert with_task(p, "SD") == {"cam-1"}
    p.version("cam-3", "1.0", T + 2)  # a static batch takes no later devices
    assert with_task(p, "SD") == {"cam-1"}


def test_a_static_batch_takes_no_device_that_appears_later() -> None:
    p = Partition()
    fleet(p, {"a": "1.0"})
    p.start(make_batch("S", at=T + 1))
    p.version("late", "1.0", T + 2)
    p.register("late2", T + 2)
    assert with_task(p, "S") == {"a"}


# -- schedules ----------------------------------------------------------------------------


def scheduled(start: int, end: int | None, **fields: Any) -> Partition:
    p = Partition()
    fleet(p, {"a": "1.0", "b": "1.0", "c": "1.0"})
    p.offline("c", T)
    batch = make_batch("SCH", at=T + 1, schedule_start=start, schedule_end=end, **fields)
    assert batch.status is BatchStatus.PLANNED
    p.start(batch)
    return p


def test_scheduled_batch_holds_its_tasks_until_the_start() -> None:
    start = T + 7 * DAY
    p = scheduled(start, None)
    assert with_task(p, "SCH") == {"a", "b", "c"}  # selected at creation, QUEUED
    assert not p.push_queue
    p.ask("a", T + 2)
    assert p.notifications[-1]["task_id"] is None  # not handed out before the start
    p.tick(start - 1)
    assert not p.push_queue
    p.tick(start)
    assert sorted(t["device_name"] for _, t in p.push_queue) == ["a", "b"]  # online ones
    p.release(start + 1)
    assert p.tasks("a") == [("SCH", "NOTIFIED")]
    p.online("c", start + 2 * HOUR)
    assert [t["device_name"] for _, t in p.push_queue] == ["c"]


def test_schedule_end_cancels_what_has_not_started() -> None:
    start, end = T + DAY, T + DAY + 2 * HOUR
    p = scheduled(start, end, need_confirm=False)
    p.version("d", "1.0", T)
    p.tick(start)
    p.release(start + 1)
    p.progress("a", 30, start + 2)  # a started; b notified; c offline and queued
    p.tick(end - 1)
    assert p.tasks("b") == [("SCH", "NOTIFIED")]
    p.tick(end)
    assert p.tasks("a") == [("SCH", "IN_PROGRESS")]
    assert p.tasks("b") == [("SCH", "CANCELED")]
    assert p.tasks("c") == [("SCH", "CANCELED")]
    desc = {e["desc"] for e in p.events if e["status"] == "CANCELED"}
    assert desc == {"schedule ended before the update started"}
    p.version("a", "2.0", end + MINUTE)  # the update in progress still finishes
    assert p.tasks("a") == [("SCH", "SUCCEEDED")]


def test_scheduled_unconfirmed_tasks_wait_for_confirmation_and_the_start() -> None:
    start = T + HOUR
    p = scheduled(start, start + 3 * HOUR, need_confirm=True)
    task_id = p.state("a").tasks[0].task_id
    p.command("CONFIRM", "a", T + 2, task_ids=[task_id])
    assert p.tasks("a") == [("SCH", "QUEUED")] and not p.push_queue
    p.tick(start)
    assert [t["device_name"] for _, t in p.push_queue] == ["a"]
    p.tick(start + 3 * HOUR)
    assert p.tasks("b") == [("SCH", "CANCELED")]  # never confirmed


def test_a_schedule_end_fires_on_the_devices_next_record_without_a_tick() -> None:
    p = scheduled(T + HOUR, T + 2 * HOUR)
    p.online("c", T + 3 * HOUR)
    assert p.tasks("c") == [("SCH", "CANCELED")]
    assert not p.push_queue


def test_targets_of_a_scheduled_batch_are_held_and_none_after_its_end() -> None:
    p = Partition()
    fleet(p, {"a": "1.0", "b": "1.0"})
    start, end = T + DAY, T + 2 * DAY
    p.start(
        make_batch("ST", at=T, scope=BatchScope.TARGETED, schedule_start=start, schedule_end=end)
    )
    p.target("ST", "a", T + 1)
    assert p.tasks("a") == [("ST", "QUEUED")] and not p.push_queue
    p.tick(start)
    assert len(p.push_queue) == 1
    p.target("ST", "b", end)  # too late: the batch has ended
    assert with_task(p, "ST") == {"a"}


def test_cancel_scheduled_tasks_before_the_start() -> None:
    p = scheduled(T + DAY, None)
    canceled = make_batch("SCH", at=T + 1, schedule_start=T + DAY, status=BatchStatus.CANCELED)
    p.control("CANCEL_TASKS", canceled, T + 2, statuses=["QUEUED", "CONFIRM"])
    assert {s for dn in "abc" for _, s in p.tasks(dn)} == {"CANCELED"}
    p.tick(T + DAY)
    assert not p.push_queue
