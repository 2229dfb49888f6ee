"""A dynamic batch end to end on the real broker, driven purely by Kafka records."""

from __future__ import annotations

import pytest

from otaflow import topics
from otaflow.codec import codec
from otaflow.device_keys import device_key
from tests.integration.conftest import Otaflow, statuses_by_task
from tests.integration.engine_support import T0
from tests.integration.rollout_support import MINUTE, dynamic_batch

CODEC = codec()

pytestmark = pytest.mark.integration


def test_dynamic_batch_matches_pushes_and_finishes_tasks(otaflow: Otaflow) -> None:
    otaflow.start_worker()
    pk = "pkDyn"
    job_id = dynamic_batch(otaflow, pk, MaximumPerMinute=100)
    devices = [f"dev{i}" for i in range(20)]
    for dn in devices:
        otaflow.report(pk, dn, "VERSION", T0 + 1000, version="1.0")
    # A device on another version must not match.
    otaflow.report(pk, "other", "VERSION", T0 + 1000, version="0.9")
    otaflow.flush()
    events = otaflow.task_events()
    events.wait_for(lambda v: sum(e["status"] == "QUEUED" for e in v) == 20, what="20 queued")
    otaflow.tick_through(T0 + 2000, T0 + MINUTE - 1)
    events.wait_for(lambda v: sum(e["status"] == "NOTIFIED" for e in v) == 20, what="notified")
    notes = otaflow.notifications().wait_for(lambda v: len(v) == 20, what="20 notifications")
    assert {n["device_name"] for n in notes} == set(devices)
    assert all(n["batch_id"] == job_id and n["firmware"]["version"] == "2.0" for n in notes)

    for dn in devices[:10]:
        otaflow.report(pk, dn, "PROGRESS", T0 + 2 * MINUTE, step=50)
        otaflow.report(pk, dn, "VERSION", T0 + 3 * MINUTE, version="2.0")
    for dn in devices[10:]:
        otaflow.report(pk, dn, "PROGRESS", T0 + 2 * MINUTE, step=-2, desc="http 500")
    otaflow.flush()
    events.wait_for(
        lambda v: sum(e["status"] in ("SUCCEEDED", "FAILED") for e in v) == 20, what="finals"
    )
    by_task = statuses_by_task(events.values())
    assert len(by_task) == 20
    finals = sorted(s[-1] for s in by_task.values())
    assert finals == ["FAILED"] * 10 + ["SUCCEEDED"] * 10
    assert all(s[:2] == ["QUEUED", "NOTIFIED"] for s in by_task.values())
    failed = [e for e in events.values() if e["status"] == "FAILED"]
    assert all(e["desc"] == "download failed: http 500" for e in failed)


def test_malformed_reports_are_dead_lettered_and_the_rest_applied(otaflow: Otaflow) -> None:
    otaflow.start_worker()
    pk = "pkBad"
    dynamic_batch(otaflow, pk, MaximumPerMinute=100)
    reports = topics.DEVICE_REPORTS.full_name(otaflow.settings)
    good = CODEC.encode(
        "DeviceReport",
        {"product_key": pk, "device_name": "d1", "kind": "VERSION", "event_time": T0 + 1},
    )
    bad = {
        "not avro": b"garbage, not a record",
        "truncated": good[:-5],
        "other schema": CODEC.encode("Tick", {"event_time": T0}),
    }
    for dn, value in zip(("d1", "d2", "d3"), bad.values(), strict=True):
        otaflow.producer.produce(reports, key=device_key(pk, dn).encode(), value=value)
    otaflow.report(pk, "d4", "VERSION", T0 + 2, version="1.0")
    otaflow.flush()

    # The good report after them is applied: its device matches the batch.
    events = otaflow.task_events().wait_for(lambda v: len(v) > 0, what="d4's task")
    assert {e["device_name"] for e in events} == {"d4"}
    letters = otaflow.reader(topics.DEAD_LETTERS).wait_for(lambda v: len(v) == 3)
    assert sorted(letter["raw"] for letter in letters) == sorted(bad.values())
    by_raw = {letter["raw"]: letter for letter in letters}
    assert "marker" in by_raw[bad["not avro"]]["reason"]
    assert "corrupt DeviceReport body" in by_raw[bad["truncated"]]["reason"]
    assert "unexpected record type Tick" in by_raw[bad["other schema"]]["reason"]
    assert all(letter["source"].startswith("reports/") for letter in letters)
