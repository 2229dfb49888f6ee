"""Restarting the worker mid-rollout: no task lost, no task released twice."""

from __future__ import annotations

import shutil
from collections import Counter

import pytest

from tests.integration.conftest import Otaflow
from tests.integration.engine_support import T0
from tests.integration.rollout_support import DEVICES, MINUTE, RATE, start_rollout, tick_minute

pytestmark = pytest.mark.integration


def notified(otaflow: Otaflow) -> list[str]:
    return [e["task_id"] for e in otaflow.task_events().values() if e["status"] == "NOTIFIED"]


def test_graceful_restart_mid_rollout_releases_every_task_exactly_once(otaflow: Otaflow) -> None:
    start_rollout(otaflow, "pkRestart")
    tick_minute(otaflow, 0)
    events = otaflow.task_events()
    events.wait_for(lambda v: sum(e["status"] == "NOTIFIED" for e in v) == RATE, what="minute 0")

    otaflow.stop("worker")  # SIGTERM: Faust commits and flushes
    otaflow.start_worker()
    tick_minute(otaflow, 1)
    tick_minute(otaflow, 2)
    events.wait_for(
        lambda v: sum(e["status"] == "NOTIFIED" for e in v) >= DEVICES,
        timeout=120,
        what="all notified",
    )
    ids = notified(otaflow)
    assert len(ids) == DEVICES
    assert len(set(ids)) == DEVICES, "a task was released twice"
    per_minute = Counter(
        (e["event_time"] - T0) // MINUTE for e in events.values() if e["status"] == "NOTIFIED"
    )
    assert per_minute == {0: RATE, 1: RATE, 2: RATE}


def test_killed_worker_on_a_fresh_machine_recovers_state_from_kafka(otaflow: Otaflow) -> None:
    start_rollout(otaflow, "pkKill")
    tick_minute(otaflow, 0)
    events = otaflow.task_events()
    events.wait_for(lambda v: sum(e["status"] == "NOTIFIED" for e in v) == RATE, what="minute 0")

    otaflow.stop("worker", kill=True)  # SIGKILL, and the local RocksDB state is lost too
    shutil.rmtree(otaflow.tmp / "data")
    otaflow.start_worker()
    tick_minute(otaflow, 1)
    tick_minute(otaflow, 2)
    events.wait_for(
        lambda v: len({e["task_id"] for e in v if e["status"] == "NOTIFIED"}) == DEVICES,
        timeout=180,
        what="all notified",
    )
    # Every task was released; the meters restored from the changelog kept the rate.
    first_push: dict[str, int] = {}
    for e in events.values():
        if e["status"] == "NOTIFIED":
            first_push.setdefault(e["task_id"], e["event_time"])
    per_minute = Counter((t - T0) // MINUTE for t in first_push.values())
    assert per_minute == {0: RATE, 1: RATE, 2: RATE}


def test_killed_worker_restarted_on_its_state_takes_its_partitions_back(
    otaflow: Otaflow,
) -> None:
    """SIGKILL, no leave and no last commit: the worker comes back as the same static group
    member (its id is kept in its state directory), so it is not kept waiting for its dead
    self's session; no task is lost and first pushes keep the rate."""
    start_rollout(otaflow, "pkKillKeep")
    tick_minute(otaflow, 0)
    events = otaflow.task_events()
    events.wait_for(lambda v: sum(e["status"] == "NOTIFIED" for e in v) == RATE, what="minute 0")
    member_ids = sorted(p.read_text() for p in (otaflow.tmp / "data").rglob("group-instance-id"))
    assert member_ids

    otaflow.stop("worker", kill=True)
    otaflow.start_worker()
    tick_minute(otaflow, 1)
    tick_minute(otaflow, 2)
    events.wait_for(
        lambda v: len({e["task_id"] for e in v if e["status"] == "NOTIFIED"}) == DEVICES,
        timeout=180,
        what="all notified",
    )
    assert (
        sorted(p.read_text() for p in (otaflow.tmp / "data").rglob("group-instance-id"))
        == member_ids
    )
    first_push: dict[str, int] = {}
    for e in events.values():
        if e["status"] == "NOTIFIED":
            first_push.setdefault(e["task_id"], e["event_time"])
    per_minute = Counter((t - T0) // MINUTE for t in first_push.values())
    assert per_minute == {0: RATE, 1: RATE, 2: RATE}
