"""Dynamic batches on real Kafka: the 10-match cap, precedence, group joins, edits, cancels."""

from __future__ import annotations

import pytest

from otaflow.domain.batches import BatchStatus
from otaflow.domain.simulation import dynamic_batch, firmware, group_batch
from tests.integration.conftest import Otaflow
from tests.integration.engine_support import (
    T0,
    EngineDriver,
    S,
    check_task_view,
    devices_with,
    settle,
    task_statuses,
)

pytestmark = pytest.mark.integration


def test_dynamic_matching_cap_precedence_groups_edits_and_cancel(otaflow: Otaflow) -> None:
    otaflow.start_worker()
    drive = EngineDriver(otaflow)
    reader = otaflow.task_events()

    # The 10-match cap: a device that fails and reports its old version again is
    # matched again, 10 times; the 11th matching report creates no task.
    cap = dynamic_batch("cap", ["1.0"], at=T0, product_key="pkCap", need_push=False)
    drive.start(cap)
    at = T0 + S
    for _ in range(11):
        drive.version("pkCap", "d1", "1.0", at)
        drive.report("pkCap", "d1", "FIRMWARE_GET", at + 1, message_id="7")
        drive.progress("pkCap", "d1", -2, at + 2, desc="http 404")
        at += 10 * S
    # Written after the 11th report to the same partition, so applied after it: the
    # next batch on the same version finds the device free and capped for 'cap'.
    drive.start(dynamic_batch("cap-next", ["1.0"], at=at, product_key="pkCap", fw=firmware("3.0")))
    # Precedence: group-based before version-based, then the most recent.
    drive.group("gdev", T0, expression="name like 'g-%'")
    drive.start(dynamic_batch("v-old", ["1.1"], at=T0, product_key="pkPrec"))
    drive.start(
        dynamic_batch("v-new", ["1.1"], at=T0 + S, product_key="pkPrec", fw=firmware("2.1"))
    )
    drive.start(group_batch("grp", "gdev", at=T0, product_key="pkPrec", fw=firmware("2.2")))
    drive.version("pkPrec", "plain", "1.1", T0 + 2 * S)
    drive.version("pkPrec", "g-1", "1.1", T0 + 2 * S)
    # Group join, failure, leave and rejoin.
    drive.group("zj", T0, expression="province = 'Zhejiang' and ota_module.version = '1.0'")
    drive.register("pkGrp", "member", T0, province="Zhejiang")
    drive.version("pkGrp", "member", "1.0", T0)
    drive.register("pkGrp", "joiner", T0, province="Jiangsu")
    drive.version("pkGrp", "joiner", "1.0", T0)
    drive.send()
    drive.start(group_batch("zjb", "zj", at=T0 + S, product_key="pkGrp", need_push=False))
    drive.register("pkGrp", "joiner", T0 + 2 * S, province="Zhejiang", action="UPDATE")
    drive.report("pkGrp", "member", "FIRMWARE_GET", T0 + 3 * S, message_id="1")
    drive.progress("pkGrp", "member", -4, T0 + 4 * S)
    drive.version("pkGrp", "member", "1.0", T0 + 5 * S)  # still in the group: no new task
    drive.register("pkGrp", "member", T0 + 6 * S, province="Jiangsu", action="UPDATE")
    drive.register("pkGrp", "member", T0 + 7 * S, province="Zhejiang", action="UPDATE")
    # Source versions added to a running batch match the devices already on them.
    drive.version("pkUpd", "on-10", "1.0", T0)
    drive.version("pkUpd", "on-12", "1.2", T0)
    drive.version("pkUpd", "on-13", "1.3", T0)
    upd = dynamic_batch("upd", ["1.0"], at=T0 + S, product_key="pkUpd")
    drive.start(upd)
    drive.control("UPDATE", upd.with_changes(src_versions=("1.0", "1.2")), T0 + 2 * S)
    # CancelOTAStrategyByJob stops matching; the tasks already made carry on.
    stop = dynamic_batch("stop", ["1.0"], at=T0, product_key="pkStop", need_push=False)
    drive.start(stop)
    drive.version("pkStop", "early", "1.0", T0 + S)
    drive.send()
    canceled = stop.with_changes(status=BatchStatus.CANCELED, strategy_active=False)
    drive.control("CANCEL_STRATEGY", canceled, T0 + 2 * S)
    drive.version("pkStop", "late", "1.0", T0 + 3 * S)
    drive.report("pkStop", "early", "FIRMWARE_GET", T0 + 4 * S, message_id="2")
    drive.version("pkStop", "early", "2.0", T0 + 5 * S)
    drive.send()

    # The last record of each scenario, as a marker that everything before it is applied.
    reader.wait_for(
        lambda v: (
            any(e["device_name"] == "early" and e["status"] == "SUCCEEDED" for e in v)
            and devices_with(v, "cap-next") == {"d1"}
            and len(devices_with(v, "zjb")) == 2
            and sum(e["batch_id"] == "zjb" for e in v) >= 5
        ),
        what="every scenario",
    )
    events = settle(reader)

    cap_tasks = {e["task_id"] for e in events if e["batch_id"] == "cap"}
    assert len(cap_tasks) == 10
    assert task_statuses(events, "cap") == {"d1": ["FAILED"] * 10}
    assert {e["desc"] for e in events if e["status"] == "FAILED"} >= {"download failed: http 404"}

    assert devices_with(events, "grp") == {"g-1"}
    assert devices_with(events, "v-new") == {"plain"}
    assert devices_with(events, "v-old") == set()

    assert task_statuses(events, "zjb") == {"member": ["FAILED", "QUEUED"], "joiner": ["QUEUED"]}

    assert devices_with(events, "upd") == {"on-10", "on-12"}

    assert task_statuses(events, "stop") == {"early": ["SUCCEEDED"]}
    check_task_view(events)
