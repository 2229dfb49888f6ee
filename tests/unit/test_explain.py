"""``explain_device``: one test per reason, on states the real engine made."""

from __future__ import annotations

import datetime as dt

from otaflow.domain.batches import BatchScope, BatchStatus
from otaflow.domain.explain import Explanation, Reason, explain_device
from otaflow.domain.simulation import (
    MINUTE,
    Partition,
    dynamic_batch,
    firmware,
    make_batch,
)

T = 1_000_000


def why(p: Partition, dn: str, batch_id: str, now: int, **kw: object) -> Explanation:
    answers = explain_device(
        p.state(dn),
        list(p.batches),
        now,
        groups=p.groups,
        history=p.events,
        **kw,  # type: ignore[arg-type]
    )
    return next(a for a in answers if a.batch_id == batch_id)


def test_out_of_scope() -> None:
    p = Partition()
    p.register("d1", T - 5, province="Beijing")
    p.version("d1", "1.0", T - 1)
    p.start(make_batch("R", at=T, scope=BatchScope.REGIONAL, region="Zhejiang"))
    answer = why(p, "d1", "R", T + 1)
    assert answer.reason is Reason.OUT_OF_SCOPE and "REGIONAL" in answer.detail


def test_source_version() -> None:
    p = Partition()
    p.start(dynamic_batch("V", ["1.0"], at=T))
    p.version("d1", "1.5", T + 1)
    answer = why(p, "d1", "V", T + 2)
    assert answer.reason is Reason.SOURCE_VERSION
    assert "reports 1.5" in answer.detail and "1.0" in answer.detail


def test_match_cap_count() -> None:
    p = Partition()
    p.start(dynamic_batch("V", ["1.0"], at=T))
    p.version("d1", "1.0", T + 1)
    state = p.state("d1")
    state.tasks.clear()
    state.match_counts["V"] = 10
    (answer,) = explain_device(state, list(p.batches), T + 2)
    assert answer.reason is Reason.MATCH_CAP and "matched 10 times" in answer.detail


def test_precedence_names_the_batch_that_won() -> None:
    p = Partition()
    p.start(dynamic_batch("old", ["1.0"], at=T, fw=firmware("2.0", firmware_id="a")))
    p.start(dynamic_batch("new", ["1.0"], at=T + 1, fw=firmware("2.1", firmware_id="b")))
    p.version("d1", "1.0", T + 2)
    assert p.tasks("d1") == [("new", "QUEUED")]
    answer = why(p, "d1", "old", T + 3)
    assert answer.reason is Reason.PRECEDENCE and answer.other_batch == "new"


def test_override_names_the_overriding_batch_with_the_task_event() -> None:
    p = Partition()
    p.version("d1", "1.0", T - 1)
    p.start(make_batch("A", at=T))
    p.start(make_batch("B", at=T + 1, fw=firmware("2.1"), overwrite_mode=2))
    answer = why(p, "d1", "A", T + 2)
    assert answer.reason is Reason.OVERRIDDEN and answer.other_batch == "B"
    assert [e["status"] for e in answer.evidence] == ["QUEUED", "CANCELED"]


def test_offline() -> None:
    p = Partition()
    p.version("d1", "1.0", T - 1)
    p.start(make_batch("A", at=T))
    p.offline("d1", T + 1)
    p.release(T + 2)  # the release finds the device offline: it stays QUEUED
    answer = why(p, "d1", "A", T + 3)
    assert answer.reason is Reason.OFFLINE and answer.task_status == "QUEUED"


def test_queue_position_and_expected_push_time_under_the_rate() -> None:
    p = Partition()
    p.version("d1", "1.0", T - 1)
    rate = {
        "kind": "constant",
        "max_rate": 100,
        "base_rate": None,
        "factor_hundredths": None,
        "threshold": None,
        "condition": None,
    }
    p.start(make_batch("A", at=T, rate=rate))
    answer = why(p, "d1", "A", T + 1, queue_ahead={"A": 250})
    assert answer.reason is Reason.QUEUED and answer.queue_position == 250
    assert answer.expected_push_at == T + 1 + 2 * MINUTE  # 100 a minute: two full minutes


def test_window_closed_gives_the_next_opening() -> None:
    saturday = int(dt.datetime(2026, 10, 24, 12, tzinfo=dt.UTC).timestamp() * 1000)
    p = Partition()
    p.version("d1", "1.0", saturday - 1)
    p.start(make_batch("W", at=saturday, maintenance_windows=("Mon-Fri 02:00 120 Europe/Berlin",)))
    assert p.pushes() == [] and not p.push_queue
    answer = why(p, "d1", "W", saturday + 1)
    monday_0200_cet = int(dt.datetime(2026, 10, 26, 1, tzinfo=dt.UTC).timestamp() * 1000)
    assert answer.reason is Reason.WINDOW_CLOSED
    assert answer.expected_push_at == monday_0200_cet


def test_cohort_paused() -> None:
    p = Partition()
    p.version("d1", "1.0", T - 1)
    p.start(make_batch("A", at=T, paused_cohorts=("SRC_VERSION=1.0",)))
    answer = why(p, "d1", "A", T + 1)
    assert answer.reason is Reason.COHORT_PAUSED and "SRC_VERSION=1.0" in answer.detail


def test_pushed_with_its_event() -> None:
    p = Partition()
    p.version("d1", "1.0", T - 1)
    p.start(make_batch("A", at=T))
    p.release(T + 1)
    answer = why(p, "d1", "A", T + 2)
    assert answer.reason is Reason.PUSHED
    assert answer.evidence[-1]["status"] == "NOTIFIED"


def test_retry_pending_then_retried() -> None:
    p = Partition()
    p.version("d1", "1.0", T - 1)
    p.start(make_batch("A", at=T, retry_interval_minutes=1, retry_count=2, timeout_minutes=30))
    p.release(T + 1)
    p.progress("d1", -2, T + 2)
    pending = why(p, "d1", "A", T + 3)
    assert pending.reason is Reason.RETRY_PENDING
    assert pending.expected_push_at == T + 2 + MINUTE
    p.offline("d1", T + 4)
    p.tick(T + 2 + MINUTE)
    p.online("d1", T + 3 + MINUTE)
    retried = why(p, "d1", "A", T + 4 + MINUTE)
    assert retried.reason is Reason.RETRIED
    assert [e["status"] for e in retried.evidence][-2:] == ["FAILED", "QUEUED"]


def test_canceled_by_the_operator() -> None:
    p = Partition()
    p.version("d1", "1.0", T - 1)
    batch = make_batch("A", at=T)
    p.start(batch)
    p.control("CANCEL_TASKS", batch, T + 1, ["QUEUED"])
    answer = why(p, "d1", "A", T + 2)
    assert answer.reason is Reason.CANCELED and "operator" in answer.detail


def test_blocked_by_another_batch_in_progress() -> None:
    p = Partition()
    p.version("d1", "1.0", T - 1)
    p.start(make_batch("A", at=T))
    p.release(T + 1)
    p.progress("d1", 10, T + 2)
    p.start(make_batch("B", at=T + 3, fw=firmware("2.1")))
    answer = why(p, "d1", "B", T + 4)
    assert answer.reason is Reason.BLOCKED and answer.other_batch == "A"


def test_batch_stopped_and_would_match() -> None:
    p = Partition()
    p.start(dynamic_batch("V", ["1.0"], at=T, dynamic_mode=2))
    p.version("d1", "0.9", T + 1)
    state = p.state("d1")
    state.modules["default"] = "1.0"  # as if it had just said 1.0, before the engine saw it
    (answer,) = explain_device(state, list(p.batches), T + 2)
    assert answer.reason is Reason.WOULD_MATCH
    stopped = [b.with_changes(status=BatchStatus.CANCELED) for b in p.batches]
    (answer,) = explain_device(state, stopped, T + 2)
    assert answer.reason is Reason.BATCH_STOPPED


def test_the_api_view_explains_from_the_public_topics() -> None:
    from otaflow.api.views import TaskView

    p = Partition()
    p.version("d1", "1.0", T - 1)
    p.version("d2", "1.0", T - 1)
    p.start(make_batch("A", at=T))
    view = TaskView()
    for batch in p.batches:
        view.apply_batch(batch.to_record())
    for name in ("d1", "d2"):
        view.apply_report(
            {
                "product_key": "pk",
                "device_name": name,
                "kind": "VERSION",
                "module": "default",
                "version": "1.0",
                "event_time": T - 1,
            }
        )
    for event in p.events:
        view.apply_task_event(event)
    data, _ = view.answer("ExplainOTADevice", {"ProductKey": "pk", "DeviceName": "d2"})
    (item,) = data["Explanations"]
    assert item["Reason"] == "QUEUED" and item["QueuePosition"] == 1  # d1 was queued first
    assert item["Evidence"][0]["status"] == "QUEUED"
