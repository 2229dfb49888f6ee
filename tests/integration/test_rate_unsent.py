"""Issue 12: "pushed" counts offers actually sent, through the real device and rate agents.

Releases the device agent drops (here: tasks canceled on the device side, which the rate
agent's queue still holds) come back to the rate agent, which gives their slots to
devices that are waiting, within the same window.
"""

from __future__ import annotations

from collections import Counter

import pytest

from tests.integration.conftest import Otaflow
from tests.integration.engine_support import T0
from tests.integration.rollout_support import MINUTE, create_package, tick_minutes

pytestmark = pytest.mark.integration


def test_dropped_releases_free_their_slots_in_the_window(otaflow: Otaflow) -> None:
    otaflow.start_worker()
    pk, rate = "pkUnsent", 10
    firmware_id = create_package(otaflow, pk)
    job_id = otaflow.call(
        "CreateOTADynamicUpgradeJob",
        T0,
        FirmwareId=firmware_id,
        ProductKey=pk,
        MaximumPerMinute=rate,
        **{"SrcVersion.1": "1.0"},
    )["JobId"]
    devices = [f"d{i:02d}" for i in range(2 * rate)]
    for dn in devices:
        otaflow.report(pk, dn, "VERSION", T0 + 100, version="1.0")
    otaflow.flush()
    events = otaflow.task_events()
    events.wait_for(lambda v: sum(e["status"] == "QUEUED" for e in v) == 2 * rate, what="queued")
    # Half the tasks are canceled device by device: still in the push queue, never sendable.
    canceled = devices[::2]
    otaflow.call(
        "CancelOTATaskByDevice",
        T0 + 200,
        ProductKey=pk,
        FirmwareId=firmware_id,
        JobId=job_id,
        **{f"DeviceName.{i + 1}": dn for i, dn in enumerate(canceled)},
    )
    events.wait_for(lambda v: sum(e["status"] == "CANCELED" for e in v) == rate, what="canceled")

    tick_minutes(otaflow, 0, 0)
    # Minute 0 sends its 10 offers to the 10 devices that can take one: the permits that
    # went to canceled tasks were taken back and given again (before: about 5 offers).
    notified = events.wait_for(
        lambda v: sum(e["status"] == "NOTIFIED" for e in v) == rate, timeout=60, what="10 sent"
    )
    sent = [e for e in notified if e["status"] == "NOTIFIED"]
    assert {e["device_name"] for e in sent} == set(devices) - set(canceled)
    assert Counter((e["event_time"] - T0) // MINUTE for e in sent) == {0: rate}
