"""Presence and lost offers in the device engine (issue 11 item 2, issue 16 item 4).

An offer can be lost (the device SDK connects with a clean session; a broker can
restart), so a pushed task is offered again, metered through the push queue like a
first push, when the device connects, speaks after being offline, or reports a
version of the module while its task is NOTIFIED. A device offline gets no push.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from otaflow.domain.simulation import (
    DAY,
    HOUR,
    MINUTE,
    Partition,
    dynamic_batch,
    firmware,
    make_batch,
)

T = 1_000_000


def notified(**fields: object) -> Partition:
    """d1 holds a NOTIFIED task of the dynamic batch 'V' (1.0 -> 2.0), pushed once."""
    p = Partition()
    p.start(dynamic_batch("V", ["1.0"], at=T, **fields))
    p.version("d1", "1.0", T + 1)
    p.release(T + 2)
    assert p.tasks("d1") == [("V", "NOTIFIED")] and len(p.pushes("d1")) == 1
    return p


def test_reconnect_offers_a_notified_task_again_through_the_push_queue() -> None:
    p = notified()
    p.offline("d1", T + 3)
    p.online("d1", T + 4)
    assert len(p.pushes("d1")) == 1, "a re-offer waits for a push slot (metered)"
    assert [t["task_id"] for _, t in p.push_queue] == [p.state("d1").tasks[0].task_id]
    p.release(T + 5)
    assert len(p.pushes("d1")) == 2
    assert p.tasks("d1") == [("V", "NOTIFIED")]
    assert p.history("d1") == ["QUEUED", "NOTIFIED"], "a re-offer is not a status change"


def test_a_connect_offers_again_even_when_the_device_counted_as_online() -> None:
    # A new connection (clean session) may have lost what the old one was sent.
    p = notified()
    p.online("d1", T + 3)
    p.release(T + 4)
    assert len(p.pushes("d1")) == 2


def test_no_offer_is_published_while_the_device_is_offline() -> None:
    p = notified()
    p.offline("d1", T + 3)
    p.online("d1", T + 4)
    p.offline("d1", T + 5)  # gone again before its slot came
    p.release(T + 6)
    assert len(p.pushes("d1")) == 1
    assert not p.state("d1").tasks[0].in_push_queue
    p.online("d1", T + 7)
    p.release(T + 8)
    assert len(p.pushes("d1")) == 2


def test_a_device_offline_when_its_dynamic_batch_matched_gets_the_offer_on_reconnect() -> None:
    p = Partition()
    p.version("d1", "1.0", T)
    p.offline("d1", T + 1)
    p.start(dynamic_batch("V", ["1.0"], at=T + 2))
    assert p.tasks("d1") == [("V", "QUEUED")] and not p.push_queue
    p.online("d1", T + 3)  # no version report needed
    p.release(T + 4)
    assert p.tasks("d1") == [("V", "NOTIFIED")] and len(p.pushes("d1")) == 1


def test_a_version_report_while_notified_gets_the_offer_again_metered() -> None:
    p = notified()
    p.version("d1", "1.0", T + 3)
    assert len(p.pushes("d1")) == 1 and len(p.push_queue) == 1
    p.version("d1", "1.0", T + 4)  # already waiting for a slot: not queued twice
    assert len(p.push_queue) == 1
    p.release(T + 5)
    assert len(p.pushes("d1")) == 2 and p.tasks("d1") == [("V", "NOTIFIED")]


def test_a_version_report_of_another_module_or_in_progress_offers_nothing() -> None:
    p = notified()
    p.version("d1", "7.0", T + 3, module="other")
    assert not p.push_queue
    p.progress("d1", 10, T + 4)
    p.version("d1", "1.0", T + 5)  # mid-update: the device has the offer
    assert not p.push_queue and p.tasks("d1") == [("V", "IN_PROGRESS")]


def test_a_pull_only_batch_is_never_pushed_again() -> None:
    p = Partition()
    p.start(dynamic_batch("V", ["1.0"], at=T, need_push=False))
    p.version("d1", "1.0", T + 1)
    p.ask("d1", T + 2)
    assert p.tasks("d1") == [("V", "NOTIFIED")]
    p.version("d1", "1.0", T + 3)
    p.online("d1", T + 4)
    assert not p.push_queue and p.pushes("d1") == []


def test_a_stale_offline_record_is_ignored() -> None:
    # Two ingress instances may deliver an OFFLINE after a later message of the device.
    p = notified()
    p.version("d1", "1.0", T + 10)
    p.offline("d1", T + 5)
    assert p.state("d1").online
    p.release(T + 11)
    assert len(p.pushes("d1")) == 2


def test_re_offers_never_start_or_reset_the_timeout() -> None:
    p = notified(timeout_minutes=30)
    for i in range(5):  # a device flapping for a day, never progressing
        p.offline("d1", T + DAY * i + HOUR)
        p.online("d1", T + DAY * i + 2 * HOUR)
        p.release(T + DAY * i + 2 * HOUR)
    p.tick(T + 6 * DAY)
    assert p.tasks("d1") == [("V", "NOTIFIED")]
    first = T + 6 * DAY
    p.progress("d1", 5, first)
    p.online("d1", first + 10 * MINUTE)
    p.release(first + 10 * MINUTE)
    p.tick(first + 30 * MINUTE)
    assert p.tasks("d1") == [("V", "FAILED")] and p.events[-1]["desc"] == "timeout"


# -- what ends a NOTIFIED task (docs/edge.md) ------------------------------------------------


def _progress(p: Partition) -> None:
    p.progress("d1", 10, T + 10)


def _failure(p: Partition) -> None:
    p.progress("d1", -2, T + 10)


def _success(p: Partition) -> None:
    p.version("d1", "2.0", T + 10)


def _cancel_by_job(p: Partition) -> None:
    p.control("CANCEL_TASKS", p.batches.get("V"), T + 10, statuses=["NOTIFIED"])  # type: ignore[arg-type]


def _cancel_by_device(p: Partition) -> None:
    p.command("CANCEL", "d1", T + 10, batch_id="V")


def _deleted(p: Partition) -> None:
    p.register("d1", T + 10, action="DELETE")


@pytest.mark.parametrize(
    ("end", "status"),
    [
        (_progress, "IN_PROGRESS"),
        (_failure, "FAILED"),
        (_success, "SUCCEEDED"),
        (_cancel_by_job, "CANCELED"),
        (_cancel_by_device, "CANCELED"),
        (_deleted, "CANCELED"),
    ],
)
def test_what_ends_a_notified_task(end: Callable[[Partition], None], status: str) -> None:
    p = notified()
    end(p)
    assert [e["status"] for e in p.events if e["device_name"] == "d1"][-1] == status


def test_the_end_of_the_schedule_ends_a_notified_task() -> None:
    p = Partition()
    p.version("d1", "1.0", T)
    batch = make_batch("S", at=T, schedule_start=T + HOUR, schedule_end=T + 3 * HOUR)
    p.start(batch, T + 1)
    p.tick(T + HOUR)
    p.release(T + HOUR)
    assert p.tasks("d1") == [("S", "NOTIFIED")]
    p.tick(T + 3 * HOUR)
    assert p.tasks("d1") == [("S", "CANCELED")]


def test_a_newer_batch_that_overrides_ends_a_notified_task() -> None:
    p = notified()
    p.start(make_batch("B", at=T + 5, fw=firmware("3.0", firmware_id="f3"), overwrite_mode=2))
    assert p.tasks("d1") == [("V", "CANCELED"), ("B", "QUEUED")]


def test_without_any_of_them_a_notified_task_waits_for_ever() -> None:
    # The console starts the timeout at the first progress: no timer ends NOTIFIED.
    p = notified(timeout_minutes=1, retry_interval_minutes=1, retry_count=3)
    p.offline("d1", T + 3)
    p.tick(T + 365 * DAY)
    assert p.tasks("d1") == [("V", "NOTIFIED")]
