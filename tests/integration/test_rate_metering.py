"""The rate agent on the real broker: per-batch event-time windows, no batch waits on another."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.integration.conftest import Otaflow
from tests.integration.engine_support import T0
from tests.integration.rollout_support import MINUTE, create_package

pytestmark = pytest.mark.integration

# (product, rate per minute, devices): the slow batch has a backlog for the whole test,
# the fast one finishes in its third minute.
BATCHES = [("pkSlow", 10, 100), ("pkMid", 60, 300), ("pkFast", 600, 1500)]
MINUTES = 3


def test_three_batches_each_hold_their_own_rate(otaflow: Otaflow) -> None:
    otaflow.start_worker()
    job_of: dict[str, str] = {}
    for pk, rate, _ in BATCHES:
        firmware_id = create_package(otaflow, pk)
        data = otaflow.call(
            "CreateOTADynamicUpgradeJob",
            T0,
            FirmwareId=firmware_id,
            ProductKey=pk,
            **{"SrcVersion.1": "1.0"},
            MaximumPerMinute=rate,
        )
        job_of[data["JobId"]] = pk
    total = 0
    for pk, _, count in BATCHES:
        for i in range(count):
            otaflow.report(pk, f"d{i}", "VERSION", T0 + 100, version="1.0")
        total += count
    otaflow.flush()
    events = otaflow.task_events()
    events.wait_for(lambda v: sum(e["status"] == "QUEUED" for e in v) == total, what="queued")

    # One tick at the last millisecond of every second of the three minutes.
    for second in range(1, MINUTES * 60 + 1):
        otaflow.tick(T0 + second * 1000 - 1)
    expected = {pk: min(count, rate * MINUTES) for pk, rate, count in BATCHES}
    values = events.wait_for(
        lambda v: sum(e["status"] == "NOTIFIED" for e in v) >= sum(expected.values()),
        timeout=120,
        what="notified",
    )
    values = events.values()  # anything released beyond the expected count shows up here
    notified = [e for e in values if e["status"] == "NOTIFIED"]
    per_window = Counter(
        (job_of[e["batch_id"]], (e["event_time"] - T0) // MINUTE) for e in notified
    )
    for pk, rate, count in BATCHES:
        counts = [per_window[(pk, w)] for w in range(MINUTES)]
        assert sum(counts) == expected[pk], (pk, counts)
        assert all(c <= rate for c in counts), (pk, counts)
        # Every window with a backlog at its end released exactly the rate.
        backlog = count
        for c in counts:
            if backlog > rate:
                assert c == rate, (pk, counts)
            backlog -= c
    # The fast batch was never held up by the slow one: it finished in minute 3.
    assert [per_window[("pkFast", w)] for w in range(MINUTES)] == [600, 600, 300]
    # No task was pushed twice.
    assert len({e["task_id"] for e in notified}) == len(notified)
    # Pacing within the minute: the fast batch's first 10 seconds released ~1/6 of 600.
    early = [
        e for e in notified if job_of[e["batch_id"]] == "pkFast" and e["event_time"] < T0 + 10_000
    ]
    assert len(early) == 100
