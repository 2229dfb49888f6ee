"""The rate holds through faults (issue 16): a stalled worker's backlog drains at the
batch's pace, never in one burst for the seconds the stall missed."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.integration.conftest import Otaflow
from tests.integration.engine_support import T0
from tests.integration.rollout_support import MINUTE, start_rollout

pytestmark = pytest.mark.integration

RATE = 300  # test_worker_restart's batch: 300 devices a minute, 900 devices
DEVICES = 900
SLICE = RATE // 60  # what the pacing releases a second


def tick_seconds(otaflow: Otaflow, seconds: range) -> None:
    for second in seconds:
        otaflow.tick(T0 + second * 1000 - 1)


def test_sigkill_mid_window_drains_the_backlog_at_the_rate(otaflow: Otaflow) -> None:
    """The worker is SIGKILLed 20 s into a window and its ticks stop with it (its own
    ticker writes them) until it is back 30 s of event time later. Every event-second
    after that releases at most two pacing slices, every window at most the rate, every
    task once. The old meter released the 30 missed seconds' credit (150) in one second."""
    start_rollout(otaflow, "pkStall")
    tick_seconds(otaflow, range(1, 21))
    events = otaflow.task_events()
    events.wait_for(
        lambda v: sum(e["status"] == "NOTIFIED" for e in v) == 20 * SLICE, what="20 seconds"
    )

    otaflow.stop("worker", kill=True)
    otaflow.start_worker()
    tick_seconds(otaflow, range(51, 4 * 60 + 1))  # no ticks for seconds 21-50: the stall
    events.wait_for(
        lambda v: len({e["task_id"] for e in v if e["status"] == "NOTIFIED"}) == DEVICES,
        timeout=180,
        what="all notified",
    )
    first_push: dict[str, int] = {}
    for e in events.values():
        if e["status"] == "NOTIFIED":
            first_push.setdefault(e["task_id"], e["event_time"])
    assert len(first_push) == DEVICES
    per_second = Counter((t - T0) // 1000 for t in first_push.values())
    assert max(per_second.values()) <= 2 * SLICE, sorted(per_second.items())
    assert per_second[50] == 2 * SLICE  # the first second after the stall: two slices
    per_window = Counter((t - T0) // MINUTE for t in first_push.values())
    assert all(count <= RATE for count in per_window.values()), per_window
    assert per_window[1] == RATE and per_window[2] == RATE  # full windows keep the rate
