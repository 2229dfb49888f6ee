"""A rollout through ten SIGKILLs of its worker: per device, no task event and no offer
is lost; with ``OTAFLOW_PROCESSING_GUARANTEE=exactly_once`` none is repeated either
(at-least-once: repeats are allowed and printed).

Each round of the worker is made durable in ``streams.checkpoint``'s order; a kill lands
while rounds are being applied (as soon as the worker has sent something new after a
restart, with the phase's records still queued), so the restarted worker replays them.
"""

from __future__ import annotations

import os
import time
from collections import Counter, defaultdict
from typing import Any

import pytest

from streams.transactions import EXACTLY_ONCE, GUARANTEE_ENV
from tests.integration.conftest import Otaflow
from tests.integration.engine_support import T0
from tests.integration.rollout_support import dynamic_batch

pytestmark = pytest.mark.integration

DEVICES = 120
RATE = 360  # per minute: 6 releases per event-second, 12 per phase: work in every phase
KILLS = 10
PHASE_MS = 2000
MINUTE_MS = 60_000  # event time ticked per phase: 20 releases
# Statuses every device passes through here, each once per task.
LIFE = ("QUEUED", "NOTIFIED", "IN_PROGRESS", "SUCCEEDED")


def _exactly_once() -> bool:
    return os.environ.get(GUARANTEE_ENV, "").strip().lower() == EXACTLY_ONCE


def _succeed(otaflow: Otaflow, pk: str, devices: list[str], at: int) -> None:
    for dn in devices:
        otaflow.report(pk, dn, "PROGRESS", at, step=50)
        otaflow.report(pk, dn, "VERSION", at + 1, version="2.0")
    otaflow.flush()


def _notified(events: list[dict[str, Any]]) -> set[str]:
    return {e["device_name"] for e in events if e["status"] == "NOTIFIED"}


def test_a_rollout_through_ten_sigkills_loses_no_task_event_and_no_offer(
    otaflow: Otaflow,
) -> None:
    pk = "pkSigkill"
    names = [f"k{i:03d}" for i in range(DEVICES)]
    otaflow.start_worker()
    job_id = dynamic_batch(otaflow, pk, MaximumPerMinute=RATE)
    events = otaflow.task_events()
    offers = otaflow.notifications()
    for dn in names:
        otaflow.report(pk, dn, "VERSION", T0 + 100, version="1.0")
    otaflow.flush()

    reported: set[str] = set()
    now = T0 + 1000
    for kill in range(KILLS):
        seen = len(events.values())
        # The phase's records: event time moves on (releases), and devices offered so
        # far report their progress and their new version.
        otaflow.tick_through(now, now + PHASE_MS)
        now += PHASE_MS
        fresh = sorted(_notified(events.values()) - reported)
        _succeed(otaflow, pk, fresh, now)
        reported.update(fresh)
        # Kill as soon as the worker sends something new (it is applying rounds), or
        # after a while if it has nothing new to send (the kill still lands mid-rollout).
        deadline = time.monotonic() + 10
        while len(events.values()) == seen and time.monotonic() < deadline:
            events.poll(0.1)
        worker = otaflow.procs["worker"]
        assert worker.poll() is None, f"worker died before kill {kill}:\n{otaflow.log('worker')}"
        otaflow.stop("worker", kill=True)
        assert worker.returncode == -9  # SIGKILL: no last commit, no leave
        otaflow.start_worker()

    # After the last restart: enough event time for every release, then every device
    # offered reports success.
    otaflow.tick_through(now, now + DEVICES * MINUTE_MS // RATE + 2000)
    now += DEVICES * MINUTE_MS // RATE + 2000
    events.wait_for(lambda v: len(_notified(v)) == DEVICES, timeout=120, what="every offer")
    _succeed(otaflow, pk, sorted(set(names) - reported), now)
    final = events.wait_for(
        lambda v: len({e["device_name"] for e in v if e["status"] == "SUCCEEDED"}) == DEVICES,
        timeout=120,
        what="every device succeeded",
    )
    # A repeat sent late would come after the last success: read what is there.
    events.poll(2.0)
    offers.wait_for(lambda v: len({o["device_name"] for o in v}) == DEVICES, what="offers")
    offers.poll(1.0)
    final = events.values()

    assert {e["batch_id"] for e in final} == {job_id}
    per_device: dict[str, Counter[str]] = defaultdict(Counter)
    tasks: dict[str, set[str]] = defaultdict(set)
    for e in final:
        per_device[e["device_name"]][e["status"]] += 1
        tasks[e["device_name"]].add(e["task_id"])
    offers_per_device = Counter(o["device_name"] for o in offers.values() if o["task_id"])

    # None lost: every device's task went through its whole life and was offered.
    assert set(per_device) == set(names)
    lost = {dn: s for dn in names for s in LIFE if per_device[dn][s] == 0}
    assert not lost, f"task events lost: {sorted(lost.items())[:5]}"
    assert set(offers_per_device) == set(names), "offers lost"
    assert all(len(t) == 1 for t in tasks.values()), "a device got a second task"

    repeated_events = sum(sum(c.values()) - len(c) for c in per_device.values())
    repeated_offers = sum(offers_per_device.values()) - DEVICES
    print(
        f"{GUARANTEE_ENV}={os.environ.get(GUARANTEE_ENV, 'at_least_once')}: "
        f"{KILLS} SIGKILLs, {DEVICES} devices; repeated task events {repeated_events}, "
        f"repeated offers {repeated_offers}"
    )
    if _exactly_once():
        assert repeated_events == 0, {dn: c for dn, c in per_device.items() if max(c.values()) > 1}
        assert repeated_offers == 0, {dn: n for dn, n in offers_per_device.items() if n > 1}
